"""Kaggle's Airbus format: run-length encoding, the segmentation CSV, F2 on decoded masks, and a small
data set in the Kaggle layout (tests/airbus_layout.py) that loads, trains, evaluates and submits."""

import csv
import os
import shutil

import jax
import numpy as np
import pytest

import airbus_layout
from data import airbus
from data import kaggle
import losses
from scripts import kaggle_submission
from tasks.base import ConfigError
import tiny_configs
import train


def random_label_map(rng, shape, max_ships):
  """Non-overlapping rectangles of ids 1…n on a background of 0."""
  labels = np.zeros(shape, np.int32)
  for ship in range(1, rng.integers(0, max_ships + 1) + 1):
    top, left = rng.integers(0, shape[0] - 1), rng.integers(0, shape[1] - 1)
    region = labels[top:top + rng.integers(1, 6), left:left + rng.integers(1, 9)]
    region[region == 0] = ship
  return labels


def test_pixels_are_numbered_from_one_down_the_columns():
  mask = np.zeros((3, 5), bool)
  mask[2, 0] = mask[0, 1] = mask[1, 1] = True  # Column-major pixels 3, 4 and 5: one run.
  mask[1, 4] = True  # Pixel 4·3 + 2 = 14.
  assert kaggle.rle_encode(mask) == "3 3 14 1"
  np.testing.assert_array_equal(kaggle.rle_decode("3 3 14 1", (3, 5)), mask)
  # A row-major reading of the same runs would be a different mask on a non-square image.
  assert not np.array_equal(kaggle.rle_decode("3 3 14 1", (3, 5)),
                            np.isin(np.arange(1, 16), [3, 4, 5, 14]).reshape(3, 5))


@pytest.mark.parametrize("shape", [(7, 7), (5, 11), (13, 4), (1, 9), (768, 768)])
def test_encoding_round_trips(shape):
  rng = np.random.default_rng(sum(shape))
  for density in (0.0, 0.05, 0.5, 1.0):
    mask = rng.random(shape) < density
    encoded = kaggle.rle_encode(mask)
    np.testing.assert_array_equal(kaggle.rle_decode(encoded, shape), mask)
    assert (encoded == "") == (not mask.any())


@pytest.mark.parametrize("encoded, message", [
    ("1 2 3", "odd number"),
    ("0 2", "start below 1"),
    ("-3 2", "start below 1"),
    ("4 0", "length below 1"),
    ("10 7", "past the last pixel 15"),
    ("1 4 3 2", "overlapping"),
    ("1 x", "not an integer"),
    ("1.5 2", "not an integer"),
])
def test_malformed_encodings_say_what_is_wrong(encoded, message):
  with pytest.raises(ValueError, match=message):
    kaggle.rle_decode(encoded, (3, 5))


def write_csv(path, rows):
  with open(path, "w", newline="", encoding="utf-8") as file:
    writer = csv.writer(file)
    writer.writerow(kaggle.CSV_COLUMNS)
    writer.writerows(rows)


def test_the_csv_gives_label_maps_with_empty_images_and_several_ships(tmp_path):
  shape = (6, 8)
  first, second = np.zeros(shape, bool), np.zeros(shape, bool)
  first[1:3, 1:4] = True
  second[4:6, 2:8] = True
  write_csv(tmp_path / "segmentations.csv", [("a.jpg", kaggle.rle_encode(first)), ("empty.jpg", ""),
                                             ("a.jpg", kaggle.rle_encode(second))])
  ships = kaggle.read_segmentations(str(tmp_path / "segmentations.csv"))
  assert list(ships) == ["a.jpg", "empty.jpg"] and ships["empty.jpg"] == []
  labels = airbus.instance_labels(ships["a.jpg"], shape, "a.jpg")
  np.testing.assert_array_equal(labels, first * 1 + second * 2)
  assert not airbus.instance_labels(ships["empty.jpg"], shape).any()
  rows = kaggle.submission_rows("a.jpg", labels)
  assert rows == [("a.jpg", kaggle.rle_encode(first)), ("a.jpg", kaggle.rle_encode(second))]
  assert kaggle.submission_rows("empty.jpg", np.zeros(shape, np.int32)) == [("empty.jpg", "")]


def test_overlapping_ships_and_bad_files_are_errors_that_name_them(tmp_path):
  with pytest.raises(ValueError, match=r"Image 'b\.jpg': the mask of ship 2 overlaps ship 1"):
    airbus.instance_labels(["1 5", "3 2"], (3, 5), "b.jpg")
  with pytest.raises(ValueError, match=r"Image 'b\.jpg', ship 1: .*odd number"):
    airbus.instance_labels(["1 5 7"], (3, 5), "b.jpg")
  with pytest.raises(FileNotFoundError, match="No segmentation CSV"):
    kaggle.read_segmentations(str(tmp_path / "missing.csv"))
  (tmp_path / "bad.csv").write_text("Image,Pixels\na.jpg,1 2\n", encoding="utf-8")
  with pytest.raises(ValueError, match="must have the columns ImageId,EncodedPixels"):
    kaggle.read_segmentations(str(tmp_path / "bad.csv"))


def kaggle_f2(true_masks, pred_masks):
  """The competition's rule for one image, from lists of boolean masks: F2 over IoU > t, t = 0.5…0.95."""
  if not true_masks and not pred_masks:
    return 1.0
  if not true_masks or not pred_masks:
    return 0.0
  iou = np.array([[np.logical_and(t, p).sum() / np.logical_or(t, p).sum() for p in pred_masks]
                  for t in true_masks])
  scores = []
  for threshold in np.arange(0.5, 1.0, 0.05):
    hits = iou > threshold
    true_positives = int(hits.any(axis=1).sum())
    false_negatives = len(true_masks) - true_positives
    false_positives = int((~hits.any(axis=0)).sum())
    scores.append(5 * true_positives / (5 * true_positives + 4 * false_negatives + false_positives))
  return float(np.mean(scores))


def test_f2_of_decoded_masks_matches_kaggles_rule():
  rng = np.random.default_rng(3)
  shape = (24, 40)
  true_maps, pred_maps, expected = [], [], []
  for _ in range(12):
    truth = random_label_map(rng, shape, 4)
    # A prediction: some ships kept (possibly shifted by a pixel), some dropped, some invented.
    prediction = np.where(rng.random() < 0.5, np.roll(truth, 1, axis=1), truth) * (rng.random() < 0.8)
    prediction = np.where((prediction == 0) & (random_label_map(rng, shape, 2) > 0), 9, prediction)
    true_rles = [kaggle.rle_encode(truth == i) for i in np.unique(truth[truth > 0])]
    pred_rles = [kaggle.rle_encode(prediction == i) for i in np.unique(prediction[prediction > 0])]
    true_maps.append(airbus.instance_labels(true_rles, shape))
    pred_maps.append(airbus.instance_labels(pred_rles, shape))
    expected.append(kaggle_f2([kaggle.rle_decode(r, shape) for r in true_rles],
                              [kaggle.rle_decode(r, shape) for r in pred_rles]))
  scores = losses.f2_iou_score(np.stack(pred_maps), np.stack(true_maps), reduction="none")
  np.testing.assert_allclose(scores, expected, rtol=1e-6)
  assert 0 < np.mean(expected) < 1


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
  """`(directory, {image id: (768, 768) labels})` of a small data set in Kaggle's layout."""
  directory = tmp_path_factory.mktemp("airbus")
  return directory, airbus_layout.write_layout(directory)


def same_ships(labels, expected):
  """Whether two label maps hold the same set of masks, whatever their ids."""
  masks = lambda l: sorted(np.flatnonzero(l == i).tobytes() for i in np.unique(l[l > 0]))
  return masks(labels) == masks(expected)


def test_the_layout_reads_into_label_maps_and_resized_examples(layout):
  directory, expected = layout
  segmentations = airbus.read_layout(str(directory))
  assert set(segmentations) == set(expected) and any(not rles for rles in segmentations.values())
  assert max(len(rles) for rles in segmentations.values()) == 3
  for image_id, rles in segmentations.items():
    assert same_ships(airbus.instance_labels(rles, airbus.IMAGE_SHAPE, image_id), expected[image_id])
  image_ids = sorted(segmentations)
  source = airbus.AirbusShips(str(directory / airbus.TRAIN_IMAGES), segmentations, image_ids, size=32)
  example = source[1]
  assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.float32
  assert example["image"].min() >= 0 and example["image"].max() <= 1
  assert example["labels"].shape == (32, 32) and example["labels"].dtype == np.int32
  assert same_ships(example["labels"], airbus.resize_labels(expected[image_ids[1]], (32, 32)))
  # Hulls are bright on a dark sea, also after JPEG compression and the resize.
  assert example["image"][example["labels"] > 0].mean() > 0.5 > example["image"][example["labels"] == 0].mean()


def test_the_stream_is_a_function_of_seed_and_step_sharded_by_process_and_resumes(layout):
  directory, _ = layout
  segmentations = airbus.read_layout(str(directory))
  source = airbus.AirbusShips(str(directory / airbus.TRAIN_IMAGES), segmentations, sorted(segmentations), size=16)
  batches = kaggle.training_batches(source, seed=1, batch_size=2, crop_size=8)
  iterator = iter(batches.to_iter_dataset())
  for step in range(3):
    batch = next(iterator)
    assert batch["image"].shape == (2, 8, 8, 3)
    jax.tree.map(np.testing.assert_array_equal, batch, batches[step])
  resumed = iter(batches.to_iter_dataset())
  resumed.set_state(iterator.get_state())
  jax.tree.map(np.testing.assert_array_equal, next(resumed), next(iterator))
  assert not np.array_equal(kaggle.training_batches(source, seed=2, batch_size=2)[0]["image"],
                            kaggle.training_batches(source, seed=1, batch_size=2)[0]["image"])
  # Two processes read disjoint halves of the elements, each in its own order, every epoch all of its half.
  numbers = [{"x": np.array(i)} for i in range(12)]
  halves = [{int(x) for step in range(6) for x in kaggle.training_batches(
      numbers, seed=1, batch_size=1, process_index=p, process_count=2)[step]["x"]} for p in range(2)]
  assert halves == [set(range(0, 12, 2)), set(range(1, 12, 2))]


def broken_layouts():
  def without_the_directory(directory):
    shutil.rmtree(directory)

  def without_the_csv(directory):
    os.remove(directory / airbus.SEGMENTATIONS_CSV)

  def without_an_image(directory):
    os.remove(directory / airbus.TRAIN_IMAGES / "00000001.jpg")

  def with_a_file_that_is_not_a_jpeg(directory):
    (directory / airbus.TRAIN_IMAGES / "00000002.jpg").write_bytes(b"not a JPEG")

  def with_a_truncated_jpeg(directory):
    path = directory / airbus.TRAIN_IMAGES / "00000003.jpg"
    path.write_bytes(path.read_bytes()[:5000])

  return [
      (without_the_directory, r"No directory .*airbus"),
      (without_the_csv, r"No segmentation CSV at .*train_ship_segmentations_v2\.csv"),
      (without_an_image, r"1 images named in train_ship_segmentations_v2\.csv are not in .*: 00000001\.jpg\."),
      (with_a_file_that_is_not_a_jpeg, r"1 unreadable image, the first .*00000002\.jpg \(UnidentifiedImageError"),
      (with_a_truncated_jpeg, r"1 unreadable image, the first .*00000003\.jpg \(OSError: image file is truncated"),
  ]


@pytest.mark.parametrize("damage, message", broken_layouts(), ids=lambda x: getattr(x, "__name__", ""))
def test_a_broken_layout_is_a_one_line_error_before_training(tmp_path, damage, message):
  directory = tmp_path / "airbus"
  airbus_layout.write_layout(directory, num_images=4)
  damage(directory)
  config = tiny_configs.get_config("airbus")
  config.data_dir = str(directory)
  with pytest.raises(ConfigError, match=message) as error:
    train.build_training(config)
  assert "\n" not in str(error.value)


def test_the_layout_trains_evaluates_at_768_and_submits(layout, tmp_path, scored_shapes):
  directory, expected = layout
  config = tiny_configs.get_config("airbus")
  config.update(dict(data_dir=str(directory), num_train_steps=3))
  workdir = tmp_path / "run"
  metrics = train.train_and_evaluate(config, str(workdir))
  assert 0 <= metrics["f2_semi_conv"] <= 1 and 0 <= metrics["f2_connected_components"] <= 1
  assert scored_shapes == [((3, 768, 768), (3, 768, 768))]  # The 3 validation images, at Kaggle's size.

  output = tmp_path / "submission.csv"
  image_dir = directory / airbus.TRAIN_IMAGES
  num_rows = kaggle_submission.write_submission(str(workdir), str(image_dir), str(output), batch_size=5,
                                                progress=False)
  with open(output, newline="", encoding="utf-8") as file:
    rows = list(csv.reader(file))
  assert tuple(rows[0]) == kaggle.CSV_COLUMNS and len(rows) == num_rows + 1
  rows_of = {}
  for image_id, encoded in rows[1:]:
    rows_of.setdefault(image_id, []).append(encoded)
  assert sorted(rows_of) == sorted(expected)
  for image_id, encodings in rows_of.items():
    assert encodings == [""] or all(encodings), image_id  # One empty row, or one row per ship.
    coverage = sum(kaggle.rle_decode(e, airbus.IMAGE_SHAPE).astype(int) for e in encodings if e)
    assert np.max(coverage, initial=0) <= 1, image_id  # The masks of an image never overlap.
