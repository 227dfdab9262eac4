"""The 2018 Data Science Bowl in Kaggle's layout: masks and CSV, shared pixels, modalities and split, the
Grain stream, the one-line errors, the watershed baseline, and a small data set written here that trains,
evaluates whole odd-sized images at their own size and submits."""

import csv
import os
import re
import shutil

import jax
import numpy as np
from PIL import Image
import pytest

from data import dsb2018
from data import kaggle
from scripts import kaggle_submission
from tasks import instances
from tasks.base import ConfigError
import tiny_configs
import train

# (image id, (H, W), modality, nuclei as (top, left, height, width) boxes in mask-file-name order).
# The first two are the fluorescence images (the split holds one out); both have odd sides. In the first,
# nucleus 1 (28 pixels) and nucleus 2 (9 pixels) share the pixel (5, 9).
IMAGES = [
    ("a1", (21, 27), "fluorescence", [(2, 3, 4, 7), (5, 9, 3, 3), (12, 14, 6, 8)]),
    ("b2", (25, 19), "fluorescence", [(4, 4, 5, 5), (14, 8, 7, 6)]),
    ("c3", (16, 16), "brightfield", [(3, 3, 6, 6)]),
    ("d4", (18, 20), "colour", [(2, 2, 5, 5), (9, 10, 6, 6)]),
]
BACKGROUND = {"fluorescence": (12, 12, 12), "brightfield": (220, 220, 220), "colour": (230, 190, 235)}
NUCLEUS = {"fluorescence": (210, 210, 210), "brightfield": (60, 60, 60), "colour": (90, 40, 140)}


def write_layout(directory) -> dict[str, np.ndarray]:
  """Writes `stage1_train/` and `stage1_train_labels.csv`; returns `{image id: expected (H, W) labels}`."""
  rng = np.random.default_rng(0)
  expected, rows = {}, []
  for image_id, shape, kind, boxes in IMAGES:
    image = np.zeros((*shape, 3)) + BACKGROUND[kind]
    labels = np.zeros(shape, np.int32)
    os.makedirs(dsb2018.masks_dir(directory, image_id))
    os.makedirs(os.path.dirname(dsb2018.image_path(directory, image_id)))
    for nucleus, (top, left, height, width) in enumerate(boxes, start=1):
      mask = np.zeros(shape, bool)
      mask[top:top + height, left:left + width] = True
      image[mask] = NUCLEUS[kind]
      labels[mask] = nucleus  # Where nuclei share a pixel here, the later one is the smaller.
      Image.fromarray(mask.astype(np.uint8) * 255).save(
          os.path.join(dsb2018.masks_dir(directory, image_id), f"{nucleus:02d}{rng.integers(1 << 30):x}.png"))
      rows.append((image_id, kaggle.rle_encode(mask)))
    noise = rng.normal(0, 3, shape)[..., None]  # The same on every channel: grey images stay grey.
    rgba = np.concatenate([np.clip(image + noise, 0, 255), np.full((*shape, 1), 255)], axis=-1)
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(dsb2018.image_path(directory, image_id))
    expected[image_id] = labels
  with open(os.path.join(directory, dsb2018.LABELS_CSV), "w", newline="", encoding="utf-8") as file:
    csv.writer(file).writerows([kaggle.CSV_COLUMNS, *rows])
  return expected


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
  directory = tmp_path_factory.mktemp("dsb2018")
  return str(directory), write_layout(directory)


def test_masks_and_csv_give_the_same_labels_and_a_shared_pixel_goes_to_the_smaller_nucleus(layout):
  directory, expected = layout
  encodings = kaggle.read_segmentations(os.path.join(directory, dsb2018.LABELS_CSV))
  for image_id, shape, _, boxes in IMAGES:
    from_masks, shared = dsb2018.read_masks(directory, image_id, shape)
    from_csv, shared_in_csv = dsb2018.labels_from_csv(encodings[image_id], shape)
    np.testing.assert_array_equal(from_masks, expected[image_id])
    np.testing.assert_array_equal(from_csv, from_masks)
    assert shared == shared_in_csv == (1 if image_id == "a1" else 0)
    assert from_masks.max() == len(boxes)
  labels, _ = dsb2018.read_masks(directory, "a1", (21, 27))
  assert labels[5, 9] == 2 and (labels == 1).sum() == 27  # The smaller nucleus has it, not the first.


def test_modalities_and_the_split_by_image_id(layout):
  directory, _ = layout
  modality_of, decoded = dsb2018.read_data_set(directory, dsb2018.list_images(directory), channels=3,
                                               modalities=("fluorescence",), num_threads=2)
  assert modality_of == {image_id: kind for image_id, _, kind, _ in IMAGES}
  assert sorted(decoded) == ["a1", "b2"] and decoded["a1"].image.shape == (21, 27, 3)
  train_ids, test_ids = dsb2018.split_ids(modality_of, test_fraction=0.5)
  assert sorted(train_ids + test_ids) == ["a1", "b2"] and len(test_ids) == 1
  train_ids, test_ids = dsb2018.split_ids(modality_of, modalities=("colour", "brightfield"), test_fraction=0.5)
  assert sorted(train_ids + test_ids) == ["c3", "d4"]
  with pytest.raises(ValueError, match="modalities must be some of"):
    dsb2018.split_ids(modality_of, modalities=("phase",))


def test_the_committed_test_ids_of_the_shared_set():
  """The held-out tenth of the 541 fluorescence images of stage1_train (`python -m data.dsb2018`)."""
  path = os.path.join(os.path.dirname(dsb2018.__file__), "dsb2018_test_ids.txt")
  with open(path, encoding="utf-8") as file:
    ids = file.read().splitlines()
  assert len(ids) == round(0.1 * 541) == len(set(ids)) and ids == sorted(ids)
  assert all(re.fullmatch("[0-9a-f]{64}", image_id) for image_id in ids)


def test_the_stream_is_a_function_of_seed_and_step_pads_small_images_and_resumes(layout):
  directory, _ = layout
  _, decoded = dsb2018.read_data_set(directory, dsb2018.list_images(directory), channels=1,
                                     num_threads=2)
  source = dsb2018.Nuclei(decoded, sorted(decoded))
  element = source[2]  # c3, 16×16.
  assert element["image"].shape == (16, 16, 1) and element["image"].dtype == np.float32
  assert element["labels"].dtype == np.int32 and 0 <= element["image"].min() < element["image"].max() <= 1
  batches = kaggle.training_batches(source, seed=3, batch_size=2, crop_size=20)  # Larger than c3: padded.
  iterator = iter(batches.to_iter_dataset())
  for step in range(3):
    batch = next(iterator)
    assert batch["image"].shape == (2, 20, 20, 1) and batch["labels"].shape == (2, 20, 20)
    jax.tree.map(np.testing.assert_array_equal, batch, batches[step])
    for labels in batch["labels"]:  # Renumbered 1…n in each crop.
      np.testing.assert_array_equal(np.unique(labels[labels > 0]), np.arange(1, labels.max() + 1))
  resumed = iter(batches.to_iter_dataset())
  resumed.set_state(iterator.get_state())
  jax.tree.map(np.testing.assert_array_equal, next(resumed), next(iterator))


def test_padding_to_the_unet_and_cropping_back():
  image = np.arange(21 * 27, dtype=np.float32).reshape(21, 27, 1)
  padded = dsb2018.pad_to_square(image, 4)
  assert padded.shape == (28, 28, 1)
  np.testing.assert_array_equal(padded[:21, :27], image)


def test_the_watershed_splits_touching_discs_and_keeps_a_bar_whole():
  rows, columns = np.mgrid[:24, :40]
  discs = (np.hypot(rows - 12, columns - 11) < 7) | (np.hypot(rows - 12, columns - 23) < 7)
  bar = np.zeros((24, 40), bool)
  bar[10:14, 4:36] = True
  labels = instances.watershed_instances(np.stack([discs, bar, np.zeros_like(bar)]).astype(np.float32), h=1.0)
  assert [len(np.unique(image[image > 0])) for image in labels] == [2, 1, 0]
  np.testing.assert_array_equal(labels > 0, np.stack([discs, bar, np.zeros_like(bar)]))


def broken_layouts():
  def without_the_directory(directory):
    shutil.rmtree(directory)

  def without_a_masks_folder(directory):
    shutil.rmtree(dsb2018.masks_dir(directory, "b2"))

  def with_an_unreadable_png(directory):
    with open(dsb2018.image_path(directory, "a1"), "wb") as file:
      file.write(b"not a PNG")

  def with_a_mask_of_another_size(directory):
    masks = dsb2018.masks_dir(directory, "b2")
    Image.fromarray(np.zeros((25, 18), np.uint8)).save(os.path.join(masks, sorted(os.listdir(masks))[0]))

  return [
      (without_the_directory, r"No directory .*dsb2018; the DSB2018 layout is"),
      (without_a_masks_folder, r"No masks folder .*b2/masks for the image b2\."),
      (with_an_unreadable_png, r"Unreadable PNG .*a1/images/a1\.png \(UnidentifiedImageError"),
      (with_a_mask_of_another_size, r"Mask .*b2/masks/01\w*\.png is 25×18, its image 25×19\."),
  ]


@pytest.mark.parametrize("damage, message", broken_layouts(), ids=lambda x: getattr(x, "__name__", ""))
def test_a_broken_layout_is_a_one_line_error_before_training(tmp_path, damage, message):
  directory = str(tmp_path / "dsb2018")
  write_layout(directory)
  damage(directory)
  config = tiny_configs.get_config("dsb2018")
  config.data_dir = directory
  with pytest.raises(ConfigError, match=message) as error:
    train.build_training(config)
  assert "\n" not in str(error.value)


def test_the_layout_trains_evaluates_whole_images_at_their_size_and_submits(layout, tmp_path, scored_shapes):
  directory, expected = layout
  config = tiny_configs.get_config("dsb2018")
  config.update(dict(data_dir=directory, num_train_steps=3))
  workdir = tmp_path / "run"
  metrics = train.train_and_evaluate(config, str(workdir))
  for name in ("semi_conv", "connected_components", "watershed"):
    for metric in ("f2", "ap", "pooled_ap50", "pooled_ap75", "pooled_ap90"):
      assert 0 <= metrics[f"{metric}_{name}"] <= 1, (metric, name)
  (test_id,) = _test_ids(config)
  test_shape = {image_id: shape for image_id, shape, _, _ in IMAGES}[test_id]
  assert scored_shapes == [((1, *test_shape), (1, *test_shape))]  # The whole held-out image at its own size.

  output = tmp_path / "submission.csv"
  num_rows = kaggle_submission.write_submission(str(workdir), os.path.join(directory, dsb2018.TRAIN_DIR),
                                                str(output), progress=False)
  encodings = kaggle.read_segmentations(str(output))
  assert sorted(encodings) == sorted(expected)
  with open(output, encoding="utf-8") as file:
    assert len(file.read().splitlines()) == num_rows + 1
  for image_id, shape, _, _ in IMAGES:
    assert dsb2018.labels_from_csv(encodings[image_id], shape)[1] == 0  # The masks of an image never overlap.
  # Label maps survive the round trip through the rows and the CSV reader's decoding.
  for image_id, shape, _, _ in IMAGES:
    rows = kaggle.submission_rows(image_id, expected[image_id])
    np.testing.assert_array_equal(dsb2018.labels_from_csv([e for _, e in rows], shape)[0], expected[image_id])

  # The figure of several runs on the same held-out images (scripts/plot_instances.py) reads the run back.
  figure = tmp_path / "runs.png"
  instances.plot_runs([("a", str(workdir)), ("b", str(workdir))], str(figure), num_images=1)
  assert figure.stat().st_size > 0


def _test_ids(config):
  modality_of = {image_id: kind for image_id, _, kind, _ in IMAGES}
  return dsb2018.split_ids(modality_of, modalities=tuple(config.dsb2018.modalities),
                           test_fraction=config.dsb2018.test_fraction, seed=config.dsb2018.split_seed)[1]
