"""Kaggle's Airbus Ship Detection format: run-length encoded masks and the segmentation CSV.

The layout is `train_v2/*.jpg` (768×768 RGB) and `train_ship_segmentations_v2.csv` with the columns
`ImageId,EncodedPixels`: one row per ship, and one row with an empty `EncodedPixels` for an image
without ships. `EncodedPixels` is a list of "start length" pairs over the pixels numbered from 1 in
column-major order (down the first column, then the next), so a mask of shape (H, W) is flattened in
Fortran order. The widely copied decoders that reshape row-major and transpose are right only for
square images; here the order is explicit, and the tests use non-square masks.

Everything is vectorised with NumPy: no Python loop over pixels or runs.
"""

import collections
import csv
import os

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
