"""Semi-convolutional instance embeddings, instance extraction and the Airbus Ship Detection F2 metric.

**Loss.** Semi-convolutional operators (Novotny, Albanie, Larlus, Vedaldi,
"Semi-convolutional Operators for Instance Segmentation", ECCV 2018,
arXiv 1807.10712) mix a convolutional embedding Φ_u with the pixel position
u, e.g. Ψ_u = Φ_u + u, so that the pixels of two identical-looking instances
can still agree on different points. Their loss (eq. 5) pulls the embeddings
of each instance S to the instance mean,

    L = Σ_S (1/|S|) Σ_{u∈S} ‖Ψ_u − mean_{v∈S} Ψ_v‖,

summed over the instances of an image (background excluded), then averaged
(or summed) over images. Numerical and memory choices, each fixing the
circulating TensorFlow version:

* per-instance sums are segment sums over the pixels (`jax.ops.segment_sum`
  with `max_instances + 1` segments), so memory is O(B·H·W·C + B·K·C) and
  does not grow with the number of instances — no one-hot tensor of shape
  (B, K, H, W, C);
* every id 1…`max_instances` is an instance (a one-hot of depth max(label)
  drops the highest one); the background id is excluded and its pixels get
  exactly zero gradient (treating it as an instance lets its pull dominate);
* the norm has a zero gradient at 0 (all pixels of an instance coincide),
  where autodiff of sqrt gives NaN; missing ids and empty images add 0.

**Peer.** `discriminative_loss` (De Brabandere, Neven & Van Gool, CVPR
Workshops 2017) pulls each instance's embeddings to within δ_v of its mean
and pushes the means of different instances 2δ_d apart, with the same
segment sums. `spatial_embedding_loss` (Neven, De Brabandere, Proesmans &
Van Gool, CVPR 2019) learns per-pixel centres, clustering bandwidths σ and
seed scores: a Lovász hinge on each instance's Gaussian of the distance to
its centre, a smoothness term on σ and a seed regression; its statistics are
segment sums too, but the hinge sorts every instance's Gaussian over the
whole image, so its time (not its memory) grows with `max_instances`.
`extract_spatial_instances` is its inference: seeds and learned σ, no
clustering radius.

**Metric.** `f2_iou_score` is the Kaggle Airbus Ship Detection score: per
image and IoU threshold t ∈ {0.5, 0.55, …, 0.95}, TP = true objects matched
by a prediction with IoU > t, FN = unmatched true objects, FP = unmatched
predictions, F2 = 5·TP/(5·TP + 4·FN + FP); averaged over thresholds, then
over images. An image with neither true nor predicted objects scores 1, one
with only one side empty 0. `max_instances` bounds the objects per image
on each side, the same option as the loss's. IoUs come from the contingency table (joint
histogram) of compacted label pairs, O(H·W + K_true·K_pred) per image
(plus one sort of the ids to compact them), instead of comparing every
true mask with every predicted mask, O(K_true·K_pred·H·W). For t ≥ 0.5 an
object can match at most one other (two IoUs > 0.5 would need overlapping
masks), so matching is counting.

**Operators.** `semi_convolution` is Ψ_u = Φ_u + s·(x_u, y_u) on the first
two channels, `pixel_coordinates` the (x, y) grid in [−1, 1];
`extract_instances` turns embeddings and a foreground map into instance
labels (greedy seeded clustering, a fixed number of `lax` iterations, no
host round trip); `connected_components` is the classical baseline, which
merges objects that touch.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from losses import _common

AIRBUS_THRESHOLDS = tuple(0.5 + 0.05 * i for i in range(10))


def _safe_norm(x: jax.Array) -> jax.Array:
  """‖x‖ over the last axis with gradient 0 (not NaN) at x = 0."""
  squared = jnp.sum(x * x, axis=-1)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def semi_conv_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    max_instances: int,
    background: int = 0,
    reduction: str = "mean",
) -> jax.Array:
  """Novotny et al.'s instance loss: per image, Σ_instances mean ‖Ψ_u − instance mean‖.

  Args:
    embeddings: `(B, H, W, C)` semi-convolutional embeddings Ψ (e.g. from
      `semi_convolution`), C ≥ 1.
    labels: `(B, H, W)` integer instance ids in [0, `max_instances`];
      `background` marks pixels of no instance. Where the host holds the
      ids (NumPy, or a CPU array that is not traced) an id out of range is a
      `ValueError`; elsewhere such pixels are ignored like background.
    max_instances: static largest id (≥ 0); sets the number of segments.
    background: the static id excluded from the loss; one outside
      [0, `max_instances`] means every id is an instance.
    reduction: "mean" or "sum" over the B images of the per-image sums, or
      "none" for `(B,)`. An image without instances (or without pixels,
      H·W = 0) adds 0; the mean over an empty batch (B = 0) is 0 with a zero
      gradient.

  Returns:
    A scalar, or `(B,)` for `reduction="none"`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> labels = jnp.array([[[1, 1, 0, 2]]])  # one image of 1 × 4 pixels, two instances
    >>> embeddings = jnp.array([[[[0.0], [2.0], [9.0], [5.0]]]])
    >>> print(losses.semi_conv_loss(embeddings, labels, max_instances=2))  # instance 1: mean |±1|
    1.0
  """
  _common.check_reduction(reduction)
  embeddings, labels, max_instances, background = _checked_instance_inputs(
      embeddings, labels, max_instances, background)
  num_segments = max_instances + 1

  def per_image(ids, psi):
    ids, psi, valid, counts, means = _image_instances(ids, psi, background, max_instances)
    distances = jnp.where(valid, _safe_norm(psi - means[ids]), 0.0)
    mean_distance = jax.ops.segment_sum(distances, ids, num_segments) / jnp.maximum(counts, 1.0)
    return jnp.sum(mean_distance)

  return _common.reduce_masked(jax.vmap(per_image)(labels, embeddings), None, reduction)


def _checked_instance_inputs(embeddings, labels, max_instances, background):
  """The checked `(B, H, W, C)` embeddings, `(B, H, W)` labels and static options of an embedding loss."""
  max_instances = _common.check_int(max_instances, "max_instances", minimum=0)
  background = _common.check_int(background, "background")
  labels = _common.check_labels(labels, "labels", max_instances, limit="max_instances")
  embeddings = _common.check_embeddings(embeddings, "embeddings", labels, "labels")
  return embeddings, labels, max_instances, background


def _image_instances(ids: jax.Array, psi: jax.Array, background: int, max_instances: int):
  """One image's pixels as `(H·W,)` segment ids and `(H·W, C)` embeddings, which pixels are in an instance,
  and the per-segment pixel counts `(K+1,)` and mean embeddings `(K+1, C)` of those pixels.

  Ids out of [0, `max_instances`] (unchecked inside a trace) are read as the background.
  """
  ids, psi = ids.reshape(-1), psi.reshape(-1, psi.shape[-1])
  valid = (ids != background) & (ids >= 0) & (ids <= max_instances)
  ids = jnp.where(valid, ids, background)
  counts = jax.ops.segment_sum(valid.astype(psi.dtype), ids, max_instances + 1)
  sums = jax.ops.segment_sum(jnp.where(valid[:, None], psi, 0.0), ids, max_instances + 1)
  return ids, psi, valid, counts, sums / jnp.maximum(counts, 1.0)[:, None]


def discriminative_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    max_instances: int,
    delta_v: float = 0.5,
    delta_d: float = 1.5,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.001,
    background: int = 0,
    reduction: str = "mean",
) -> jax.Array:
  """De Brabandere, Neven & Van Gool's discriminative loss (CVPR Workshops 2017, arXiv 1708.02551).

  Per image, with the C instances present (background excluded), μ_c the mean embedding of instance c
  and N_c its pixel count:

      L_var  = (1/C) Σ_c (1/N_c) Σ_{i∈c} [‖μ_c − x_i‖ − δ_v]₊²        (pull to the mean, hinged at δ_v)
      L_dist = (1/(C(C−1))) Σ_{A≠B} [2δ_d − ‖μ_A − μ_B‖]₊²           (push the means 2δ_d apart)
      L_reg  = (1/C) Σ_c ‖μ_c‖                                          (keep the means near the origin)
      L      = α·L_var + β·L_dist + γ·L_reg,

  each term averaged per instance, per (ordered) pair and per instance, as in the paper. An image with
  one instance has no push term (0), one with none scores 0. Sums are segment sums over the pixels:
  memory O(B·H·W·C + B·K²) and no one-hot tensor; background pixels get exactly zero gradient; the
  norms have zero (not NaN) gradients where embeddings or means coincide.

  Args:
    embeddings: `(B, H, W, C)` float embeddings, C ≥ 1.
    labels: `(B, H, W)` integer ids in [0, `max_instances`], as for `semi_conv_loss`.
    max_instances: static largest id (≥ 0).
    delta_v: the pull margin δ_v ≥ 0.
    delta_d: half the push margin, δ_d ≥ 0.
    alpha: weight α of the pull term.
    beta: weight β of the push term.
    gamma: weight γ of the regulariser.
    background: the static id excluded from the loss.
    reduction: "mean" or "sum" over the B images, or "none" for `(B,)`; the mean over an empty batch
      is 0.

  Returns:
    A scalar, or `(B,)` for `reduction="none"`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> labels = jnp.array([[[1, 1, 2, 2]]])
    >>> embeddings = jnp.array([[[[0.0], [0.0], [1.0], [1.0]]]])  # tight instances, means 1 apart
    >>> print(losses.discriminative_loss(embeddings, labels, max_instances=2, gamma=0.0))  # [3 − 1]₊²
    4.0
  """
  _common.check_reduction(reduction)
  for name, value in (("delta_v", delta_v), ("delta_d", delta_d)):
    _common.check_number(value, name, minimum=0.0)
  for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
    _common.check_number(value, name)
  embeddings, labels, max_instances, background = _checked_instance_inputs(
      embeddings, labels, max_instances, background)
  num_segments = max_instances + 1

  def per_image(ids, psi):
    ids, psi, valid, counts, means = _image_instances(ids, psi, background, max_instances)
    present = (counts > 0) & (jnp.arange(num_segments) != background)
    num_present = jnp.sum(present)
    pull_per_pixel = jnp.where(valid, jnp.maximum(_safe_norm(psi - means[ids]) - delta_v, 0.0) ** 2, 0.0)
    pull_per_instance = jax.ops.segment_sum(pull_per_pixel, ids, num_segments) / jnp.maximum(counts, 1.0)
    pull = jnp.sum(jnp.where(present, pull_per_instance, 0.0)) / jnp.maximum(num_present, 1)
    pairs = present[:, None] & present[None, :] & ~jnp.eye(num_segments, dtype=bool)
    separation = _safe_norm(means[:, None, :] - means[None, :, :])
    push_per_pair = jnp.where(pairs, jnp.maximum(2.0 * delta_d - separation, 0.0) ** 2, 0.0)
    push = jnp.sum(push_per_pair) / jnp.maximum(num_present * (num_present - 1), 1)
    regulariser = jnp.sum(jnp.where(present, _safe_norm(means), 0.0)) / jnp.maximum(num_present, 1)
    return alpha * pull + beta * push + gamma * regulariser

  return _common.reduce_masked(jax.vmap(per_image)(labels, embeddings), None, reduction)


def _checked_sigmas(sigmas: ArrayLike, embeddings: jax.Array) -> jax.Array:
  """Float bandwidths `(B, H, W)` (one per pixel) or `(B, H, W, C)` (one per embedding dimension) as
  `(B, H, W, 1)` or `(B, H, W, C)`, sharing (B, H, W) and C with the `(B, H, W, C)` `embeddings`."""
  sigmas = _common.as_float(sigmas, "sigmas")
  message = _common.shape_message("sigmas", sigmas.shape, "(B, H, W) or (B, H, W, C)", ("embeddings", embeddings))
  _common.chex().assert_rank(sigmas, {3, 4}, custom_message=message)
  _common.chex().assert_equal_shape_prefix([sigmas, embeddings], 3, custom_message=message)
  if sigmas.ndim == 3:
    return sigmas[..., None]
  if sigmas.shape[-1] != 1:
    _common.chex().assert_equal_shape([sigmas, embeddings], custom_message=message)
  return sigmas


def _gaussian(psi: jax.Array, centre: jax.Array, sigma: jax.Array) -> jax.Array:
  """φ = exp(−Σ_d (ψ_d − c_d)² / (2σ_d²)) over the last axis; σ broadcasts (one or one per dimension).

  σ² is floored at √tiny (the square root of the smallest normal number, ~1e-19 in float32), so σ = 0
  gives φ = 1 at the centre and 0 elsewhere, not 0/0, and the gradients stay finite (1/σ⁴ does not
  overflow); the sign of σ does not matter.
  """
  variance = jnp.maximum(sigma * sigma, np.sqrt(jnp.finfo(psi.dtype).tiny))
  return jnp.exp(-jnp.sum((psi - centre) ** 2 / (2.0 * variance), axis=-1))


def _lovasz_hinge(errors: jax.Array, positive: jax.Array, num_positive: jax.Array) -> jax.Array:
  """Berman, Rannen Triki & Blaschko's Lovász hinge (CVPR 2018) of one binary mask from its hinge errors.

  `errors` `(N,)` are 1 − logit·sign, `positive` `(N,)` the mask and `num_positive` its size P. With the
  errors in decreasing order, the j-th is weighted by the increment of the Jaccard loss
  Δ(M) = |M| / |P ∪ M| of the first j pixels (Δ(∅) = 0): 1/(P + n) for a positive and
  (P − p)/((P + n)(P + n + 1)) for a negative, p and n the positives and negatives before it. The weights
  are constants; each pixel gets its own (tied errors share their run's mean weight, a subgradient), so
  that the loss is Σ_i [e_i]₊ w_i in the pixels' order and its gradient elementwise.

  The order comes from one key-only sort of unsigned integers, 2·bits(e) + positive (the bit pattern of a
  non-negative float is monotone), which XLA:CPU sorts ~5× faster than the floats themselves and ~6×
  faster than a sort carrying a permutation; each pixel finds its place by binary search.
  """
  size = errors.shape[0]
  unsigned = {4: jnp.uint32, 8: jnp.uint64}[errors.dtype.itemsize]
  # Errors ≤ 0 add nothing and do not change the weights of those before them: clamp them to +0.
  bits = jax.lax.bitcast_convert_type(jnp.maximum(jax.lax.stop_gradient(errors), 0.0), unsigned)
  keys = ~(bits * 2 + positive.astype(unsigned))  # Complemented: ascending keys, decreasing errors.
  ordered = jnp.sort(keys)
  is_positive = (~ordered & 1).astype(bool)
  index = jnp.arange(size)
  positives_before = jnp.cumsum(is_positive) - is_positive
  negatives_before = index - positives_before
  # A run of equal keys (tied errors, one side of the mask) starts at `first` and ends before `last`.
  new_run = jnp.concatenate([jnp.ones((min(size, 1),), bool), ordered[1:] != ordered[:-1]])
  ends_run = jnp.concatenate([ordered[1:] != ordered[:-1], jnp.ones((min(size, 1),), bool)])
  first = jax.lax.cummax(jnp.where(new_run, index, 0))
  last = jax.lax.cummin(jnp.where(ends_run, index + 1, size), reverse=True)
  union = num_positive + negatives_before - (index - first)  # P + n at the run's start.
  run = (last - first).astype(errors.dtype)
  safe_union = jnp.maximum(union, 1).astype(errors.dtype)
  positive_weight = 1.0 / safe_union
  # A run of m negatives adds Δ(after) − Δ(before) = (P − p)·m / ((P + n)(P + n + m)), shared among them;
  # with P + n = 0 (no positives, nothing before) Δ goes from 0 to 1.
  negative_weight = jnp.where(
      union > 0, (num_positive - positives_before).astype(errors.dtype) / (safe_union * (safe_union + run)), 1.0 / run)
  weights = jnp.where(is_positive, positive_weight, negative_weight)
  place = jnp.searchsorted(ordered, keys)  # Each pixel's run.
  return jnp.dot(jax.nn.relu(errors), weights[place])


def _slot_hinge(psi, centre, sigma, slot, count, ids, valid) -> jax.Array:
  """The Lovász hinge of one instance slot's Gaussian φ over all the pixels of one image, logits 2φ − 1."""
  phi = _gaussian(psi, centre, sigma)
  positive = valid & (ids == slot)
  errors = jnp.where(positive, 2.0 - 2.0 * phi, 2.0 * phi)  # 1 − (2φ − 1)·(±1)
  return _lovasz_hinge(errors, positive, count.astype(jnp.int32))


@jax.custom_jvp
def _hinge_sum(psi, centres, sigmas, slots, counts, present, ids, valid) -> jax.Array:
  """Σ over the present slots of `_slot_hinge`, one slot at a time (`lax.scan`): memory O(H·W·C).

  `psi` `(N, C)`, `ids` and `valid` `(N,)` are one image's pixels; `centres` `(S, C)`, `sigmas` `(S, C)` or
  `(S, 1)`, `slots`, `counts` and `present` `(S,)` the slots'. Differentiated (either mode), the scan
  computes each slot's gradient as it goes and accumulates it, instead of storing every slot's sort for
  the backward pass (O(K·H·W)) or sorting again there (`jax.checkpoint`, twice the time).
  """
  def body(total, slot):
    k, centre, sigma, count, is_present = slot
    return total + jnp.where(is_present, _slot_hinge(psi, centre, sigma, k, count, ids, valid), 0.0), None

  return jax.lax.scan(body, jnp.zeros((), psi.dtype), (slots, centres, sigmas, counts, present))[0]


@_hinge_sum.defjvp
def _hinge_sum_jvp(primals, tangents):
  """The value and the gradients in one scan; the tangent is their inner product with the input tangents."""
  psi, centres, sigmas, slots, counts, present, ids, valid = primals

  def body(carry, slot):
    total, psi_gradient = carry
    k, centre, sigma, count, is_present = slot
    value, pullback = jax.vjp(lambda p, c, s: _slot_hinge(p, c, s, k, count, ids, valid), psi, centre, sigma)
    d_psi, d_centre, d_sigma = pullback(is_present.astype(value.dtype))
    return (total + jnp.where(is_present, value, 0.0), psi_gradient + d_psi), (d_centre, d_sigma)

  (total, psi_gradient), (centre_gradients, sigma_gradients) = jax.lax.scan(
      body, (jnp.zeros((), psi.dtype), jnp.zeros_like(psi)), (slots, centres, sigmas, counts, present))
  gradients = (psi_gradient, centre_gradients, sigma_gradients)
  return total, sum(jnp.sum(gradient * tangent) for gradient, tangent in zip(gradients, tangents[:3]))


def spatial_embedding_loss(
    embeddings: ArrayLike,
    sigmas: ArrayLike,
    seeds: ArrayLike,
    labels: ArrayLike,
    *,
    max_instances: int,
    coordinates: ArrayLike | None = None,
    instance_weight: float = 1.0,
    sigma_weight: float = 10.0,
    seed_weight: float = 1.0,
    foreground_weight: float = 10.0,
    background: int = 0,
    reduction: str = "mean",
) -> jax.Array:
  """Neven, De Brabandere, Proesmans & Van Gool's spatial-embedding loss (CVPR 2019, arXiv 1906.11109).

  Every pixel i predicts its instance's centre e_i (a semi-convolution: an offset plus the pixel's
  coordinate, e.g. `semi_convolution`), a bandwidth σ_i and a seed logit s_i. Per image, for each
  instance k present (background excluded) with pixels S_k:

      C_k = mean_{i∈S_k} e_i                 (or the mean pixel coordinate: `coordinates`)
      σ_k = mean_{i∈S_k} σ_i                 (per embedding dimension if σ has C channels)
      φ_k(e_i) = exp(−Σ_d (e_{i,d} − C_{k,d})² / (2σ_{k,d}²))     for every pixel i of the image
      L_inst   = (1/K) Σ_k LovászHinge(2φ_k − 1, S_k)              (all H·W pixels, S_k the positives)
      L_smooth = (1/K) Σ_k mean_{i∈S_k, d} (σ_{i,d} − sg(σ_{k,d}))²
      L_seed   = (1/(H·W)) [Σ_{i∉any S_k} sigmoid(s_i)² + w_fg Σ_k Σ_{i∈S_k} (sigmoid(s_i) − sg(φ_k(e_i)))²]
      L        = w_inst·L_inst + w_σ·L_smooth + w_seed·L_seed,

  with sg the stop-gradient and K the number of instances present; the images' L are then averaged
  (`reduction`). This is the reference code's averaging (davyneven/SpatialEmbeddings,
  `src/criterions/my_loss.py`): the hinge and the smoothness per instance, the seed term per pixel,
  then per image; the default weights are its training configuration's (`w_inst` 1, `w_var` 10, `w_seed` 1,
  `foreground_weight` 10). Where this differs from that code: σ is the bandwidth itself, as in the
  paper's φ_k (the code predicts s with 1/(2σ²) = exp(10·s) and averages and smooths s), and the centre
  defaults to the mean of the embeddings (the code's `to_center=False`); pass `coordinates` for the
  code's default (`to_center=True`, also its training configuration), the mean pixel position. The three
  predictions come first, in the order of the reference network's output channels (centres, σ, seed),
  then the labels, as in every loss here.

  Gradients. Background pixels (and ids out of range inside a trace) get exactly zero gradient on their σ
  (σ_k and L_smooth use the instance pixels only) and, from the seed term, none on their embeddings (φ is
  stopped there). Their embeddings do get gradient from L_inst: in the paper every pixel of the image
  enters each instance's hinge, the pixels outside S_k as negatives with error 2φ_k(e_i), which pushes
  them out of the instance's Gaussian, so with `instance_weight` > 0 the gradient on a background
  embedding is zero only where φ_k(e_i) = 0 or its Lovász weight is 0. Their seed logits get gradient
  from the seed term (regressed to 0). Through C_k and σ_k the hinge's gradient reaches all the
  instance's pixels. Instance slots absent from an image contribute exactly 0 (their σ is replaced by 1
  before use, so neither value nor gradient is NaN); coincident embeddings (φ = 1) and empty images are
  finite. An image without instances has no L_inst and no L_smooth but still its seed term, the mean of
  sigmoid(s_i)² over its pixels (0 only with `seed_weight` = 0).

  Cost. Per-instance statistics are segment sums over the pixels, as in `semi_conv_loss`: no one-hot
  tensor. The hinge, however, needs each instance's φ_k over all H·W pixels and a sort of them, which is
  inherent to the loss: it is a `lax.scan` over the slots (every id but the background) whose custom JVP
  computes each slot's gradient as it goes and accumulates it, so memory is O(B·H·W·C + B·K·C), flat in
  K, for the value and the gradient alike, but time is O(B·K·H·W·(C + log(H·W))), linear in
  `max_instances` (absent slots are sorted too, the shapes being fixed). This is the one term of the
  instance losses here that is not flat in the number of instances. `jax.jit`, `vmap`, `grad` and `jvp`
  all work.

  Args:
    embeddings: `(B, H, W, C)` predicted centres e_i, C ≥ 1, in the caller's units (the reference code
      uses tanh(offset) + a coordinate grid spanning [0, 2] × [0, 1]).
    sigmas: `(B, H, W)` bandwidths σ_i, one per pixel, or `(B, H, W, C)`, one per embedding dimension
      (`(B, H, W, 1)` is the former), in the embeddings' units. Use a positive parametrisation (e.g.
      softplus or exp of a network output); the sign does not matter, and σ_k² is floored at ~1e-19
      (float32; ~1e-154 in float64) so that σ_k = 0 is finite too.
    seeds: `(B, H, W)` seed logits s_i; the seed map is sigmoid(s_i), as in the reference code.
    labels: `(B, H, W)` integer instance ids in [0, `max_instances`], as for `semi_conv_loss` (ids out
      of range are a `ValueError` where the host holds them, and background inside a trace).
    max_instances: static largest id (≥ 0); the number of hinge slots.
    coordinates: optional `(H, W, C)` or `(B, H, W, C)` pixel coordinates in the embeddings' units; if
      given, C_k is their mean over S_k (a constant, so no gradient flows through the centre).
    instance_weight: weight w_inst of L_inst.
    sigma_weight: weight w_σ of L_smooth.
    seed_weight: weight w_seed of L_seed.
    foreground_weight: weight w_fg of the instance pixels in L_seed.
    background: the static id excluded from the loss.
    reduction: "mean" or "sum" over the B images, or "none" for `(B,)`; the mean over an empty batch
      is 0.

  Returns:
    A scalar, or `(B,)` for `reduction="none"`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> labels = jnp.array([[[1, 1, 0, 2, 2]]])  # one image of 1 × 5 pixels, two instances
    >>> sigmas, seeds = jnp.ones((1, 1, 5)), jnp.array([[[9.0, 9.0, -9.0, 9.0, 9.0]]])
    >>> loss = lambda e: losses.spatial_embedding_loss(e, sigmas, seeds, labels, max_instances=2)
    >>> print(round(float(loss(jnp.array([[[[0.0], [0.0], [20.0], [40.0], [40.0]]]]))), 4))  # each at its centre
    0.0
    >>> print(round(float(loss(jnp.array([[[[0.0], [2.0], [20.0], [40.0], [40.0]]]]))), 4))  # instance 1 split
    1.0124
  """
  _common.check_reduction(reduction)
  for name, value in (("instance_weight", instance_weight), ("sigma_weight", sigma_weight),
                      ("seed_weight", seed_weight), ("foreground_weight", foreground_weight)):
    _common.check_number(value, name, minimum=0.0)
  embeddings, labels, max_instances, background = _checked_instance_inputs(
      embeddings, labels, max_instances, background)
  sigmas = _checked_sigmas(sigmas, embeddings)
  seeds = _common.as_float(seeds, "seeds")
  _common.chex().assert_equal_shape([seeds, labels], custom_message=_common.shape_message(
      "seeds", seeds.shape, "(B, H, W)", ("labels", labels)))
  if coordinates is not None:
    coordinates = _common.as_float(coordinates, "coordinates")
    message = _common.shape_message("coordinates", coordinates.shape, "(H, W, C) or (B, H, W, C)",
                                    ("embeddings", embeddings))
    _common.chex().assert_rank(coordinates, {3, 4}, custom_message=message)
    _common.chex().assert_equal_shape_suffix([coordinates, embeddings], 3, custom_message=message)
    if coordinates.ndim == 4:
      _common.chex().assert_equal_shape([coordinates, embeddings], custom_message=message)
  dtype = jnp.result_type(embeddings, sigmas, seeds, *(() if coordinates is None else (coordinates,)))
  embeddings, sigmas, seeds = embeddings.astype(dtype), sigmas.astype(dtype), seeds.astype(dtype)
  inputs = (labels, embeddings, sigmas, seeds)
  if coordinates is not None:
    inputs += (jnp.broadcast_to(coordinates.astype(dtype), embeddings.shape),)
  num_segments = max_instances + 1
  # The hinge's slots: every id but the background (all of them if the background is out of range).
  slots = np.array([k for k in range(num_segments) if k != background], np.int32)
  pixels = max(labels.shape[1] * labels.shape[2], 1)

  def per_image(ids, psi, sigma, seed, xy=None):
    ids, psi, valid, counts, means = _image_instances(ids, psi, background, max_instances)
    if xy is not None:  # The centres are the instances' mean coordinates.
      means = _image_instances(ids, xy, background, max_instances)[4]
    sigma = sigma.reshape(-1, sigma.shape[-1])
    present = (counts > 0) & (jnp.arange(num_segments) != background)
    num_present = jnp.maximum(jnp.sum(present), 1)
    sigma_k = jax.ops.segment_sum(jnp.where(valid[:, None], sigma, 0.0), ids, num_segments)
    sigma_k = jnp.where(present[:, None], sigma_k / jnp.maximum(counts, 1.0)[:, None], 1.0)

    # Smoothness of σ inside each instance, around its stopped mean.
    squared = jnp.mean((sigma - jax.lax.stop_gradient(sigma_k)[ids]) ** 2, axis=-1)
    smooth = jax.ops.segment_sum(jnp.where(valid, squared, 0.0), ids, num_segments) / jnp.maximum(counts, 1.0)
    smooth = jnp.sum(jnp.where(present, smooth, 0.0)) / num_present

    # Seeds: background to 0, instance pixels to their own instance's (stopped) Gaussian.
    probability = jax.nn.sigmoid(seed.reshape(-1))
    own = jax.lax.stop_gradient(_gaussian(psi, means[ids], sigma_k[ids]))
    seed_term = jnp.where(valid, foreground_weight * (probability - own) ** 2, probability ** 2)
    seed_term = jnp.sum(seed_term) / pixels

    # The Lovász hinge of each slot's Gaussian over the whole image, one slot at a time.
    hinges = _hinge_sum(psi, means[slots], sigma_k[slots], jnp.asarray(slots), counts[slots], present[slots], ids,
                        valid)
    instance_term = hinges / num_present
    return instance_weight * instance_term + sigma_weight * smooth + seed_weight * seed_term

  per_image_losses = jax.vmap(per_image)(*inputs)
  return _common.reduce_masked(per_image_losses, None, reduction)


def _compact_ids(labels: jax.Array, max_instances: int) -> jax.Array:
  """Maps the ids of one image to 0 (background) and 1…n in sorted order, n ≤ `max_instances`."""
  # The first `max_instances + 1` distinct ids, sorted (padded with the largest
  # integer): what `jnp.unique(size=...)` returns, found with one sort of the
  # bare ids (a key-only sort; `unique` sorts with more operands and then
  # scatters, ~3× slower on CPU) and a binary search for where each new id starts.
  if labels.size == 0:  # An image without pixels has no objects.
    return labels
  ids = jnp.sort(labels.reshape(-1))
  starts_new_id = jnp.concatenate([jnp.ones((1,), bool), ids[1:] != ids[:-1]])
  rank = jnp.cumsum(starts_new_id) - 1
  first = jnp.searchsorted(rank, jnp.arange(max_instances + 1, dtype=rank.dtype))
  present = jnp.where(first < ids.size, ids[jnp.minimum(first, ids.size - 1)], jnp.iinfo(labels.dtype).max)
  compact = jnp.searchsorted(present, labels)
  # Background (0) is the smallest id if present; shift so that it maps to 0 either way.
  return jnp.where(labels == 0, 0, jnp.minimum(compact + (present[0] != 0), max_instances))


def _iou_matrix(pred_ids: jax.Array, true_ids: jax.Array, max_instances: int):
  """IoUs `(K_true, K_pred)` between compacted true and predicted objects, and which objects exist."""
  size = max_instances + 1
  table = jax.ops.segment_sum(jnp.ones(true_ids.size, jnp.float32), (true_ids * size + pred_ids).reshape(-1),
                              size * size).reshape(size, size)
  true_area, pred_area = table.sum(axis=1)[1:], table.sum(axis=0)[1:]
  intersection = table[1:, 1:]
  union = true_area[:, None] + pred_area[None, :] - intersection
  return intersection / jnp.maximum(union, 1.0), true_area > 0, pred_area > 0


def _check_object_counts(labels: ArrayLike, name: str, max_instances: int) -> None:
  """Where the host holds the ids, an image with more than `max_instances` objects is a `ValueError`."""
  values = _common.host_values(labels)
  if values is None:
    return
  most = max((len(np.unique(image[image > 0])) for image in values.reshape(-1, *values.shape[-2:])), default=0)
  if most > max_instances:
    raise ValueError(f"`{name}` has an image with {most} objects, more than `max_instances`={max_instances}.")


def f2_iou_score(
    pred_labels: ArrayLike, true_labels: ArrayLike, *, max_instances: int = 64,
    thresholds: ArrayLike = AIRBUS_THRESHOLDS, reduction: str = "mean") -> jax.Array:
  """Airbus Ship Detection F2 score averaged over IoU thresholds (see the module docstring).

  The score is not symmetric: a missed ship costs 4 in the denominator, a
  false alarm 1, so the predictions must come first.

  Args:
    pred_labels: `(B, H, W)` integer predicted instance ids ≥ 0, any values;
      0 is background. Where the host holds the ids a negative one is a
      `ValueError`; elsewhere negative ids are read as background.
    true_labels: `(B, H, W)` true ids, same conventions.
    max_instances: static bound (≥ 0) on the objects per image on each side
      (the table is (max_instances + 1)²). Where the host holds the ids an
      image with more is a `ValueError`; elsewhere the objects beyond it are
      merged.
    thresholds: the IoU thresholds, non-empty, each in [0.5, 1).
    reduction: "mean" over the B images, "sum", or "none" for `(B,)`. An
      image without pixels (H·W = 0) has no objects on either side and
      scores 1; the mean over an empty batch (B = 0) is 0.

  Returns:
    A scalar, or `(B,)` for `reduction="none"`, in [0, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> truth = jnp.array([[[1, 1, 0, 2, 2]]])
    >>> found_one = jnp.array([[[5, 5, 0, 0, 0]]])  # ship 1 exactly, ship 2 missed
    >>> round(float(losses.f2_iou_score(found_one, truth)), 4)  # 5·1 / (5·1 + 4·1 + 0)
    0.5556
    >>> round(float(losses.f2_iou_score(truth, found_one)), 4)  # swapped: a false alarm costs less
    0.8333
  """
  _common.check_reduction(reduction)
  max_instances = _common.check_int(max_instances, "max_instances", minimum=0)
  _common.check_iou_thresholds(thresholds)
  pred_labels_in, true_labels_in = pred_labels, true_labels
  pred_labels = _common.check_labels(pred_labels, "pred_labels", None)
  true_labels = _common.check_labels(true_labels, "true_labels", None)
  _common.chex().assert_equal_shape([pred_labels, true_labels], custom_message=_common.shape_message(
      "pred_labels", pred_labels.shape, "(B, H, W)", ("true_labels", true_labels)) + " (the same shape)")
  _check_object_counts(pred_labels_in, "pred_labels", max_instances)
  _check_object_counts(true_labels_in, "true_labels", max_instances)
  thresholds = jnp.asarray(thresholds, jnp.float32)

  def per_image(pred_ids, true_ids):
    # Negative ids (unchecked where the host does not hold them) are background.
    pred_ids, true_ids = jnp.maximum(pred_ids, 0), jnp.maximum(true_ids, 0)
    iou, true_exists, pred_exists = _iou_matrix(
        _compact_ids(pred_ids, max_instances), _compact_ids(true_ids, max_instances), max_instances)
    matched = iou[None] > thresholds[:, None, None]  # (T, K_true, K_pred)
    true_positives = jnp.sum(jnp.any(matched, axis=2) & true_exists, axis=1)
    false_negatives = jnp.sum(true_exists) - true_positives
    false_positives = jnp.sum(~jnp.any(matched, axis=1) & pred_exists, axis=1)
    denominator = 5 * true_positives + 4 * false_negatives + false_positives
    f2 = jnp.where(denominator > 0, 5 * true_positives / jnp.maximum(denominator, 1), 1.0)
    return jnp.mean(f2)

  return _common.reduce_masked(jax.vmap(per_image)(pred_labels, true_labels), None, reduction)


def pixel_coordinates(height: int, width: int) -> jax.Array:
  """`(H, W, 2)` pixel coordinates (x to the right, y down), each in [−1, 1] along its axis.

  `height` and `width` are static ints ≥ 0 (0 gives an empty grid); a side
  of 1 pixel has the coordinate −1.

  Examples:
    >>> import losses
    >>> print(losses.pixel_coordinates(2, 3)[..., 0])  # x
    [[-1.  0.  1.]
     [-1.  0.  1.]]
  """
  height = _common.check_int(height, "height", minimum=0)
  width = _common.check_int(width, "width", minimum=0)
  y, x = jnp.meshgrid(jnp.linspace(-1.0, 1.0, height), jnp.linspace(-1.0, 1.0, width), indexing="ij")
  return jnp.stack([x, y], axis=-1)


def semi_convolution(embeddings: ArrayLike, *, scale: ArrayLike = 1.0) -> jax.Array:
  """The semi-convolutional operator Ψ_u = Φ_u + s·(x_u, y_u) on the first two channels (Novotny et al.).

  Args:
    embeddings: `(B, H, W, C)` float embeddings Φ, C ≥ 2; channels beyond
      the second pass through unchanged.
    scale: the coordinate scale s, the embedding's units per half image (a
      number, or a scalar array such as a learned gate; it may be traced).
      With s = H/2 on a square image Ψ is in pixels.

  Returns:
    `(B, H, W, C)` Ψ in the embeddings' dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> psi = losses.semi_convolution(jnp.zeros((1, 2, 2, 3)), scale=4.0)
    >>> print(psi[0, :, :, 0])  # 4·x; the third channel stays 0
    [[-4.  4.]
     [-4.  4.]]
  """
  embeddings = jnp.asarray(embeddings)
  if not jnp.issubdtype(embeddings.dtype, jnp.floating):
    raise TypeError(f"`embeddings` must be a floating-point array, got dtype {embeddings.dtype}.")
  message = _common.shape_message("embeddings", embeddings.shape, "(B, H, W, C) with C >= 2")
  _common.chex().assert_rank(embeddings, 4, custom_message=message)
  if embeddings.shape[-1] < 2:
    raise ValueError(message)
  _common.check_number(scale, "scale")
  coordinates = pixel_coordinates(*embeddings.shape[1:3]).astype(embeddings.dtype)
  offset = jnp.asarray(scale, embeddings.dtype) * coordinates
  return embeddings.at[..., :2].add(offset)


def extract_instances(
    foreground: ArrayLike, embeddings: ArrayLike, *, max_instances: int, distance: float,
    foreground_threshold: float = 0.5) -> jax.Array:
  """Clusters the foreground pixels of each image around seeds in embedding space.

  Each of `max_instances` rounds takes the unassigned foreground pixel of
  highest foreground probability as the seed, moves the centre once to the
  mean of the unassigned foreground pixels within `distance` of it, and
  assigns every unassigned foreground pixel within `distance` of that centre
  to a new instance. Rounds after the foreground is used up do nothing.

  Args:
    foreground: `(B, H, W)` float foreground probabilities.
    embeddings: `(B, H, W, C)` float embeddings Ψ, C ≥ 1.
    max_instances: static number of rounds (≥ 0), the most instances per
      image.
    distance: clustering radius ≥ 0 in embedding units.
    foreground_threshold: probability above which a pixel is foreground.

  Returns:
    `(B, H, W)` int32 labels: 0 background, 1…`max_instances` instances;
    all 0 for images without pixels (H·W = 0), empty for B = 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> foreground = jnp.array([[[0.9, 0.8, 0.1, 0.7]]])
    >>> embeddings = jnp.array([[[[0.0], [0.5], [0.0], [9.0]]]])
    >>> print(losses.extract_instances(foreground, embeddings, max_instances=4, distance=1.0))
    [[[1 1 0 2]]]
  """
  foreground = _common.check_rank(_common.as_float(foreground, "foreground"), "foreground", 3, "(B, H, W)")
  embeddings = _common.check_embeddings(embeddings, "embeddings", foreground, "foreground")
  max_instances = _common.check_int(max_instances, "max_instances", minimum=0)
  _common.check_number(distance, "distance", minimum=0.0)
  _common.check_number(foreground_threshold, "foreground_threshold")
  if foreground.shape[1] * foreground.shape[2] == 0:
    return jnp.zeros(foreground.shape, jnp.int32)

  def per_image(probability, psi):
    probability, psi = probability.reshape(-1), psi.reshape(-1, psi.shape[-1])
    is_foreground = probability > foreground_threshold

    def round_(k, labels):
      free = is_foreground & (labels == 0)
      seed = jnp.argmax(jnp.where(free, probability, -1.0))
      near_seed = free & (jnp.sum((psi - psi[seed]) ** 2, axis=-1) <= distance ** 2)
      centre = jnp.sum(jnp.where(near_seed[:, None], psi, 0.0), axis=0) / jnp.maximum(jnp.sum(near_seed), 1)
      members = free & (jnp.sum((psi - centre) ** 2, axis=-1) <= distance ** 2) & jnp.any(free)
      return jnp.where(members, k + 1, labels)

    labels = jax.lax.fori_loop(0, max_instances, round_, jnp.zeros(probability.shape, jnp.int32))
    return labels.reshape(foreground.shape[1:])

  return jax.vmap(per_image)(foreground, embeddings)


def extract_spatial_instances(
    embeddings: ArrayLike, sigmas: ArrayLike, seeds: ArrayLike, *, max_instances: int,
    seed_threshold: float = 0.5, foreground_threshold: float = 0.5, min_pixels: int = 1,
    max_rounds: int | None = None) -> jax.Array:
  """Instances from predicted centres, bandwidths and seeds (Neven et al., CVPR 2019): no radius to tune.

  The inference of `spatial_embedding_loss`, following the reference code's `Cluster.cluster`
  (davyneven/SpatialEmbeddings, `src/utils/utils.py`). The foreground is the pixels with
  sigmoid(seed) > `foreground_threshold`; all start unclustered. Each round takes the unclustered
  foreground pixel of highest seed score as the seed, stops (for good) if that score is below
  `seed_threshold` or fewer than `min_pixels` foreground pixels are unclustered, and otherwise
  marks the seed clustered and proposes the foreground pixels i with
  φ(e_i) = exp(−Σ_d (e_{i,d} − e_{seed,d})² / (2σ_{seed,d}²)) > 0.5, the seed's embedding as centre and its
  own σ as bandwidth. The proposal becomes a new instance if it has at least `min_pixels` pixels and more
  than half of them are still unclustered (the seed no longer counts, so a proposal of 1 or 2 pixels is
  never kept); either way its pixels are marked clustered. Unlike the reference code, which relabels every pixel of an
  accepted proposal, only the proposal's pixels not yet in an instance take the new id, so an earlier
  instance is never cut into. A fixed number of `lax.fori_loop` rounds, no host round trip.

  Args:
    embeddings: `(B, H, W, C)` float predicted centres e_i, C ≥ 1, as for `spatial_embedding_loss`.
    sigmas: `(B, H, W)` or `(B, H, W, C)` float bandwidths σ_i in the embeddings' units.
    seeds: `(B, H, W)` float seed logits.
    max_instances: static bound (≥ 0) on the instances per image.
    seed_threshold: the smallest seed score sigmoid(s) that starts an instance (the reference's
      `threshold`: 0.5 by default, 0.9 in its `test.py`).
    foreground_threshold: seed score above which a pixel can be clustered (0.5 in the reference).
    min_pixels: static smallest proposal kept (≥ 1); the reference's `> 128` (at 1024 × 2048 pixels)
      is `min_pixels=129`.
    max_rounds: static number of rounds (≥ 0), `max_instances` if None; a rejected proposal uses a round.

  Returns:
    `(B, H, W)` int32 labels: 0 background, 1…`max_instances` instances numbered in the order found;
    all 0 for images without pixels (H·W = 0), empty for B = 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> embeddings = jnp.array([[[[0.0], [0.3], [0.1], [5.0], [9.0], [9.2], [8.9]]]])
    >>> sigmas = jnp.ones((1, 1, 7))
    >>> seeds = jnp.array([[[3.0, 2.0, 1.0, -3.0, 1.0, 4.0, 2.0]]])  # logits; pixel 3 is background
    >>> print(losses.extract_spatial_instances(embeddings, sigmas, seeds, max_instances=4))
    [[[2 2 2 0 1 1 1]]]
  """
  seeds = _common.check_rank(_common.as_float(seeds, "seeds"), "seeds", 3, "(B, H, W)")
  embeddings = _common.check_embeddings(embeddings, "embeddings", seeds, "seeds")
  sigmas = _checked_sigmas(sigmas, embeddings)
  max_instances = _common.check_int(max_instances, "max_instances", minimum=0)
  min_pixels = _common.check_int(min_pixels, "min_pixels", minimum=1)
  max_rounds = max_instances if max_rounds is None else _common.check_int(max_rounds, "max_rounds", minimum=0)
  _common.check_number(seed_threshold, "seed_threshold")
  _common.check_number(foreground_threshold, "foreground_threshold")
  if seeds.shape[1] * seeds.shape[2] == 0:
    return jnp.zeros(seeds.shape, jnp.int32)
  dtype = jnp.result_type(embeddings, sigmas, seeds)

  def per_image(psi, sigma, seed):
    psi, sigma = psi.reshape(-1, psi.shape[-1]).astype(dtype), sigma.reshape(-1, sigma.shape[-1]).astype(dtype)
    score = jax.nn.sigmoid(seed.reshape(-1).astype(dtype))
    is_foreground = score > foreground_threshold

    def round_(_, carry):
      labels, clustered, found = carry
      free = is_foreground & ~clustered
      centre = jnp.argmax(jnp.where(free, score, -1.0))
      active = (jnp.sum(free) >= min_pixels) & (score[centre] >= seed_threshold)
      clustered = clustered | (active & (jnp.arange(labels.size) == centre))  # The seed, before counting.
      proposal = is_foreground & (_gaussian(psi, psi[centre], sigma[centre]) > 0.5) & active
      size = jnp.sum(proposal)
      accepted = (size >= min_pixels) & (2 * jnp.sum(proposal & ~clustered) > size) & (found < max_instances)
      labels = jnp.where(accepted & proposal & (labels == 0), found + 1, labels)
      return labels, clustered | proposal, found + accepted.astype(jnp.int32)

    start = (jnp.zeros(score.shape, jnp.int32), jnp.zeros(score.shape, bool), jnp.zeros((), jnp.int32))
    labels = jax.lax.fori_loop(0, max_rounds, round_, start)[0]
    return labels.reshape(seeds.shape[1:])

  return jax.vmap(per_image)(embeddings, sigmas, seeds)


def connected_components(mask: ArrayLike) -> jax.Array:
  """4-connected components of a `(B, H, W)` boolean mask, labelled by a unique id each (0 outside).

  Every foreground pixel starts with its own index + 1 and repeatedly takes
  the smallest label among itself and its foreground neighbours until nothing
  changes (`lax.while_loop`), so each component ends with the smallest index
  in it. Ids are not consecutive. An empty batch or image gives an empty
  label map of the same shape.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> mask = jnp.array([[[True, True, False, True]]])
    >>> print(losses.connected_components(mask))
    [[[1 1 0 4]]]
  """
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    raise TypeError(f"`mask` must be a boolean (B, H, W) array, got dtype {mask.dtype}; "
                    "threshold it first, e.g. `probability > 0.5`.")
  _common.check_rank(mask, "mask", 3, "(B, H, W)")
  height, width = mask.shape[1:]
  start = jnp.where(mask, jnp.arange(1, height * width + 1).reshape(height, width), 0)
  big = height * width + 1

  def propagate(labels):
    padded = jnp.pad(jnp.where(mask, labels, big), ((0, 0), (1, 1), (1, 1)), constant_values=big)
    neighbours = jnp.minimum(jnp.minimum(padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]),
                             jnp.minimum(padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]))
    return jnp.where(mask, jnp.minimum(labels, neighbours), 0)

  def changed(carry):
    previous, current = carry
    return jnp.any(previous != current)

  _, labels = jax.lax.while_loop(changed, lambda carry: (carry[1], propagate(carry[1])),
                                 (start, propagate(start)))
  return labels
