"""Multi-Fashion and Multi-MNIST: two items of different classes on one canvas, two classification tasks.

Lin et al., "Pareto Multi-Task Learning" (NeurIPS 2019), §6.1, build their MultiMNIST, Multi-Fashion and
Multi-(Fashion+MNIST) benchmarks after Sabour et al. (2017): two images of different classes from the
same split, one at the top-left and one at the bottom-right of a 36×36 canvas, each shifted by up to 4
pixels, 120,000 training and 20,000 test images; the tasks are the class of the top-left item and the
class of the bottom-right one. Their construction script is not published (their repository ships the
pickles), so the details here are ours:

* canvas: the item's side + 2 × 4 (36 for 28×28 items); the top-left item's corner is at (r, c), the
  bottom-right item's at (8 − r′, 8 − c′), with r, c, r′, c′ drawn uniformly from 0…4, so each item
  moves up to 4 pixels towards the centre from its corner and stays whole on the canvas. Where the two
  overlap, the brighter pixel wins (maximum).
* pairs: the top-left items are the split's images in a random order, each used equally often (twice
  for 120,000 from Fashion-MNIST's 60,000); each bottom-right item is drawn from a uniformly chosen
  other class, then uniformly within that class.
* determinism: the table of pairs and shifts of a split is a function of (seed, split), drawn with
  NumPy's PCG64; an image is a function of that table and its index.

The canvases are not stored: a run holds the source images (uint8, 47 MB for Fashion-MNIST's training
set) and the table (6 integers per image), and builds each batch's canvases from them, vectorised over
the batch. Given MNIST's four IDX files, the same code builds Multi-MNIST.

The IDX reader (LeCun's format: a big-endian header of a magic number, the dimension sizes, then the
unsigned bytes) reads the four files of Fashion-MNIST or MNIST, gzipped or not.
"""

from collections.abc import Iterator
import gzip
import os
from typing import NamedTuple

import grain
import numpy as np

from data import kaggle

# (images, labels) of each split, as Zalando and LeCun name them; each may end in ".gz".
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# 0x00000803 and 0x00000801: unsigned bytes in 3 dimensions (N, H, W) and in 1 (N,).
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
NUM_CLASSES = 10
MAX_SHIFT = 4
NUM_EXAMPLES = {"train": 120_000, "test": 20_000}


def idx_path(directory: str, name: str) -> str:
  """`directory/name.gz` or `directory/name`, whichever exists (the gzipped one first)."""
  for path in (os.path.join(directory, name + ".gz"), os.path.join(directory, name)):
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"No IDX file {name}.gz or {name} in {directory}.")


def read_idx(path: str, *, magic: int) -> np.ndarray:
  """The uint8 array of an IDX file (gzipped if its name ends in ".gz") whose magic number is `magic`.

  Raises:
    ValueError: one line naming the file: a file that does not decompress, a header that is cut short, a
      magic number other than `magic`, or a size other than the header's dimensions.

  Examples:
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> with open(path, "wb") as file:
    ...   _ = file.write(LABELS_MAGIC.to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([7, 0, 9]))
    >>> read_idx(path, magic=LABELS_MAGIC)
    array([7, 0, 9], dtype=uint8)
  """
  name = os.path.basename(path)
  try:
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as file:
      content = file.read()
  except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError; a truncated stream an EOFError.
    raise ValueError(f"{name} is not a readable {'gzip ' if path.endswith('.gz') else ''}file "
                     f"({type(error).__name__}: {error}).") from None
  ndim = magic & 0xFF
  header_size = 4 * (1 + ndim)
  if len(content) < 4 or int.from_bytes(content[:4], "big") != magic:
    found = f"0x{int.from_bytes(content[:4], 'big'):08x}" if len(content) >= 4 else "none"
    raise ValueError(f"{name} has the magic number {found}, not 0x{magic:08x} (unsigned bytes in {ndim} "
                     "dimensions): it is not this IDX file.")
  if len(content) < header_size:
    raise ValueError(f"{name} ends inside its header ({len(content)} bytes, the header has {header_size}).")
  shape = tuple(int.from_bytes(content[4 * i:4 * i + 4], "big") for i in range(1, ndim + 1))
  data = np.frombuffer(content, np.uint8, offset=header_size)
  if data.size != np.prod(shape):
    raise ValueError(f"{name} has {data.size} bytes after its header, but its header's shape "
                     f"{'×'.join(map(str, shape))} needs {np.prod(shape)}.")
  return data.reshape(shape)


def read_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """`(images (N, H, W) uint8, labels (N,) uint8)` of "train" or "test" from the IDX files in `directory`.

  Raises:
    FileNotFoundError: for a missing file.
    ValueError: one line naming the file, for an unreadable file (`read_idx`), images that are not
      square, labels outside 0…9, or images and labels of different counts.
  """
  image_name, label_name = IDX_FILES[split]
  image_path, label_path = idx_path(directory, image_name), idx_path(directory, label_name)
  images, labels = read_idx(image_path, magic=IMAGES_MAGIC), read_idx(label_path, magic=LABELS_MAGIC)
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"{os.path.basename(image_path)} has images of {images.shape[1]}×{images.shape[2]}; "
                     "the items must be square.")
  if len(images) != len(labels):
    raise ValueError(f"{os.path.basename(image_path)} has {len(images)} images but "
                     f"{os.path.basename(label_path)} has {len(labels)} labels.")
  if labels.size and labels.max() >= NUM_CLASSES:
    raise ValueError(f"{os.path.basename(label_path)} has the label {labels.max()}; labels must be in "
                     f"0…{NUM_CLASSES - 1}.")
  return images, labels


class Pairs(NamedTuple):
  """Which items each canvas of a split shows and where.

  Attributes:
    items: `(N, 2)` int32 indices into the split's images: the top-left item, then the bottom-right one.
    corners: `(N, 2, 2)` int32 (row, column) on the canvas of each item's top-left pixel.
  """

  items: np.ndarray
  corners: np.ndarray


def pair_items(labels: np.ndarray, num: int, *, seed: int | tuple[int, ...]) -> Pairs:
  """The `num` canvases' pairs of items of different classes and their shifts (see the module docstring).

  Examples:
    >>> labels = np.array([0, 0, 1, 2])
    >>> pairs = pair_items(labels, 8, seed=0)
    >>> bool((labels[pairs.items[:, 0]] != labels[pairs.items[:, 1]]).all())
    True
    >>> np.bincount(pairs.items[:, 0]).tolist()  # Each image is a top-left item equally often.
    [2, 2, 2, 2]
  """
  classes, class_of = np.unique(labels, return_inverse=True)
  if len(classes) < 2:
    raise ValueError(f"Pairs of different classes need at least two classes, got {classes.tolist()}.")
  rng = np.random.default_rng(seed)
  top_left = rng.permutation(np.resize(np.arange(len(labels)), num))
  # Another class, uniformly: the top-left item's class plus 1 … K − 1 (mod K).
  other = (class_of[top_left] + rng.integers(1, len(classes), num)) % len(classes)
  by_class = np.argsort(class_of, kind="stable")
  counts = np.bincount(class_of, minlength=len(classes))
  starts = np.cumsum(counts) - counts
  bottom_right = by_class[starts[other] + (rng.random(num) * counts[other]).astype(np.int64)]
  shifts = rng.integers(0, MAX_SHIFT + 1, (num, 2, 2))
  corners = np.stack([shifts[:, 0], 2 * MAX_SHIFT - shifts[:, 1]], axis=1)
  return Pairs(items=np.stack([top_left, bottom_right], axis=1).astype(np.int32), corners=corners.astype(np.int32))


def compose(images: np.ndarray, items: np.ndarray, corners: np.ndarray) -> np.ndarray:
  """`(B, S, S)` canvases of side S = the items' side + 2 × MAX_SHIFT: each row of `items` (B, 2) placed
  at its `corners` (B, 2, 2), overlapping pixels combined by maximum; the dtype of `images`.

  Examples:
    >>> square = np.full((1, 2, 2), 5, np.uint8)
    >>> compose(square, np.array([[0, 0]]), np.array([[[0, 0], [1, 1]]]))[0, :4, :4]
    array([[5, 5, 0, 0],
           [5, 5, 5, 0],
           [0, 5, 5, 0],
           [0, 0, 0, 0]], dtype=uint8)
  """
  batch, side = len(items), images.shape[1]
  size = side + 2 * MAX_SHIFT
  layers = np.zeros((batch, 2, size, size), images.dtype)
  rows = corners[:, :, 0, None] + np.arange(side)  # (B, 2, side)
  cols = corners[:, :, 1, None] + np.arange(side)
  layers[np.arange(batch)[:, None, None, None], np.arange(2)[None, :, None, None],
         rows[:, :, :, None], cols[:, :, None, :]] = images[items]
  return layers.max(axis=1)


class MultiItems:
  """One split of Multi-Fashion (or Multi-MNIST): its source images and its table of pairs.

  `batch(indices)` builds those canvases: `{"image": (B, S, S, 1) float32 in [0, 1], "labels": (B, 2)
  int32}`, the labels being (top-left class, bottom-right class).
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, pairs: Pairs):
    self.images, self.labels, self.pairs = images, labels, pairs

  def __len__(self) -> int:
    return len(self.pairs.items)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """`(S, S, 1)` of the canvases: the items' side + 2 × MAX_SHIFT."""
    side = self.images.shape[1] + 2 * MAX_SHIFT
    return side, side, 1

  def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    items = self.pairs.items[indices]
    canvases = compose(self.images, items, self.pairs.corners[indices])
    return {"image": (canvases[..., None] / np.float32(255)).astype(np.float32),
            "labels": self.labels[items].astype(np.int32)}


def load(directory: str, *, seed: int, num_examples: dict[str, int] | None = None) -> dict[str, MultiItems]:
  """`{"train": ..., "test": ...}` built from the IDX files in `directory`, `num_examples` canvases each
  (default 120,000 and 20,000), the pairs of each split drawn from (seed, split)."""
  num_examples = num_examples or NUM_EXAMPLES
  splits = {}
  for split_index, split in enumerate(IDX_FILES):
    images, labels = read_split(directory, split)
    splits[split] = MultiItems(images, labels, pair_items(labels, num_examples[split], seed=(seed, split_index)))
  return splits


def training_batches(split: MultiItems, *, seed: int, batch_size: int, process_index: int = 0,
                     process_count: int = 1) -> grain.MapDataset:
  """The infinite stream of this process's training batches, as `data.kaggle.training_batches` shuffles,
  shards and batches the canvases' indices (a pure function of (seed, step, process)), each batch's
  canvases built after batching."""
  indices = kaggle.training_batches(range(len(split)), seed=seed, batch_size=batch_size,
                                    process_index=process_index, process_count=process_count)
  return indices.map(split.batch)


def training_iterator(split: MultiItems, *, seed: int, batch_size: int, process_index: int = 0,
                      process_count: int = 1) -> grain.DatasetIterator:
  """The checkpointable iterator over `training_batches`, two threads building the next two batches while
  a step runs (Grain's defaults, 16 threads and 500 batches ahead, would hold 650 MB of canvases)."""
  batches = training_batches(split, seed=seed, batch_size=batch_size, process_index=process_index,
                             process_count=process_count)
  return iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)))


def evaluation_batches(split: MultiItems, batch_size: int, num: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """The first `num` (default: all) canvases of `split` in order, in batches of `batch_size` (the last
  one shorter where `batch_size` does not divide `num`)."""
  num = len(split) if num is None else min(num, len(split))
  for start in range(0, num, batch_size):
    yield split.batch(np.arange(start, min(start + batch_size, num)))
