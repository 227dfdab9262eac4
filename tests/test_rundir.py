"""The run directory's files, written and read without training anything."""

import json
import os

import ml_collections
import numpy as np

import rundir


def test_metric_writer_drops_the_records_after_the_resume_step(tmp_path):
  writer = rundir.MetricWriter(str(tmp_path), resume_step=0, tensorboard=False)
  for step in (2, 4, 6):
    writer.write(step, "train", {"loss": float(step)})
  writer.write(4, "eval", {"accuracy": 0.5})
  writer.close()
  with open(tmp_path / rundir.METRICS, "a", encoding="utf-8") as f:
    f.write('{"step": 8, "split": "tra')  # A line cut short by a kill.

  writer = rundir.MetricWriter(str(tmp_path), resume_step=4, tensorboard=False)
  assert writer.has("train", 4) and writer.has("eval", 4) and not writer.has("train", 6)
  writer.write(6, "train", {"loss": 6.5})
  writer.close()
  assert rundir.read_metrics(str(tmp_path), "train") == [
      {"step": 2, "split": "train", "loss": 2.0}, {"step": 4, "split": "train", "loss": 4.0},
      {"step": 6, "split": "train", "loss": 6.5}]
  assert rundir.read_metrics(str(tmp_path), "eval") == [{"step": 4, "split": "eval", "accuracy": 0.5}]


def test_config_round_trip(tmp_path):
  assert not rundir.has_metrics(str(tmp_path))
  config = ml_collections.ConfigDict({"task": "orientation", "seed": 3, "model": {"features": (8, 16)}})
  rundir.write_config(str(tmp_path), config)
  read = rundir.read_config(str(tmp_path))
  assert read.task == "orientation" and read.seed == 3 and tuple(read.model.features) == (8, 16)
  with open(tmp_path / rundir.CONFIG, encoding="utf-8") as f:
    assert json.load(f)["seed"] == 3


def test_an_unreadable_checkpoint_is_moved_aside(tmp_path):
  workdir = str(tmp_path)
  state = {"params": {"w": np.zeros(3, np.float32)}}
  checkpoints = rundir.checkpoint_manager(workdir, max_to_keep=2)
  for step in (1, 2):
    rundir.save_checkpoint(checkpoints, step, {"params": {"w": np.full(3, step, np.float32)}})
  checkpoints.wait_until_finished()
  assert rundir.latest_params(workdir)[0] == 2
  for directory, _, files in os.walk(tmp_path / rundir.CHECKPOINTS / "2"):
    for name in files:
      open(os.path.join(directory, name), "w").close()  # Empties the file.

  restored = rundir.restore_newest(checkpoints, workdir, state)
  checkpoints.close()
  np.testing.assert_array_equal(restored["params"]["w"], np.full(3, 1.0))
  assert [name.split("-")[0] for name in os.listdir(tmp_path / rundir.BROKEN_CHECKPOINTS)] == ["2"]
  step, params = rundir.latest_params(workdir)
  assert step == 1 and np.asarray(params["w"]).tolist() == [1.0, 1.0, 1.0]
