"""Kaggle's Airbus format: run-length encoding, the segmentation CSV, and F2 on decoded masks."""

import csv

import numpy as np
import pytest

from data import airbus
import losses


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
  assert airbus.rle_encode(mask) == "3 3 14 1"
  np.testing.assert_array_equal(airbus.rle_decode("3 3 14 1", (3, 5)), mask)
  # A row-major reading of the same runs would be a different mask on a non-square image.
  assert not np.array_equal(airbus.rle_decode("3 3 14 1", (3, 5)),
                            np.isin(np.arange(1, 16), [3, 4, 5, 14]).reshape(3, 5))


@pytest.mark.parametrize("shape", [(7, 7), (5, 11), (13, 4), (1, 9), (768, 768)])
def test_encoding_round_trips(shape):
  rng = np.random.default_rng(sum(shape))
  for density in (0.0, 0.05, 0.5, 1.0):
    mask = rng.random(shape) < density
    encoded = airbus.rle_encode(mask)
    np.testing.assert_array_equal(airbus.rle_decode(encoded, shape), mask)
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
    airbus.rle_decode(encoded, (3, 5))


def write_csv(path, rows):
  with open(path, "w", newline="", encoding="utf-8") as file:
    writer = csv.writer(file)
    writer.writerow(airbus.CSV_COLUMNS)
    writer.writerows(rows)


def test_the_csv_gives_label_maps_with_empty_images_and_several_ships(tmp_path):
  shape = (6, 8)
  first, second = np.zeros(shape, bool), np.zeros(shape, bool)
  first[1:3, 1:4] = True
  second[4:6, 2:8] = True
  write_csv(tmp_path / "segmentations.csv", [("a.jpg", airbus.rle_encode(first)), ("empty.jpg", ""),
                                             ("a.jpg", airbus.rle_encode(second))])
  ships = airbus.read_segmentations(str(tmp_path / "segmentations.csv"))
  assert list(ships) == ["a.jpg", "empty.jpg"] and ships["empty.jpg"] == []
  labels = airbus.instance_labels(ships["a.jpg"], shape, "a.jpg")
  np.testing.assert_array_equal(labels, first * 1 + second * 2)
  assert not airbus.instance_labels(ships["empty.jpg"], shape).any()
  rows = airbus.submission_rows("a.jpg", labels)
  assert rows == [("a.jpg", airbus.rle_encode(first)), ("a.jpg", airbus.rle_encode(second))]
  assert airbus.submission_rows("empty.jpg", np.zeros(shape, np.int32)) == [("empty.jpg", "")]


def test_overlapping_ships_and_bad_files_are_errors_that_name_them(tmp_path):
  with pytest.raises(ValueError, match=r"Image 'b\.jpg': the mask of ship 2 overlaps ship 1"):
    airbus.instance_labels(["1 5", "3 2"], (3, 5), "b.jpg")
  with pytest.raises(ValueError, match=r"Image 'b\.jpg', ship 1: .*odd number"):
    airbus.instance_labels(["1 5 7"], (3, 5), "b.jpg")
  with pytest.raises(FileNotFoundError, match="No segmentation CSV"):
    airbus.read_segmentations(str(tmp_path / "missing.csv"))
  (tmp_path / "bad.csv").write_text("Image,Pixels\na.jpg,1 2\n", encoding="utf-8")
  with pytest.raises(ValueError, match="must have the columns ImageId,EncodedPixels"):
    airbus.read_segmentations(str(tmp_path / "bad.csv"))


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
    true_rles = [airbus.rle_encode(truth == i) for i in np.unique(truth[truth > 0])]
    pred_rles = [airbus.rle_encode(prediction == i) for i in np.unique(prediction[prediction > 0])]
    true_maps.append(airbus.instance_labels(true_rles, shape))
    pred_maps.append(airbus.instance_labels(pred_rles, shape))
    expected.append(kaggle_f2([airbus.rle_decode(r, shape) for r in true_rles],
                              [airbus.rle_decode(r, shape) for r in pred_rles]))
  scores = losses.f2_iou_score(np.stack(pred_maps), np.stack(true_maps), reduction="none")
  np.testing.assert_allclose(scores, expected, rtol=1e-6)
  assert 0 < np.mean(expected) < 1
