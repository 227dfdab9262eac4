"""Multi-Fashion from IDX files written here: the reader's one-line errors, the pairs and their canvases, the
Grain stream, Pareto MTL's LeNet, and a few training steps of the multi-task experiment on it."""

import gzip
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import multi_fashion
from models import LeNet
from models import lenet
from tasks.base import ConfigError
import tiny_configs
import train

NUM_TRAIN, NUM_TEST = 30, 20  # Source images, 28×28, three per class in training, two in test.


def write_idx(path, array: np.ndarray, magic: int) -> None:
  """An IDX file of uint8 `array`: the magic number, the dimensions, the bytes; gzipped if `path` ends in .gz."""
  content = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape) + array.tobytes()
  with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as file:
    file.write(content)


def write_split(directory, split: str, count: int, *, gzipped: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Random 28×28 uint8 items, the labels 0…9 in turn; returns `(images, labels)`."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
  labels = (np.arange(count) % multi_fashion.NUM_CLASSES).astype(np.uint8)
  image_name, label_name = multi_fashion.IDX_FILES[split]
  suffix = ".gz" if gzipped else ""
  write_idx(os.path.join(directory, image_name + suffix), images, multi_fashion.IMAGES_MAGIC)
  write_idx(os.path.join(directory, label_name + suffix), labels, multi_fashion.LABELS_MAGIC)
  return images, labels


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  """The training files gzipped, the test files not, as both occur."""
  directory = tmp_path_factory.mktemp("fashion")
  train_split = write_split(directory, "train", NUM_TRAIN, gzipped=True, seed=0)
  test_split = write_split(directory, "test", NUM_TEST, gzipped=False, seed=1)
  return str(directory), {"train": train_split, "test": test_split}


def test_the_reader_reads_gzipped_and_plain_files(idx_dir):
  directory, written = idx_dir
  for split in ("train", "test"):
    images, labels = multi_fashion.read_split(directory, split)
    np.testing.assert_array_equal(images, written[split][0])
    np.testing.assert_array_equal(labels, written[split][1])


def broken_files():
  """`(damage(directory), message)`: each damage to the training files and the one-line error it gives."""
  images_name, labels_name = multi_fashion.IDX_FILES["train"]

  def missing(directory):
    os.remove(os.path.join(directory, labels_name + ".gz"))

  def bad_magic(directory):
    write_idx(os.path.join(directory, images_name + ".gz"), np.zeros((2, 28, 28), np.uint8), 2049)

  def wrong_size(directory):
    with gzip.open(os.path.join(directory, images_name + ".gz"), "rb") as file:
      content = file.read()
    with gzip.open(os.path.join(directory, images_name + ".gz"), "wb") as file:
      file.write(content[:-100])

  def not_gzip(directory):
    with open(os.path.join(directory, images_name + ".gz"), "wb") as file:
      file.write(b"plain bytes")

  def different_counts(directory):
    write_idx(os.path.join(directory, labels_name + ".gz"), np.zeros(NUM_TRAIN - 1, np.uint8), 2049)

  return [
      (missing, r"No IDX file train-labels-idx1-ubyte\.gz or train-labels-idx1-ubyte in "),
      (bad_magic, r"train-images-idx3-ubyte\.gz has the magic number 0x00000801, not 0x00000803"),
      (wrong_size, (rf"train-images-idx3-ubyte\.gz has {NUM_TRAIN * 784 - 100} bytes after its header, but "
                    rf"its header's shape {NUM_TRAIN}×28×28 needs {NUM_TRAIN * 784}\.")),
      (not_gzip, r"train-images-idx3-ubyte\.gz is not a readable gzip file \(BadGzipFile"),
      (different_counts, (rf"train-images-idx3-ubyte\.gz has {NUM_TRAIN} images but "
                          rf"train-labels-idx1-ubyte\.gz has {NUM_TRAIN - 1} labels\.")),
  ]


@pytest.mark.parametrize("damage, message", broken_files(), ids=lambda x: getattr(x, "__name__", ""))
def test_a_broken_file_is_a_one_line_error_naming_it_before_training(tmp_path, damage, message):
  write_split(tmp_path, "train", NUM_TRAIN, gzipped=True, seed=0)
  write_split(tmp_path, "test", NUM_TEST, gzipped=False, seed=1)
  damage(str(tmp_path))
  config = tiny_configs.get_config("multi_fashion")
  config.data_dir = str(tmp_path)
  with pytest.raises(ConfigError, match=message) as error:
    train.build_training(config)
  assert "\n" not in str(error.value)


def test_pairs_are_of_different_classes_shifted_at_most_4_pixels_and_drawn_from_the_seed(idx_dir):
  _, written = idx_dir
  labels = written["train"][1]
  pairs = multi_fashion.pair_items(labels, 20 * NUM_TRAIN, seed=(0, 0))
  assert pairs.items.shape == (20 * NUM_TRAIN, 2) and pairs.corners.shape == (20 * NUM_TRAIN, 2, 2)
  assert (labels[pairs.items[:, 0]] != labels[pairs.items[:, 1]]).all()
  np.testing.assert_array_equal(np.bincount(pairs.items[:, 0], minlength=NUM_TRAIN), 20)  # Each image 20 times.
  top_left, bottom_right = pairs.corners[:, 0], pairs.corners[:, 1]
  assert top_left.min() >= 0 and top_left.max() <= 4 and bottom_right.min() >= 4 and bottom_right.max() <= 8
  assert len(np.unique(top_left, axis=0)) == len(np.unique(bottom_right, axis=0)) == 25  # Every shift occurs.
  again = multi_fashion.pair_items(labels, 20 * NUM_TRAIN, seed=(0, 0))
  other = multi_fashion.pair_items(labels, 20 * NUM_TRAIN, seed=(1, 0))
  jax.tree.map(np.testing.assert_array_equal, again, pairs)
  assert (other.items != pairs.items).any() and (other.corners != pairs.corners).any()


def test_canvases_place_each_item_at_its_corner_and_keep_the_brighter_pixel(idx_dir):
  directory, written = idx_dir
  splits = multi_fashion.load(directory, seed=0, num_examples={"train": 50, "test": 8})
  assert len(splits["train"]) == 50 and len(splits["test"]) == 8
  images, labels = written["train"]
  split = splits["train"]
  batch = split.batch(np.arange(6))
  assert split.image_shape == (36, 36, 1)
  assert batch["image"].shape == (6, 36, 36, 1) and batch["image"].dtype == np.float32
  assert batch["labels"].dtype == np.int32
  for index in range(6):  # The canvas drawn one item at a time.
    expected = np.zeros((36, 36), np.uint8)
    for (item, (row, col)) in zip(split.pairs.items[index], split.pairs.corners[index]):
      expected[row:row + 28, col:col + 28] = np.maximum(expected[row:row + 28, col:col + 28], images[item])
    np.testing.assert_array_equal(batch["image"][index, ..., 0], expected / np.float32(255))
    np.testing.assert_array_equal(batch["labels"][index], labels[split.pairs.items[index]])
  # The test split's pairs come from the test images, with a table of their own.
  assert splits["test"].pairs.items.max() < NUM_TEST


def test_the_stream_is_a_function_of_seed_and_step_sharded_by_process_and_resumes(idx_dir):
  directory, _ = idx_dir
  split = multi_fashion.load(directory, seed=0, num_examples={"train": 40, "test": 8})["train"]
  batches = multi_fashion.training_batches(split, seed=3, batch_size=4)
  iterator = multi_fashion.training_iterator(split, seed=3, batch_size=4)
  for step in range(3):
    jax.tree.map(np.testing.assert_array_equal, next(iterator), batches[step])
  resumed = multi_fashion.training_iterator(split, seed=3, batch_size=4)
  resumed.set_state(iterator.get_state())
  jax.tree.map(np.testing.assert_array_equal, next(resumed), next(iterator))
  assert (multi_fashion.training_batches(split, seed=4, batch_size=4)[0]["image"] != batches[0]["image"]).any()
  # Two processes read disjoint halves of an epoch (10 steps of 2 each).
  shares = [multi_fashion.training_batches(split, seed=3, batch_size=2, process_index=p, process_count=2)
            for p in range(2)]
  images = [np.concatenate([share[step]["image"] for step in range(10)]) for share in shares]
  assert not any((a == b).all() for a in images[0] for b in images[1])


def test_evaluation_batches_cover_the_first_canvases_in_order(idx_dir):
  directory, _ = idx_dir
  split = multi_fashion.load(directory, seed=0, num_examples={"train": 40, "test": 10})["test"]
  batches = list(multi_fashion.evaluation_batches(split, 4))
  assert [len(b["labels"]) for b in batches] == [4, 4, 2]
  np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches]), split.batch(np.arange(10))["labels"])


def test_lenet_has_pareto_mtls_layers_and_splits_at_its_features():
  model = LeNet()
  params = model.init(jax.random.key(0), jnp.zeros((1, 36, 36, 1)))["params"]
  shapes = {name: {leaf: value.shape for leaf, value in module.items()} for name, module in params.items()}
  assert shapes == {"conv1": {"kernel": (9, 9, 1, 10), "bias": (10,)},
                    "conv2": {"kernel": (5, 5, 10, 20), "bias": (20,)}, "fc1": {"kernel": (500, 50), "bias": (50,)},
                    "heads_0": {"kernel": (50, 10), "bias": (10,)}, "heads_1": {"kernel": (50, 10), "bias": (10,)}}
  assert set(lenet.ENCODER_MODULES) | {"heads_0", "heads_1"} == set(params)
  images = jax.random.uniform(jax.random.key(1), (2, 36, 36, 1))
  features = model.apply({"params": params}, images, method="encode")
  assert features.shape == (2, 50) and (features >= 0).all()
  for whole, split in zip(model.apply({"params": params}, images),
                          model.apply({"params": params}, features, method="decode")):
    np.testing.assert_array_equal(whole, split)


def test_the_multitask_experiment_trains_and_evaluates_both_classifications(idx_dir, tmp_path):
  """A gradient-level method aggregating at the LeNet's features: the shared modules, the encoder and the
  heads as the task names them."""
  directory, _ = idx_dir
  config = tiny_configs.get_config("multi_fashion")
  config.update(dict(data_dir=directory, weighting="upgrad", representation_gradients=True, num_train_steps=2))
  metrics = train.train_and_evaluate(config, str(tmp_path))
  for name in ("top_left", "bottom_right"):
    assert 0 <= metrics[f"accuracy_{name}"] <= 1 and np.isfinite(metrics[f"loss_{name}"])
