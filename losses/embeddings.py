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
  num_segments = max_instances + 1

  def per_image(ids, psi):
    ids, psi, valid, counts, means = _common.image_instances(ids, psi, background, max_instances)
    distances = jnp.where(valid, _common.safe_norm(psi - means[ids]), 0.0)
    mean_distance = jax.ops.segment_sum(distances, ids, num_segments) / jnp.maximum(counts, 1.0)
    return jnp.sum(mean_distance)

  return _common.reduce_masked(jax.vmap(per_image)(labels, embeddings), None, reduction)



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

