"""Kaggle's submission CSV from a trained run: Airbus Ship Detection or the 2018 Data Science Bowl.

    python -m scripts.kaggle_submission --run=/tmp/airbus --images=/data/airbus/test_v2 --output=submission.csv
    python -m scripts.kaggle_submission --run=/tmp/dsb --images=/data/dsb2018/stage1_test --output=submission.csv

Reads the run's `config.json` and newest checkpoint; its `data_source` says which competition. Airbus:
segments every `*.jpg` in `--images` at the model's size and scales the instance labels back to each
image's own size by nearest neighbour. DSB2018: segments every `<ImageId>/images/<ImageId>.png` in
`--images` (Kaggle's `stage1_test` layout) whole, one at a time, padded as in evaluation, and crops the
labels back. Either way the masks of one image never overlap, and the CSV `ImageId,EncodedPixels` has
one row per predicted object, or one row with an empty encoding for an image without any: every image
is listed.
"""

import csv
import os

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import rich.progress

from data import airbus
from data import dsb2018
from data import kaggle
import rundir
import tasks.instances

_RUN = flags.DEFINE_string("run", None, "Workdir of a `configs/instances.py:airbus` or `:dsb2018` run.", required=True)
_IMAGES = flags.DEFINE_string("images", None, "The images to segment: Airbus's test_v2/ or DSB2018's stage1_test/.",
                              required=True)
_OUTPUT = flags.DEFINE_string("output", "submission.csv", "The CSV to write.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Airbus images segmented at once (DSB2018's: one).")


def write_submission(run: str, image_dir: str, output: str, *, batch_size: int = 16, progress: bool = True) -> int:
  """Writes the submission CSV of the run in `run` over the images in `image_dir`; returns the rows written."""
  config = rundir.read_config(run)
  segment = tasks.instances.segmenter(config)
  _, params = rundir.latest_params(run)
  if not os.path.isdir(image_dir):
    raise FileNotFoundError(f"No directory {image_dir}.")
  if config.data_source == "airbus":
    image_ids = sorted(name for name in os.listdir(image_dir) if name.lower().endswith(".jpg"))

    def labels_of(ids):  # At each image's own size.
      paths = [os.path.join(image_dir, image_id) for image_id in ids]
      images = np.stack([airbus.load_image(path, config.image_size) for path in paths])
      for path, labels in zip(paths, segment(params, images)):
        with Image.open(path) as image:
          yield airbus.resize_labels(labels, (image.height, image.width))
  elif config.data_source == "dsb2018":
    image_ids = sorted(name for name in os.listdir(image_dir) if os.path.isdir(os.path.join(image_dir, name)))
    batch_size = 1  # Whole images of different sizes.

    def labels_of(ids):
      nucleus = dsb2018.read_image(os.path.join(image_dir, ids[0], "images", f"{ids[0]}.png"), config.dsb2018.channels)
      padded = dsb2018.pad_to_square(dsb2018.normalise(nucleus), tasks.instances.size_multiple(config))
      yield segment(params, padded[None])[0, :nucleus.image.shape[0], :nucleus.image.shape[1]]
  else:
    raise ValueError(f"The run in {run} trained on data_source={config.data_source!r}; a submission needs "
                     "'airbus' or 'dsb2018'.")
  num_rows = 0
  with open(output, "w", newline="", encoding="utf-8") as file, rich.progress.Progress(
      rich.progress.TextColumn("[bold]{task.completed}/{task.total} images"), rich.progress.BarColumn(),
      rich.progress.TimeRemainingColumn(), disable=not progress) as bar:
    writer = csv.writer(file)
    writer.writerow(kaggle.CSV_COLUMNS)
    task = bar.add_task("segment", total=len(image_ids))
    for start in range(0, len(image_ids), batch_size):
      ids = image_ids[start:start + batch_size]
      for image_id, labels in zip(ids, labels_of(ids)):
        rows = kaggle.submission_rows(image_id, labels)
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
