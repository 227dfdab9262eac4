"""A small data set in Kaggle's Airbus Ship Detection layout, written by the tests that need one.

`write_layout(directory)` writes `train_v2/*.jpg` (768×768 RGB JPEGs of a dark, noisy sea with bright
rectangular hulls) and `train_ship_segmentations_v2.csv`: one row per ship with its run-length encoding,
and one row with an empty `EncodedPixels` for each image without ships. Every fourth image is empty;
the others hold one to three ships, large enough to survive a resize to 32×32.
"""

import csv
import os

import numpy as np
from PIL import Image

from data import airbus
from data import kaggle


def write_layout(directory, *, num_images: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
  """Writes the layout under `directory`; returns `{image id: (768, 768) int32 instance labels}`."""
  rng = np.random.default_rng(seed)
  height, width = airbus.IMAGE_SHAPE
  os.makedirs(os.path.join(directory, airbus.TRAIN_IMAGES), exist_ok=True)
  rows, labels_of = [], {}
  for index in range(num_images):
    image_id = f"{index:08x}.jpg"
    sea = rng.normal([20, 40, 60], 8, (height, width, 3))
    labels = np.zeros((height, width), np.int32)
    num_ships = 0 if index % 4 == 0 else 1 + index % 3
    for ship in range(1, num_ships + 1):
      # Ship k lies in its own band of rows, so that ships never overlap.
      band = height // num_ships
      ship_height, ship_width = rng.integers(40, 90), rng.integers(90, 300)
      top = (ship - 1) * band + rng.integers(0, band - ship_height)
      left = rng.integers(0, width - ship_width)
      labels[top:top + ship_height, left:left + ship_width] = ship
      sea[labels == ship] = rng.uniform(150, 230, 3)
      rows.append((image_id, kaggle.rle_encode(labels == ship)))
    if not num_ships:
      rows.append((image_id, ""))
    Image.fromarray(np.clip(sea, 0, 255).astype(np.uint8)).save(
        os.path.join(directory, airbus.TRAIN_IMAGES, image_id), quality=90)
    labels_of[image_id] = labels
  order = rng.permutation(len(rows))  # Kaggle's rows are not grouped by image.
  with open(os.path.join(directory, airbus.SEGMENTATIONS_CSV), "w", newline="", encoding="utf-8") as file:
    writer = csv.writer(file)
    writer.writerow(kaggle.CSV_COLUMNS)
    writer.writerows(rows[i] for i in order)
  return labels_of
