"""Kaggle's Airbus Ship Detection layout: the ships' label maps, the image checks and the Grain source.

The layout is `train_v2/*.jpg` (768×768 RGB) and `train_ship_segmentations_v2.csv` with the columns
`ImageId,EncodedPixels`: one row per ship, and one row with an empty `EncodedPixels` for an image
without ships. The run-length codec, the CSV reader, the split and the training stream are Kaggle's
(`data.kaggle`), shared with the 2018 Data Science Bowl.
"""

from collections.abc import Sequence
import concurrent.futures
import os

import numpy as np
from PIL import Image

from data import kaggle

TRAIN_IMAGES = "train_v2"
SEGMENTATIONS_CSV = "train_ship_segmentations_v2.csv"
IMAGE_SHAPE = (768, 768)  # Every Airbus image; Kaggle scores the masks at this size.


def instance_labels(rles: list[str], shape: tuple[int, int], image_id: str = "") -> np.ndarray:
  """The int32 `(H, W)` instance label map of one image's ships: 0 background, ship k (in CSV order) is k.

  Raises:
    ValueError: if two ships' masks overlap (Kaggle's segments never do), naming the image; or for a
      malformed encoding, naming the image and the ship.
  """
  labels = np.zeros(shape, np.int32)
  for ship, rle in enumerate(rles, start=1):
    try:
      mask = kaggle.rle_decode(rle, shape)
    except ValueError as error:
      raise ValueError(f"Image {image_id!r}, ship {ship}: {error}") from None
    if (labels[mask] != 0).any():
      raise ValueError(f"Image {image_id!r}: the mask of ship {ship} overlaps ship {labels[mask].max()}.")
    labels[mask] = ship
  return labels


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
  segmentations = kaggle.read_segmentations(os.path.join(data_dir, SEGMENTATIONS_CSV))
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
