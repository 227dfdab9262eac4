"""Instance embedding losses: semi-convolutional embeddings and the discriminative loss.

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
segment sums.
"""

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from losses import _common


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
  embeddings, labels, max_instances, background = _common.check_instance_inputs(
      embeddings, labels, max_instances, background)
  return _compiled_semi_conv_loss(embeddings, labels, max_instances=max_instances, background=background,
                                  reduction=reduction)


# Each public loss checks its inputs on the host, then runs one compiled program: called outside `jit`, it
# compiles once per signature instead of once per operation.
@functools.partial(jax.jit, static_argnames=("max_instances", "background", "reduction"))
def _compiled_semi_conv_loss(embeddings, labels, *, max_instances, background, reduction):
  def per_image(ids, psi):
    return _eq5(*_common.image_instances(ids, psi, background, max_instances))

  return _common.reduce_masked(jax.vmap(per_image)(labels, embeddings), None, reduction)


def _eq5(ids, psi, valid, counts, means) -> jax.Array:
  """Eq. 5 of one image from `_common.image_instances`: Σ_S mean_{u∈S} ‖Ψ_u − mean_S Ψ‖."""
  distances = jnp.where(valid, _common.safe_norm(psi - means[ids]), 0.0)
  return jnp.sum(jax.ops.segment_sum(distances, ids, counts.shape[0]) / jnp.maximum(counts, 1.0))



# Negatives' −log(1 − K) is evaluated at a ≥ this (K ≤ exp(−1e-6)): at most −log(1e-6) ≈ 13.8 per pixel, with a
# bounded gradient, where a negative coincides with the seed (a = 0, K = 1) and the exact value is infinite.
_MIN_NEGATIVE_EXPONENT = 1e-6


def semi_conv_kernel_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    sigma: ArrayLike,
    key: ArrayLike,
    max_instances: int,
    num_seeds: int = 8,
    kernel: str = "laplacian",
    pull_weight: float = 1.0,
    kernel_weight: float = 1.0,
    background: int = 0,
    reduction: str = "mean",
) -> jax.Array:
  """Novotny et al.'s complete semi-convolutional loss: eq. 5 plus a steered-kernel binary cross-entropy.

  Eq. 5 (`semi_conv_loss`) only pulls each instance to its own mean: two touching instances whose pixels
  all point at one shared point score 0. Section 3 of the paper (steered bilateral kernels) reads the
  embeddings through a kernel K_σ(Ψ_s, Ψ_u) between a seed pixel s and every pixel u, and trains the kernel
  map of a seed of instance S to be S's mask with a binary cross-entropy, together with eq. 5; a learned
  scalar σ sets the kernel's width. Per image, with N = H·W pixels and n instances present:

      K_σ(Ψ_s, Ψ_u) = exp(−a_su),  a_su = ‖Ψ_u − Ψ_s‖/σ ("laplacian", the paper's choice)
                                        or ‖Ψ_u − Ψ_s‖²/(2σ²) ("gaussian"),
      BCE_s   = (1/N) Σ_u [u ∈ S(s)]·a_su − [u ∉ S(s)]·log(1 − exp(−a_su)),
      L_pull  = Σ_S (1/|S|) Σ_{u∈S} ‖Ψ_u − mean_S Ψ‖              (eq. 5),
      L_kern  = (1/J) Σ_{j=1..J} BCE_{s_j},
      L       = w_pull·L_pull + w_kern·L_kern.

  Every pixel of the image counts in BCE_s: the seed's instance as positives, the background and every
  other instance as negatives, which is what separates touching instances (eq. 5 never compares two
  instances). Gradients flow through both Ψ_u and the seed's Ψ_s, and through σ.

  Seeds. The paper samples the seed inside the instance; here J = `num_seeds` seeds per image (static),
  so that the cost is O(B·J·H·W·C), flat in `max_instances`, instead of a kernel map per instance
  (O(B·K·H·W·C)). The present instances are put in a uniformly random order and seed j takes the
  (j mod n)-th of them, so each instance gets ⌊J/n⌋ or ⌈J/n⌉ seeds (all of them get one when n ≤ J);
  within its instance the seed is a pixel drawn uniformly. By symmetry every instance has the same
  expected number of seeds, so L_kern is an unbiased estimate of the mean over the instances of
  E_{s uniform in S} BCE_s: instances weigh equally whatever their area, pixels equally within each.
  The draws, reproducible from `key`: `order_key, pixel_key = jax.random.split(key)`; the instances of
  image b in increasing order of `jax.random.uniform(order_key, (B, max_instances + 1))[b]` (present ids
  only); seed j is the ⌊v·|S|⌋-th pixel (in row-major order) of its instance S, with
  v = `jax.random.uniform(pixel_key, (B, num_seeds))[b, j]`.

  Numerics: the positives' −log K = a is exact; the negatives' −log(1 − K) = −log(−expm1(−a)) is taken at
  max(a, 1e-6), so a negative on top of the seed costs ≈ 13.8 instead of ∞; σ² is floored at √tiny.
  An image without instances adds 0 (no seed), as does one without pixels.

  Args:
    embeddings: `(B, H, W, C)` semi-convolutional embeddings Ψ (e.g. from `semi_convolution`), C ≥ 1.
    labels: `(B, H, W)` integer instance ids in [0, `max_instances`], as for `semi_conv_loss`.
    sigma: the kernel width σ > 0 in the embeddings' units, a scalar (e.g. exp of a trained log σ; it may
      be traced, and the loss is differentiable in it).
    key: a PRNG key (`jax.random.key` or `jax.random.PRNGKey`) for the seeds.
    max_instances: static largest id (≥ 0).
    num_seeds: static number J ≥ 1 of seeds per image.
    kernel: "laplacian" or "gaussian".
    pull_weight: weight w_pull ≥ 0 of eq. 5.
    kernel_weight: weight w_kern ≥ 0 of the kernel cross-entropy.
    background: the static id excluded from the loss (its pixels are negatives of every seed).
    reduction: "mean" or "sum" over the B images, or "none" for `(B,)`; the mean over an empty batch is 0.

  Returns:
    A scalar, or `(B,)` for `reduction="none"`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import losses
    >>> labels = jnp.array([[[1, 1, 2, 2]]])  # two touching instances ...
    >>> merged = jnp.zeros((1, 1, 4, 2))  # ... whose pixels all point at one point
    >>> print(losses.semi_conv_loss(merged, labels, max_instances=2))  # eq. 5 alone is satisfied
    0.0
    >>> loss = lambda e: losses.semi_conv_kernel_loss(e, labels, sigma=1.0, key=jax.random.key(0), max_instances=2)
    >>> print(round(float(loss(merged)), 2))  # half of each seed's pixels are negatives at K = 1
    6.91
    >>> apart = jnp.array([[[[0.0, 0.0], [0.0, 0.0], [20.0, 0.0], [20.0, 0.0]]]])
    >>> print(round(float(loss(apart)), 6))
    0.0
  """
  _common.check_reduction(reduction)
  kernel = _common.check_kernel(kernel)
  num_seeds = _common.check_int(num_seeds, "num_seeds", minimum=1)
  _common.check_number(sigma, "sigma", minimum=0.0, strict=True)
  for name, value in (("pull_weight", pull_weight), ("kernel_weight", kernel_weight)):
    _common.check_number(value, name, minimum=0.0)
  embeddings, labels, max_instances, background = _common.check_instance_inputs(
      embeddings, labels, max_instances, background)
  key = _common.check_key(key)

  return _compiled_semi_conv_kernel_loss(
      embeddings, labels, sigma, key, pull_weight, kernel_weight, max_instances=max_instances, num_seeds=num_seeds,
      kernel=kernel, background=background, reduction=reduction)


@functools.partial(jax.jit, static_argnames=("max_instances", "num_seeds", "kernel", "background", "reduction"))
def _compiled_semi_conv_kernel_loss(embeddings, labels, sigma, key, pull_weight, kernel_weight, *, max_instances,
                                    num_seeds, kernel, background, reduction):
  dtype = jnp.result_type(embeddings, sigma)
  embeddings, sigma = embeddings.astype(dtype), jnp.asarray(sigma, dtype)
  order_key, pixel_key = jax.random.split(key)
  instance_draws = jax.random.uniform(order_key, (labels.shape[0], max_instances + 1))
  pixel_draws = jax.random.uniform(pixel_key, (labels.shape[0], num_seeds))
  pixels = labels.shape[1] * labels.shape[2]

  def per_image(ids, psi, instance_draw, pixel_draw):
    ids, psi, valid, counts, means = _common.image_instances(ids, psi, background, max_instances)
    pull = _eq5(ids, psi, valid, counts, means)
    if pixels == 0:
      return pull_weight * pull
    num_present = jnp.sum(counts > 0)  # `counts` holds instance pixels only: the background's is 0.
    order = _common.shuffled_instances(instance_draw, counts > 0)
    seed_ids = order[jnp.arange(num_seeds) % jnp.maximum(num_present, 1)]
    sizes = counts[seed_ids]
    rank = jnp.minimum(jnp.floor(pixel_draw * sizes), sizes - 1).astype(jnp.int32)
    positive = valid[None, :] & (ids[None, :] == seed_ids[:, None])  # (J, N): each seed's instance mask.
    position = jnp.cumsum(positive, axis=1, dtype=jnp.int32) - 1
    seed_pixels = jnp.argmax(positive & (position == rank[:, None]), axis=1)
    exponent = _common.kernel_exponent(psi[None, :, :], psi[seed_pixels][:, None, :], sigma, kernel)
    negative = -jnp.log(-jnp.expm1(-jnp.maximum(exponent, _MIN_NEGATIVE_EXPONENT)))
    cross_entropy = jnp.mean(jnp.where(positive, exponent, negative))
    return pull_weight * pull + kernel_weight * jnp.where(num_present > 0, cross_entropy, 0.0)

  per_image_losses = jax.vmap(per_image)(labels, embeddings, instance_draws, pixel_draws)
  return _common.reduce_masked(per_image_losses, None, reduction)


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
  embeddings, labels, max_instances, background = _common.check_instance_inputs(
      embeddings, labels, max_instances, background)
  return _compiled_discriminative_loss(embeddings, labels, delta_v, delta_d, alpha, beta, gamma,
                                       max_instances=max_instances, background=background, reduction=reduction)


@functools.partial(jax.jit, static_argnames=("max_instances", "background", "reduction"))
def _compiled_discriminative_loss(embeddings, labels, delta_v, delta_d, alpha, beta, gamma, *, max_instances,
                                  background, reduction):
  num_segments = max_instances + 1

  def per_image(ids, psi):
    ids, psi, valid, counts, means = _common.image_instances(ids, psi, background, max_instances)
    present = (counts > 0) & (jnp.arange(num_segments) != background)
    num_present = jnp.sum(present)
    pull_per_pixel = jnp.where(valid, jnp.maximum(_common.safe_norm(psi - means[ids]) - delta_v, 0.0) ** 2, 0.0)
    pull_per_instance = jax.ops.segment_sum(pull_per_pixel, ids, num_segments) / jnp.maximum(counts, 1.0)
    pull = jnp.sum(jnp.where(present, pull_per_instance, 0.0)) / jnp.maximum(num_present, 1)
    pairs = present[:, None] & present[None, :] & ~jnp.eye(num_segments, dtype=bool)
    separation = _common.safe_norm(means[:, None, :] - means[None, :, :])
    push_per_pair = jnp.where(pairs, jnp.maximum(2.0 * delta_d - separation, 0.0) ** 2, 0.0)
    push = jnp.sum(push_per_pair) / jnp.maximum(num_present * (num_present - 1), 1)
    regulariser = jnp.sum(jnp.where(present, _common.safe_norm(means), 0.0)) / jnp.maximum(num_present, 1)
    return alpha * pull + beta * push + gamma * regulariser

  return _common.reduce_masked(jax.vmap(per_image)(labels, embeddings), None, reduction)

