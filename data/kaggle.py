"""What Kaggle's segmentation competitions share: the run-length codec, the CSV, the split and the Grain stream.

Airbus Ship Detection (`data.airbus`) and the 2018 Data Science Bowl (`data.dsb2018`) store masks the
same way: a CSV with the columns `ImageId,EncodedPixels`, one row per object, where `EncodedPixels` is
a list of "start length" pairs over the pixels numbered from 1 in column-major order (down the first
column, then the next), so a mask of shape (H, W) is flattened in Fortran order. The widely copied
decoders that reshape row-major and transpose are right only for square images; here the order is
explicit, and the tests use non-square masks. A submission is the same CSV of the predicted objects,
with one row with an empty `EncodedPixels` for an image without any.

Everything is vectorised with NumPy: no Python loop over pixels or runs.

The training stream (`training_batches`) is a Grain `MapDataset` over a random-access source: shuffled by
a fixed seed and reshuffled each epoch, sharded by process before batching, so that the batch of a step
depends only on (seed, step, process) and a `grain.DatasetIterator` over it checkpoints and resumes
exactly.
"""

import collections
from collections.abc import Sequence
import csv
import os

import grain
import numpy as np

CSV_COLUMNS = ("ImageId", "EncodedPixels")


def rle_encode(mask: np.ndarray) -> str:
  """The Kaggle run-length encoding of a boolean `(H, W)` mask; "" for an empty mask.

  Examples:
    >>> import numpy as np
    >>> mask = np.array([[0, 1, 1], [0, 1, 0]], bool)  # H = 2, W = 3; column-major pixels 3, 4 and 5
    >>> rle_encode(mask)
    '3 3'
  """
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"`mask` must have shape (H, W), got {mask.shape}.")
  pixels = np.concatenate([[False], mask.astype(bool).reshape(-1, order="F"), [False]])
  edges = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1  # 1-based: where runs start, and one past their ends.
  starts, ends = edges[0::2], edges[1::2]
  return " ".join(np.stack([starts, ends - starts], axis=1).reshape(-1).astype(str))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
  """The boolean `(H, W)` mask of a Kaggle run-length encoding ("" or whitespace: an empty mask).

  Raises:
    ValueError: naming what is wrong: a token that is not an integer, an odd number of values, a
      start below 1, a length below 1, a run past the last pixel, or runs that overlap.

  Examples:
    >>> rle_decode("3 3", (2, 3)).astype(int)
    array([[0, 1, 1],
           [0, 1, 0]])
  """
  height, width = shape
  size = height * width
  tokens = rle.split() if isinstance(rle, str) else []
  if not tokens:
    return np.zeros(shape, bool)
  try:
    values = np.array(tokens, dtype=np.int64)
  except ValueError:
    raise ValueError(f"Run-length encoding has a token that is not an integer: {rle[:60]!r}.") from None
  if values.size % 2:
    raise ValueError(f"Run-length encoding has an odd number of values ({values.size}); it must be "
                     "'start length' pairs.")
  starts, lengths = values[0::2], values[1::2]
  if (starts < 1).any():
    raise ValueError(f"Run-length encoding has a start below 1 ({starts.min()}); pixels are numbered from 1.")
  if (lengths < 1).any():
    raise ValueError(f"Run-length encoding has a length below 1 ({lengths.min()}).")
  if (starts - 1 + lengths > size).any():
    raise ValueError(f"Run-length encoding has a run past the last pixel {size} of a {height}×{width} image "
                     f"(a run ends at {(starts - 1 + lengths).max()}).")
  # +1 where a run starts and −1 one past its end: the running sum counts the runs covering each pixel.
  coverage = np.zeros(size + 1, np.int64)
  np.add.at(coverage, starts - 1, 1)
  np.add.at(coverage, starts - 1 + lengths, -1)
  coverage = np.cumsum(coverage[:-1])
  if (coverage > 1).any():
    raise ValueError("Run-length encoding has overlapping runs.")
  return coverage.astype(bool).reshape(shape, order="F")


def read_segmentations(csv_path: str) -> dict[str, list[str]]:
  """`{image id: [the EncodedPixels of each object, in row order]}` from a Kaggle CSV; [] for an image without any.

  Raises:
    FileNotFoundError: for a missing file.
    ValueError: for a file without the columns `ImageId,EncodedPixels`.
  """
  if not os.path.isfile(csv_path):
    raise FileNotFoundError(f"No segmentation CSV at {csv_path}.")
  objects = collections.OrderedDict()
  with open(csv_path, newline="", encoding="utf-8") as file:
    reader = csv.DictReader(file)
    if reader.fieldnames is None or not set(CSV_COLUMNS) <= set(reader.fieldnames):
      raise ValueError(f"{csv_path} must have the columns {','.join(CSV_COLUMNS)}, got {reader.fieldnames}.")
    for row in reader:
      encoded = (row["EncodedPixels"] or "").strip()
      objects.setdefault(row["ImageId"], [])
      if encoded:
        objects[row["ImageId"]].append(encoded)
  return dict(objects)


def submission_rows(image_id: str, labels: np.ndarray) -> list[tuple[str, str]]:
  """Kaggle submission rows `(ImageId, EncodedPixels)` of a predicted `(H, W)` label map.

  One row per instance (any ids > 0, in increasing order; the masks of a label map never overlap), or
  one row with an empty encoding for an image without instances.
  """
  labels = np.asarray(labels)
  ids = np.unique(labels[labels > 0])
  if ids.size == 0:
    return [(image_id, "")]
  return [(image_id, rle_encode(labels == instance)) for instance in ids]


def split_image_ids(image_ids: Sequence[str], *, validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
  """`(train ids, validation ids)`: a permutation of the sorted ids by `seed`, the first fraction held out.

  The split depends only on the set of ids and the seed, not on the order of the CSV's rows.

  Examples:
    >>> train, validation = split_image_ids([f"{i}.jpg" for i in range(10)], validation_fraction=0.2, seed=0)
    >>> len(train), len(validation), sorted(train + validation) == sorted(f"{i}.jpg" for i in range(10))
    (8, 2, True)
  """
  if not 0.0 < validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}.")
  ids = sorted(image_ids)
  order = np.random.default_rng(seed).permutation(len(ids))
  num_validation = max(1, round(validation_fraction * len(ids)))
  return [ids[i] for i in order[num_validation:]], [ids[i] for i in order[:num_validation]]


def _random_crop(size: int):
  """A Grain random map to a `size`×`size` crop with its instances renumbered 1…n (so that a crop of an image
  with many objects fits a loss's `max_instances`), the element first padded with zeros at its bottom and
  right where a side is shorter (zero labels: background)."""
  def crop(element: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    height, width = element["labels"].shape
    if height < size or width < size:
      element = {name: np.pad(value, [(0, max(0, size - height)), (0, max(0, size - width))] +
                              [(0, 0)] * (value.ndim - 2)) for name, value in element.items()}
      height, width = max(height, size), max(width, size)
    top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
    cropped = {name: value[top:top + size, left:left + size] for name, value in element.items()}
    ids, compact = np.unique(cropped["labels"], return_inverse=True)
    cropped["labels"] = (compact.reshape(size, size) + (ids[0] != 0)).astype(cropped["labels"].dtype)
    return cropped
  return crop


def training_batches(source, *, seed: int, batch_size: int, process_index: int = 0, process_count: int = 1,
                     crop_size: int = 0) -> grain.MapDataset:
  """The infinite stream of this process's training batches over `source`, as a Grain `MapDataset`.

  Each process takes every `process_count`-th element of `source` (from `process_index`), shuffles its
  share by `seed` (a new order each epoch), optionally takes a random `crop_size` crop of each element
  (padded with zeros where it is smaller, its instances renumbered 1…n; seeded per element, so it is the
  same on every read), and batches `batch_size` elements, dropping none: the stream repeats. Element
  `step` of the result is the batch of that step, so the stream is a pure function of (seed, step,
  process); `.to_iter_dataset()` gives the iterator that checkpoints.

  Examples:
    >>> source = [{"x": np.array(i)} for i in range(5)]
    >>> batches = training_batches(source, seed=0, batch_size=2)
    >>> again = training_batches(source, seed=0, batch_size=2)
    >>> all((batches[step]["x"] == again[step]["x"]).all() for step in range(6))  # the same at every step
    True
    >>> iterator = iter(batches.to_iter_dataset())
    >>> bool((next(iterator)["x"] == batches[0]["x"]).all())
    True
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}.")
  dataset = grain.MapDataset.source(source)[process_index::process_count]
  if len(dataset) == 0:
    raise ValueError(f"Process {process_index} of {process_count} has no training images.")
  dataset = dataset.seed(seed).shuffle().repeat()
  if crop_size:
    dataset = dataset.random_map(_random_crop(crop_size))
  return dataset.batch(batch_size, drop_remainder=True)
