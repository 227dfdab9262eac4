"""Kaggle's Airbus Ship Detection submission from a trained run.

    python -m scripts.airbus_submission --run=/tmp/airbus --images=/data/airbus/test_v2 --output=submission.csv

Reads the run's `config.json` and newest checkpoint, segments every `*.jpg` in `--images` at the
model's size, scales the instance labels back to each image's own size by nearest neighbour (so
the masks of one image never overlap), and writes `ImageId,EncodedPixels`: one row per predicted
ship, or one row with an empty encoding for an image without ships. Every image is listed.
"""

import csv
import os

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import rich.progress

from data import airbus
import rundir
import tasks.instances

_RUN = flags.DEFINE_string("run", None, "Workdir of a `configs/instances.py:airbus` run.", required=True)
_IMAGES = flags.DEFINE_string("images", None, "Directory of the JPEGs to segment (Kaggle's test_v2).", required=True)
_OUTPUT = flags.DEFINE_string("output", "submission.csv", "The CSV to write.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Images segmented at once.")


def write_submission(run: str, image_dir: str, output: str, *, batch_size: int = 16, progress: bool = True) -> int:
  """Writes the submission CSV of the run in `run` over the JPEGs in `image_dir`; returns the rows written."""
  config = rundir.read_config(run)
  segment = tasks.instances.segmenter(config)
  _, params = rundir.latest_params(run)
  if not os.path.isdir(image_dir):
    raise FileNotFoundError(f"No directory {image_dir}.")
  image_ids = sorted(name for name in os.listdir(image_dir) if name.lower().endswith(".jpg"))
  num_rows = 0
  with open(output, "w", newline="", encoding="utf-8") as file, rich.progress.Progress(
      rich.progress.TextColumn("[bold]{task.completed}/{task.total} images"), rich.progress.BarColumn(),
      rich.progress.TimeRemainingColumn(), disable=not progress) as bar:
    writer = csv.writer(file)
    writer.writerow(airbus.CSV_COLUMNS)
    task = bar.add_task("segment", total=len(image_ids))
    for start in range(0, len(image_ids), batch_size):
      ids = image_ids[start:start + batch_size]
      paths = [os.path.join(image_dir, image_id) for image_id in ids]
      images = np.stack([airbus.load_image(path, config.image_size) for path in paths])
      for image_id, path, labels in zip(ids, paths, segment(params, images)):
        with Image.open(path) as image:
          shape = (image.height, image.width)
        rows = airbus.submission_rows(image_id, airbus.resize_labels(labels, shape))
        writer.writerows(rows)
        num_rows += len(rows)
      bar.advance(task, len(ids))
  return num_rows


def main(argv):
  del argv
  rows = write_submission(_RUN.value, _IMAGES.value, _OUTPUT.value, batch_size=_BATCH_SIZE.value)
  print(f"Wrote {rows} rows to {_OUTPUT.value}.")


if __name__ == "__main__":
  app.run(main)
