"""Kaggle's 2018 Data Science Bowl (nuclei, BBBC038v1) in Kaggle's layout: reader, modalities, split, Grain source.

The layout is `stage1_train/<ImageId>/images/<ImageId>.png` (an RGBA PNG whose colour channels are equal
for grey images) and `stage1_train/<ImageId>/masks/*.png` (one binary 8-bit PNG per nucleus, of the
image's size); Kaggle's `stage1_train_labels.csv` holds the same masks run-length encoded as in every
Kaggle segmentation CSV (`data.kaggle`).

Instance label maps: nucleus k (k = 1…n) is the k-th mask in the order of the mask file names (of the
CSV's rows for the CSV). Masks of one image may share pixels (9 pixels in 6 images of the stage 1 set);
such a pixel belongs to the smaller of the nuclei that claim it (the first in that order among equal
sizes), which takes the fewest pixels from either. The shared pixels are counted and logged. A nucleus
left without pixels (an empty mask, or one covered by smaller ones) gets no id: the ids stay 1…n.

Modalities (`modality`), from the pixels: "fluorescence" for grey images (equal colour channels) whose
median is below half the range (white nuclei on black), "brightfield" for the other grey images (dark
nuclei on light), "colour" for the rest (tissue stains). The default split follows StarDist (Schmidt et
al., MICCAI 2018): the fluorescence images only, with a seeded 10% held out for test by image id.
The held-out ids of the stage 1 training set are committed in `data/dsb2018_test_ids.txt`; regenerate
them with

    python -m data.dsb2018 --data_dir=../shared/data/dsb2018 --test_ids=data/dsb2018_test_ids.txt

which also prints the modality counts and times one decoding pass over the set.
"""

import collections
from collections.abc import Sequence
import concurrent.futures
import dataclasses
import os
import time

from absl import logging
import numpy as np
from PIL import Image

from data import kaggle

TRAIN_DIR = "stage1_train"
LABELS_CSV = "stage1_train_labels.csv"
MODALITIES = ("fluorescence", "brightfield", "colour")
LAYOUT = f"{TRAIN_DIR}/<ImageId>/images/<ImageId>.png and {TRAIN_DIR}/<ImageId>/masks/*.png"
# Image intensities mapped to [0, 1] between these percentiles (StarDist's normalisation), then clipped.
PERCENTILES = (1.0, 99.8)


def image_path(data_dir: str, image_id: str) -> str:
  return os.path.join(data_dir, TRAIN_DIR, image_id, "images", f"{image_id}.png")


def masks_dir(data_dir: str, image_id: str) -> str:
  return os.path.join(data_dir, TRAIN_DIR, image_id, "masks")


def list_images(data_dir: str) -> list[str]:
  """The sorted image ids in `data_dir/stage1_train`, after checking that each has its image and masks folder.

  Raises:
    FileNotFoundError: in one line, naming the missing directory, image file or masks folder.
  """
  train_dir = os.path.join(data_dir, TRAIN_DIR)
  for path in (data_dir, train_dir):
    if not os.path.isdir(path):
      raise FileNotFoundError(f"No directory {path}; the DSB2018 layout is {LAYOUT}.")
  image_ids = sorted(name for name in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, name)))
  if not image_ids:
    raise FileNotFoundError(f"No image folders in {train_dir}; the DSB2018 layout is {LAYOUT}.")
  for image_id in image_ids:
    if not os.path.isfile(image_path(data_dir, image_id)):
      raise FileNotFoundError(f"No image {image_path(data_dir, image_id)}; the DSB2018 layout is {LAYOUT}.")
    if not os.path.isdir(masks_dir(data_dir, image_id)):
      raise FileNotFoundError(f"No masks folder {masks_dir(data_dir, image_id)} for the image {image_id}.")
  return image_ids


def read_png(path: str, mode: str) -> np.ndarray:
  """The PNG at `path` converted to Pillow's `mode` ("RGB" or "L"), as uint8.

  Raises:
    ValueError: in one line, naming the file, for a file that does not decode.
  """
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert(mode))
  except (OSError, SyntaxError, ValueError) as error:
    reason = str(error).splitlines()[0] if str(error) else "cannot decode"
    raise ValueError(f"Unreadable PNG {path} ({type(error).__name__}: {reason}).") from None


def modality(image: np.ndarray) -> str:
  """"fluorescence", "brightfield" or "colour" of a uint8 `(H, W, 3)` RGB image (see the module's docstring).

  Examples:
    >>> dark = np.zeros((4, 4, 3), np.uint8)
    >>> modality(dark), modality(dark + 200), modality(dark + np.array([150, 90, 160], np.uint8))
    ('fluorescence', 'brightfield', 'colour')
  """
  grey = (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
  if not grey:
    return "colour"
  return "fluorescence" if np.median(image[..., 0]) < 128 else "brightfield"


def labels_from_masks(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, int]:
  """`(labels, shared pixels)`: the int32 `(H, W)` label map of boolean masks in order, and how many
  pixels two or more masks claim (each goes to the smallest claimant, see the module's docstring).

  Examples:
    >>> big, small = np.zeros((2, 3), bool), np.zeros((2, 3), bool)
    >>> big[:, :2], small[0, 1:] = True, True  # They share the pixel (0, 1).
    >>> labels, shared = labels_from_masks([big, small], (2, 3))
    >>> labels, shared
    (array([[1, 2, 2],
           [1, 1, 0]], dtype=int32), 1)
  """
  pixels = [np.flatnonzero(np.asarray(mask).reshape(-1)) for mask in masks]
  claims = np.zeros(shape[0] * shape[1], np.int32)
  for indices in pixels:
    claims[indices] += 1
  labels = np.zeros(shape[0] * shape[1], np.int32)
  # Painted largest first, so that a smaller nucleus overwrites a larger one; among equal sizes the
  # first in order is painted last.
  for k in sorted(range(len(pixels)), key=lambda k: (-pixels[k].size, -k)):
    labels[pixels[k]] = k + 1
  present = np.unique(labels)
  if present.size != len(pixels) + 1:  # A nucleus left without pixels: ids back to 1…n in order.
    labels = np.searchsorted(present, labels).astype(np.int32)
  return labels.reshape(shape), int((claims > 1).sum())


def read_masks(data_dir: str, image_id: str, shape: tuple[int, int]) -> tuple[np.ndarray, int]:
  """`labels_from_masks` of the image's `masks/*.png` in file-name order.

  Raises:
    ValueError: in one line, naming the file, for a mask that does not decode or whose size is not `shape`.
  """
  directory = masks_dir(data_dir, image_id)
  masks = []
  for name in sorted(n for n in os.listdir(directory) if n.lower().endswith(".png")):
    path = os.path.join(directory, name)
    mask = read_png(path, "L")
    if mask.shape != tuple(shape):
      raise ValueError(f"Mask {path} is {mask.shape[0]}×{mask.shape[1]}, its image {shape[0]}×{shape[1]}.")
    masks.append(mask > 0)
  return labels_from_masks(masks, shape)


def labels_from_csv(encodings: Sequence[str], shape: tuple[int, int]) -> tuple[np.ndarray, int]:
  """`labels_from_masks` of an image's rows of `stage1_train_labels.csv` (`kaggle.read_segmentations`)."""
  return labels_from_masks([kaggle.rle_decode(encoded, shape) for encoded in encodings], shape)


@dataclasses.dataclass(frozen=True)
class Nucleus:
  """One decoded image of nuclei: `image` uint8 `(H, W, channels)`, `labels` uint16 `(H, W)` (None where the
  masks were not read), its modality, its intensity `PERCENTILES` and how many pixels its masks share."""

  image: np.ndarray
  labels: np.ndarray | None
  modality: str
  low: float
  high: float
  shared_pixels: int = 0


def read_image(path: str, channels: int) -> Nucleus:
  """The PNG at `path` as a `Nucleus` without labels: grey (`channels=1`, the mean of the colour channels) or RGB.

  Raises:
    ValueError: in one line, naming the file, for a file that does not decode.
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}.")
  rgb = read_png(path, "RGB")
  image = rgb if channels == 3 else rgb.mean(axis=-1, keepdims=True).round().astype(np.uint8)
  low, high = np.percentile(image, PERCENTILES)
  return Nucleus(image=image, labels=None, modality=modality(rgb), low=float(low), high=float(high))


def _read_one(data_dir: str, image_id: str, channels: int, modalities: Sequence[str]) -> Nucleus:
  nucleus = read_image(image_path(data_dir, image_id), channels)
  if nucleus.modality not in modalities:
    return dataclasses.replace(nucleus, image=None)  # Only the modality is kept.
  labels, shared = read_masks(data_dir, image_id, nucleus.image.shape[:2])
  if labels.max(initial=0) > np.iinfo(np.uint16).max:
    raise ValueError(f"Image {image_id} has {labels.max()} nuclei, more than a uint16 label map holds.")
  return dataclasses.replace(nucleus, labels=labels.astype(np.uint16), shared_pixels=shared)


def read_data_set(data_dir: str, image_ids: Sequence[str], *, channels: int, modalities: Sequence[str] = MODALITIES,
                  num_threads: int = 8) -> tuple[dict[str, str], dict[str, Nucleus]]:
  """`({image id: modality}, {image id: Nucleus})`: every image's modality, and the images of `modalities`
  decoded with their masks, once, with a pool of threads (Pillow decodes without the GIL).

  `channels` is 1 (grey) or 3 (RGB), as `read_image` reads them. Shared mask pixels are logged.

  Raises:
    ValueError: in one line, naming the file, for an unreadable PNG or a mask of another size than its image.
  """
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    decoded = dict(zip(image_ids, pool.map(
        lambda image_id: _read_one(data_dir, image_id, channels, modalities), image_ids)))
  modality_of = {image_id: nucleus.modality for image_id, nucleus in decoded.items()}
  decoded = {image_id: nucleus for image_id, nucleus in decoded.items() if nucleus.image is not None}
  shared = {image_id: nucleus.shared_pixels for image_id, nucleus in decoded.items() if nucleus.shared_pixels}
  if shared:
    logging.info("%d pixels claimed by two or more masks, in %d images (%s); each went to the smallest nucleus.",
                 sum(shared.values()), len(shared), ", ".join(sorted(shared)))
  return modality_of, decoded


def split_ids(modality_of: dict[str, str], *, modalities: Sequence[str] = ("fluorescence",),
              test_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
  """`(train ids, test ids)` of the images of `modalities`, a seeded `test_fraction` held out by image id.

  Examples:
    >>> modality_of = {f"{i:02d}": "fluorescence" if i % 3 else "colour" for i in range(30)}
    >>> train, test = split_ids(modality_of)
    >>> len(train), len(test), all(modality_of[i] == "fluorescence" for i in train + test)
    (18, 2, True)
  """
  unknown = set(modalities) - set(MODALITIES)
  if unknown or not modalities:
    raise ValueError(f"modalities must be some of {MODALITIES}, got {tuple(modalities)}.")
  ids = [image_id for image_id, kind in modality_of.items() if kind in modalities]
  if len(ids) < 2:
    raise ValueError(f"{len(ids)} images of the modalities {tuple(modalities)}; a split needs at least 2.")
  return kaggle.split_image_ids(ids, validation_fraction=test_fraction, seed=seed)


def normalise(nucleus: Nucleus) -> np.ndarray:
  """The float32 `(H, W, channels)` image in [0, 1]: its `PERCENTILES` mapped to 0 and 1, then clipped."""
  scale = max(nucleus.high - nucleus.low, 1.0)
  return np.clip((nucleus.image.astype(np.float32) - nucleus.low) / scale, 0.0, 1.0)


def pad_to_square(image: np.ndarray, multiple: int) -> np.ndarray:
  """`(H, W, …)` reflected at its bottom and right to a square whose side is a multiple of `multiple`.

  Square, so that one coordinate scale puts the semi-convolutional embeddings in pixels on both axes;
  the original image is `padded[:H, :W]`.

  Examples:
    >>> pad_to_square(np.arange(6).reshape(2, 3), 4)
    array([[0, 1, 2, 1],
           [3, 4, 5, 4],
           [0, 1, 2, 1],
           [3, 4, 5, 4]])
  """
  side = -(-max(image.shape[:2]) // multiple) * multiple
  padding = [(0, side - image.shape[0]), (0, side - image.shape[1])] + [(0, 0)] * (image.ndim - 2)
  return np.pad(image, padding, mode="reflect")


class Nuclei:
  """A Grain random-access source of decoded DSB2018 images and their nuclei, whole, at their own size.

  Element `i` is `{"image": (H, W, channels) float32 in [0, 1] (`normalise`), "labels": (H, W) int32}` of
  `image_ids[i]`: 0 background, nucleus k is k. Everything is decoded beforehand (`read_data_set`), so
  an element costs a normalisation; `kaggle.training_batches(..., crop_size=...)` crops them to one size.
  """

  def __init__(self, decoded: dict[str, Nucleus], image_ids: Sequence[str]):
    self._decoded, self._ids = decoded, list(image_ids)

  def __len__(self) -> int:
    return len(self._ids)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    nucleus = self._decoded[self._ids[index]]
    return {"image": normalise(nucleus), "labels": nucleus.labels.astype(np.int32)}

  def __repr__(self) -> str:  # Grain names the source in its logs and errors.
    return f"Nuclei({len(self._ids)} images)"


def _main(argv):
  del argv
  start = time.perf_counter()
  image_ids = list_images(_DATA_DIR.value)
  modality_of, decoded = read_data_set(_DATA_DIR.value, image_ids, channels=3)
  seconds = time.perf_counter() - start
  counts = collections.Counter(modality_of.values())
  print(f"{len(image_ids)} images, {sum(int(n.labels.max()) for n in decoded.values())} nuclei, "
        f"{sum(n.shared_pixels for n in decoded.values())} shared pixels, decoded in {seconds:.1f} s; "
        + ", ".join(f"{counts[kind]} {kind}" for kind in MODALITIES))
  _, test_ids = split_ids(modality_of)
  if _TEST_IDS.value:
    with open(_TEST_IDS.value, "w", encoding="utf-8") as file:
      file.writelines(f"{image_id}\n" for image_id in sorted(test_ids))
    print(f"Wrote {len(test_ids)} test ids to {_TEST_IDS.value}.")


if __name__ == "__main__":
  from absl import app
  from absl import flags
  _DATA_DIR = flags.DEFINE_string("data_dir", None, "The directory holding stage1_train/.", required=True)
  _TEST_IDS = flags.DEFINE_string("test_ids", "", "Where to write the default split's test ids, one a line.")
  app.run(_main)
