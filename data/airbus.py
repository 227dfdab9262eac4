"""Kaggle's Airbus Ship Detection format: run-length encoded masks and the segmentation CSV.

The layout is `train_v2/*.jpg` (768×768 RGB) and `train_ship_segmentations_v2.csv` with the columns
`ImageId,EncodedPixels`: one row per ship, and one row with an empty `EncodedPixels` for an image
without ships. `EncodedPixels` is a list of "start length" pairs over the pixels numbered from 1 in
column-major order (down the first column, then the next), so a mask of shape (H, W) is flattened in
Fortran order. The widely copied decoders that reshape row-major and transpose are right only for
square images; here the order is explicit, and the tests use non-square masks.

Everything is vectorised with NumPy: no Python loop over pixels or runs.

The training stream is a Grain `MapDataset` over `AirbusShips` (`training_batches`): shuffled by a
fixed seed and reshuffled each epoch, sharded by process before batching, so that the batch of a step
depends only on (seed, step, process) and a `grain.DatasetIterator` over it checkpoints and resumes
exactly.
"""

import collections
from collections.abc import Sequence
import concurrent.futures
import csv
import os

import grain
import numpy as np
from PIL import Image

CSV_COLUMNS = ("ImageId", "EncodedPixels")
TRAIN_IMAGES = "train_v2"
SEGMENTATIONS_CSV = "train_ship_segmentations_v2.csv"
IMAGE_SHAPE = (768, 768)  # Every Airbus image; Kaggle scores the masks at this size.


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
  """`{image id: [the EncodedPixels of each ship]}` from a Kaggle segmentation CSV; [] for an image without ships.

  Raises:
    FileNotFoundError: for a missing file.
    ValueError: for a file without the columns `ImageId,EncodedPixels`.
  """
  if not os.path.isfile(csv_path):
    raise FileNotFoundError(f"No segmentation CSV at {csv_path}.")
  ships = collections.OrderedDict()
  with open(csv_path, newline="", encoding="utf-8") as file:
    reader = csv.DictReader(file)
    if reader.fieldnames is None or not set(CSV_COLUMNS) <= set(reader.fieldnames):
      raise ValueError(f"{csv_path} must have the columns {','.join(CSV_COLUMNS)}, got {reader.fieldnames}.")
    for row in reader:
      encoded = (row["EncodedPixels"] or "").strip()
      ships.setdefault(row["ImageId"], [])
      if encoded:
        ships[row["ImageId"]].append(encoded)
  return dict(ships)


def instance_labels(rles: list[str], shape: tuple[int, int], image_id: str = "") -> np.ndarray:
  """The int32 `(H, W)` instance label map of one image's ships: 0 background, ship k (in CSV order) is k.

  Raises:
    ValueError: if two ships' masks overlap (Kaggle's segments never do), naming the image; or for a
      malformed encoding, naming the image and the ship.
  """
  labels = np.zeros(shape, np.int32)
  for ship, rle in enumerate(rles, start=1):
    try:
      mask = rle_decode(rle, shape)
    except ValueError as error:
      raise ValueError(f"Image {image_id!r}, ship {ship}: {error}") from None
    if (labels[mask] != 0).any():
      raise ValueError(f"Image {image_id!r}: the mask of ship {ship} overlaps ship {labels[mask].max()}.")
    labels[mask] = ship
  return labels


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


def read_layout(data_dir: str) -> dict[str, list[str]]:
  """The segmentations of a directory in Kaggle's layout, after checking that every image is there.

  Raises:
    FileNotFoundError: in one line, for a missing directory, a missing CSV, or images named in the CSV
      but absent from `train_v2/` (the first few and how many).
    ValueError: for a CSV without the columns `ImageId,EncodedPixels`.
  """
  images = os.path.join(data_dir, TRAIN_IMAGES)
  for path in (data_dir, images):
    if not os.path.isdir(path):
      raise FileNotFoundError(
          f"No directory {path}; the Kaggle layout is {TRAIN_IMAGES}/*.jpg and {SEGMENTATIONS_CSV}.")
  segmentations = read_segmentations(os.path.join(data_dir, SEGMENTATIONS_CSV))
  missing = sorted(set(segmentations) - set(os.listdir(images)))
  if missing:
    raise FileNotFoundError(f"{len(missing)} images named in {SEGMENTATIONS_CSV} are not in {images}: "
                            f"{', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}.")
  return segmentations


def _check_decodes(path: str) -> str | None:
  """None if the JPEG at `path` decodes, else why not (decoded at 1/8 scale: the whole stream, cheaply)."""
  try:
    with Image.open(path) as image:
      image.draft("RGB", (image.width // 8, image.height // 8))
      image.load()
  except (OSError, SyntaxError, ValueError) as error:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'cannot decode'}"
  return None


def check_images(paths: Sequence[str], *, num_threads: int = 8) -> None:
  """Decodes every JPEG in `paths` once, so that a damaged file stops a run before training starts.

  Raises:
    ValueError: in one line, naming the first unreadable image and how many there are.
  """
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:  # Pillow decodes without the GIL.
    problems = [(path, problem) for path, problem in zip(paths, pool.map(_check_decodes, paths)) if problem]
  if problems:
    path, problem = problems[0]
    raise ValueError(f"{len(problems)} unreadable image{'s' if len(problems) > 1 else ''}, the first {path} "
                     f"({problem}).")


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


def load_image(path: str, size: int) -> np.ndarray:
  """The RGB image at `path` as float32 `(size, size, 3)` in [0, 1], resized with Pillow's bilinear filter."""
  with Image.open(path) as image:
    image = image.convert("RGB")
    if image.size != (size, size):
      image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, np.float32) / 255.0


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """An int32 label map resized to `shape` by nearest neighbour (ids are never blended).

  Examples:
    >>> resize_labels(np.array([[0, 1], [2, 0]]), (4, 4))
    array([[0, 0, 1, 1],
           [0, 0, 1, 1],
           [2, 2, 0, 0],
           [2, 2, 0, 0]], dtype=int32)
  """
  labels = np.asarray(labels, np.int32)
  rows = (np.arange(shape[0]) * labels.shape[0]) // shape[0]
  columns = (np.arange(shape[1]) * labels.shape[1]) // shape[1]
  return labels[rows[:, None], columns[None, :]]


class AirbusShips:
  """A Grain random-access source of Airbus images and their ship instance labels, resized to a model's size.

  Element `i` is `{"image": (size, size, 3) float32 in [0, 1], "labels": (size, size) int32}` of
  `image_ids[i]`: 0 sea, ship k of the image (in CSV order) is k. Ships that the resize shrinks below a
  pixel disappear from the labels, as they would from the model's view.
  """

  def __init__(self, image_dir: str, segmentations: dict[str, list[str]], image_ids: Sequence[str], *, size: int):
    self._image_dir, self._segmentations, self._ids, self._size = image_dir, segmentations, list(image_ids), size

  def __len__(self) -> int:
    return len(self._ids)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    image_id = self._ids[index]
    labels = instance_labels(self._segmentations[image_id], IMAGE_SHAPE, image_id)
    return {"image": load_image(os.path.join(self._image_dir, image_id), self._size),
            "labels": resize_labels(labels, (self._size, self._size))}

  def __repr__(self) -> str:  # Grain names the source in its logs and errors.
    return f"AirbusShips({self._image_dir!r}, {len(self._ids)} images, size={self._size})"


def _random_crop(size: int):
  def crop(element: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    height, width = element["labels"].shape
    top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
    return {name: value[top:top + size, left:left + size] for name, value in element.items()}
  return crop


def training_batches(source, *, seed: int, batch_size: int, process_index: int = 0, process_count: int = 1,
                     crop_size: int = 0) -> grain.MapDataset:
  """The infinite stream of this process's training batches over `source`, as a Grain `MapDataset`.

  Each process takes every `process_count`-th element of `source` (from `process_index`), shuffles its
  share by `seed` (a new order each epoch), optionally takes a random `crop_size` crop of each element
  (seeded per element, so it is the same on every read), and batches `batch_size` elements, dropping none:
  the stream repeats. Element `step` of the result is the batch of that step, so the stream is a pure
  function of (seed, step, process); `.to_iter_dataset()` gives the iterator that checkpoints.

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
