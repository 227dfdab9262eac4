"""Spatial embeddings: learned instance centres, clustering bandwidths and seed scores.

`spatial_embedding_loss` (Neven, De Brabandere, Proesmans & Van Gool, CVPR
2019) learns per-pixel centres, clustering bandwidths σ and seed scores: a
Lovász hinge on each instance's Gaussian of the distance to its centre, a
smoothness term on σ and a seed regression. Its per-instance statistics are
segment sums over the pixels, as in `losses.embeddings`, but the hinge sorts
every instance's Gaussian over the whole image, so its time (not its memory)
grows with `max_instances`, unless `sampled_instances` draws a fixed number
of instances per image. `losses.extraction.extract_spatial_instances` is
its inference: seeds and learned σ, no clustering radius.
"""

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from losses import _common


def _lovasz_hinge(errors: jax.Array, positive: jax.Array, num_positive: jax.Array) -> jax.Array:
  """Berman, Rannen Triki & Blaschko's Lovász hinge (CVPR 2018) of one binary mask from its hinge errors.

  `errors` `(N,)` are 1 − logit·sign, `positive` `(N,)` the mask and `num_positive` its size P. With the
  errors in decreasing order, the j-th is weighted by the increment of the Jaccard loss
  Δ(M) = |M| / |P ∪ M| of the first j pixels (Δ(∅) = 0): 1/(P + n) for a positive and
  (P − p)/((P + n)(P + n + 1)) for a negative, p and n the positives and negatives before it. The weights
  are constants; each pixel gets its own (tied errors share their run's mean weight, a subgradient), so
  that the loss is Σ_i [e_i]₊ w_i in the pixels' order and its gradient elementwise.

  The order comes from one key-only sort of unsigned integers, 2·bits(e) + positive (the bit pattern of a
  non-negative float is monotone), which XLA:CPU sorts faster than the floats themselves or a sort
  carrying a permutation; each pixel finds its place by binary search.
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
  phi = _common.gaussian(psi, centre, sigma)
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


def _hinge_slots(max_instances: int, background: int) -> np.ndarray:
  """The ids the hinge visits: every id but the background (all of them if the background is out of range)."""
  return np.array([k for k in range(max_instances + 1) if k != background], np.int32)


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
    sampled_instances: int | None = None,
    key: ArrayLike | None = None,
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
  inherent to the loss: it is a `lax.scan` over the slots whose custom JVP computes each slot's gradient
  as it goes and accumulates it, so memory is O(B·H·W·C + B·K·C), flat in K, for the value and the
  gradient alike. By default the slots are every id but the background, and time is
  O(B·K·H·W·(C + log(H·W))), linear in `max_instances` (absent slots are sorted too, the shapes being
  fixed). With `sampled_instances` = S the slots are S of the instances present, drawn uniformly without
  replacement (all of them when at most S are present), and L_inst is the mean hinge over those:
  simple random sampling, so an unbiased estimate of L_inst that is exact for images with at most S
  instances, at a time O(B·S·H·W·(C + log(H·W))) flat in `max_instances`. Every other term stays exact.
  The draw, reproducible from `key`: the present ids of image b in increasing order of
  `jax.random.uniform(key, (B, max_instances + 1))[b]`, the first S of them. (Windows around each
  instance would change the loss, whose hinge takes every pixel of the image as a negative.)
  `jax.jit`, `vmap`, `grad` and `jvp` all work.

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
    sampled_instances: static number S ≥ 1 of instances per image whose hinge is computed, or None for
      every slot (exact; time linear in `max_instances`). S at least the number of instance ids (`max_instances`
      with the background in [0, `max_instances`]) is the exact loss.
    key: a PRNG key for the sampled instances; needed with `sampled_instances` < `max_instances`.
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
  embeddings, labels, max_instances, background = _common.check_instance_inputs(
      embeddings, labels, max_instances, background)
  sigmas = _common.check_sigmas(sigmas, embeddings)
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
  slots = _hinge_slots(max_instances, background)
  if sampled_instances is not None:
    sampled_instances = _common.check_int(sampled_instances, "sampled_instances", minimum=1)
    if sampled_instances >= len(slots):
      sampled_instances = None  # Every instance is drawn: the exact loss, without a key.
    elif key is None:
      raise ValueError(f"`sampled_instances`={sampled_instances} < {len(slots)} instance ids draws instances: "
                       "pass `key`.")
  if sampled_instances is not None:
    key = _common.check_key(key)
  return _compiled_spatial_embedding_loss(
      embeddings, sigmas, seeds, labels, coordinates, key, instance_weight, sigma_weight, seed_weight,
      foreground_weight, max_instances=max_instances, background=background, sampled_instances=sampled_instances,
      reduction=reduction)


# The inputs are checked on the host, then one compiled program runs: called outside `jit`, the loss compiles
# once per signature instead of once per operation.
@functools.partial(jax.jit, static_argnames=("max_instances", "background", "sampled_instances", "reduction"))
def _compiled_spatial_embedding_loss(embeddings, sigmas, seeds, labels, coordinates, key, instance_weight,
                                     sigma_weight, seed_weight, foreground_weight, *, max_instances, background,
                                     sampled_instances, reduction):
  num_segments = max_instances + 1
  slots = _hinge_slots(max_instances, background)
  dtype = jnp.result_type(embeddings, sigmas, seeds, *(() if coordinates is None else (coordinates,)))
  embeddings, sigmas, seeds = embeddings.astype(dtype), sigmas.astype(dtype), seeds.astype(dtype)
  inputs = (labels, embeddings, sigmas, seeds)
  if coordinates is not None:
    inputs += (jnp.broadcast_to(coordinates.astype(dtype), embeddings.shape),)
  if sampled_instances is not None:
    inputs += (jax.random.uniform(key, (labels.shape[0], num_segments)),)
  pixels = max(labels.shape[1] * labels.shape[2], 1)

  def per_image(ids, psi, sigma, seed, *extra):
    xy, draws = (extra[0] if coordinates is not None else None), (extra[-1] if sampled_instances else None)
    ids, psi, valid, counts, means = _common.image_instances(ids, psi, background, max_instances)
    if xy is not None:  # The centres are the instances' mean coordinates.
      means = _common.image_instances(ids, xy, background, max_instances)[4]
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
    own = jax.lax.stop_gradient(_common.gaussian(psi, means[ids], sigma_k[ids]))
    seed_term = jnp.where(valid, foreground_weight * (probability - own) ** 2, probability ** 2)
    seed_term = jnp.sum(seed_term) / pixels

    # The Lovász hinge of each slot's Gaussian over the whole image, one slot at a time.
    if sampled_instances is None:
      chosen, chosen_present, num_chosen = jnp.asarray(slots), present[slots], num_present
    else:  # The first S of the present instances in a random order.
      chosen = _common.shuffled_instances(draws, present)[:sampled_instances]
      chosen_present = jnp.arange(sampled_instances) < jnp.sum(present)
      num_chosen = jnp.maximum(jnp.sum(chosen_present), 1)
    hinges = _hinge_sum(psi, means[chosen], sigma_k[chosen], chosen, counts[chosen], chosen_present, ids, valid)
    instance_term = hinges / num_chosen
    return instance_weight * instance_term + sigma_weight * smooth + seed_weight * seed_term

  per_image_losses = jax.vmap(per_image)(*inputs)
  return _common.reduce_masked(per_image_losses, None, reduction)

