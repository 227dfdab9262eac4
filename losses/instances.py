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
segment sums.

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
