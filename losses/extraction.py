"""Semi-convolutional operators and instance extraction: from embeddings and seed maps to instance labels.

`semi_convolution` is Ψ_u = Φ_u + s·(x_u, y_u) on the first
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

    def propose(seed, free, clustered):
      near_seed = free & (jnp.sum((psi - psi[seed]) ** 2, axis=-1) <= distance ** 2)
      centre = jnp.sum(jnp.where(near_seed[:, None], psi, 0.0), axis=0) / jnp.maximum(jnp.sum(near_seed), 1)
      members = free & (jnp.sum((psi - centre) ** 2, axis=-1) <= distance ** 2)
      return members, jnp.any(free), clustered | members

    labels = _grow_from_seeds(probability, probability > foreground_threshold, propose, max_instances, max_instances)
    return labels.reshape(foreground.shape[1:])

  return jax.vmap(per_image)(foreground, embeddings)


def extract_kernel_instances(
    foreground: ArrayLike, embeddings: ArrayLike, *, sigma: ArrayLike, max_instances: int,
    kernel: str = "laplacian", foreground_threshold: float = 0.5, min_pixels: int = 1) -> jax.Array:
  """Instances read out around seeds through the learned steered kernel (Novotny et al.): no radius to tune.

  The inference of `semi_conv_kernel_loss`, which trains the kernel map K_σ(Ψ_s, Ψ_u) of a seed s to be
  its instance's mask: an instance is the 0.5 level set of its seed's kernel map. The foreground is the
  pixels with probability > `foreground_threshold`. Each round takes the unclustered foreground pixel of
  highest foreground probability as the seed s and proposes the unclustered foreground pixels u with
  K_σ(Ψ_s, Ψ_u) > 0.5 (a_su < ln 2, see `semi_conv_kernel_loss`; the seed is always one); the proposal
  becomes a new instance if it has at least `min_pixels` pixels, and its pixels are clustered either
  way. Rounds after the foreground is used up do nothing. A fixed number of `lax.fori_loop` rounds, no
  host round trip; the loop is the one of `extract_instances` and `extract_spatial_instances`.

  Args:
    foreground: `(B, H, W)` float foreground probabilities.
    embeddings: `(B, H, W, C)` float embeddings Ψ, C ≥ 1.
    sigma: the kernel width σ > 0 the loss learned, a scalar (it may be traced).
    max_instances: static number of rounds (≥ 0), the most instances per image.
    kernel: "laplacian" or "gaussian", as trained.
    foreground_threshold: probability above which a pixel is foreground.
    min_pixels: static smallest instance kept (≥ 1).

  Returns:
    `(B, H, W)` int32 labels: 0 background, 1…`max_instances` instances in the order found; all 0 for
    images without pixels (H·W = 0), empty for B = 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> foreground = jnp.array([[[0.9, 0.8, 0.1, 0.7, 0.95]]])
    >>> embeddings = jnp.array([[[[0.0], [0.5], [0.0], [9.0], [9.2]]]])
    >>> print(losses.extract_kernel_instances(foreground, embeddings, sigma=1.0, max_instances=4))  # ln 2 ≈ 0.69
    [[[2 2 0 1 1]]]
  """
  foreground = _common.check_rank(_common.as_float(foreground, "foreground"), "foreground", 3, "(B, H, W)")
  embeddings = _common.check_embeddings(embeddings, "embeddings", foreground, "foreground")
  max_instances = _common.check_int(max_instances, "max_instances", minimum=0)
  min_pixels = _common.check_int(min_pixels, "min_pixels", minimum=1)
  kernel = _common.check_kernel(kernel)
  _common.check_number(sigma, "sigma", minimum=0.0, strict=True)
  _common.check_number(foreground_threshold, "foreground_threshold")
  if foreground.shape[1] * foreground.shape[2] == 0:
    return jnp.zeros(foreground.shape, jnp.int32)
  dtype = jnp.result_type(embeddings, sigma)

  def per_image(probability, psi):
    probability, psi = probability.reshape(-1), psi.reshape(-1, psi.shape[-1]).astype(dtype)

    def propose(seed, free, clustered):
      proposal = free & (_common.kernel_exponent(psi, psi[seed], sigma, kernel) < np.log(2.0))
      return proposal, jnp.sum(proposal) >= min_pixels, clustered | proposal

    labels = _grow_from_seeds(probability, probability > foreground_threshold, propose, max_instances, max_instances)
    return labels.reshape(foreground.shape[1:])

  return jax.vmap(per_image)(foreground, embeddings)


def _grow_from_seeds(score, is_foreground, propose, num_rounds: int, max_instances: int) -> jax.Array:
  """The greedy loop of the extractions: `(N,)` int32 labels after `num_rounds` `lax.fori_loop` rounds.

  Each round takes the foreground pixel not yet clustered with the highest `score` as the seed and calls
  `propose(seed, free, clustered) -> (proposal, accepted, clustered after)`, with `free` the foreground
  pixels not yet clustered; an accepted proposal (at most `max_instances` of them) labels its pixels not
  yet in an instance with the next id (1, 2, …).
  """
  def round_(_, carry):
    labels, clustered, found = carry
    free = is_foreground & ~clustered
    seed = jnp.argmax(jnp.where(free, score, -jnp.inf))
    proposal, accepted, clustered = propose(seed, free, clustered)
    accepted = accepted & (found < max_instances)
    labels = jnp.where(accepted & proposal & (labels == 0), found + 1, labels)
    return labels, clustered, found + accepted.astype(jnp.int32)

  start = (jnp.zeros(score.shape, jnp.int32), jnp.zeros(score.shape, bool), jnp.zeros((), jnp.int32))
  return jax.lax.fori_loop(0, num_rounds, round_, start)[0]


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
  sigmas = _common.check_sigmas(sigmas, embeddings)
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

    def propose(centre, free, clustered):
      active = (jnp.sum(free) >= min_pixels) & (score[centre] >= seed_threshold)
      clustered = clustered | (active & (jnp.arange(score.size) == centre))  # The seed, before counting.
      proposal = is_foreground & (_common.gaussian(psi, psi[centre], sigma[centre]) > 0.5) & active
      size = jnp.sum(proposal)
      accepted = (size >= min_pixels) & (2 * jnp.sum(proposal & ~clustered) > size)
      return proposal, accepted, clustered | proposal

    labels = _grow_from_seeds(score, is_foreground, propose, max_rounds, max_instances)
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
