"""Tiny versions of the experiment configs, for tests of the training loop.

`get_config(experiment)` works in-process and on the command line:
`python train.py --config=tests/tiny_configs.py:orientation --workdir=DIR`.
Each has a batch of 8 so that it also splits over 8 devices. They write
neither TensorBoard events nor figures (seconds per run); the tests of
those turn them on.
"""

import ml_collections

from configs import instances
from configs import multitask
from configs import orientation
from configs import propel


def _orientation() -> ml_collections.ConfigDict:
  config = orientation.get_config()
  config.image_size = 16
  config.model.features = (4,)
  config.eval.num_examples = 8
  config.eval.batch_size = 8
  return config


def _propel() -> ml_collections.ConfigDict:
  config = propel.get_config()
  config.update(dict(canvas_size=16, digit_size=12.0))
  config.model.features, config.model.hidden = (4,), 8
  config.eval.angles_per_digit = 1
  return config


def _multitask() -> ml_collections.ConfigDict:
  config = multitask.get_config()
  config.update(dict(canvas_size=16, min_digit_size=8.0, max_digit_size=10.0))
  config.weighting_options.dwa.period = 1
  config.model.features = (4,)
  config.shared_params = ("ConvBlock_0",)  # The one level's block; the heads are Conv_0 and Dense_0.
  config.eval.num_examples = 16
  return config


def _three_tasks() -> ml_collections.ConfigDict:
  """A gradient-level method with state (GradNorm's weights and initial losses) on three heads."""
  config = multitask.get_config("three_tasks")
  config.update(dict(canvas_size=16, min_digit_size=8.0, max_digit_size=10.0, weighting="gradnorm"))
  config.model.features = (4, 8)
  config.shared_params = ("ConvBlock_0", "ConvBlock_1")
  config.eval.num_examples = 16
  return config


def _instances() -> ml_collections.ConfigDict:
  config = instances.get_config()
  config.image_size = 16
  config.data.update(dict(max_ships=2, min_length=6.0, max_length=10.0, min_width=2.0, max_width=3.0))
  config.model.features = (4,)
  config.eval.num_examples = 8
  config.eval.batch_size = 8
  return config


def _airbus() -> ml_collections.ConfigDict:
  """Needs `data_dir`: a directory that `tests/airbus_layout.py` wrote."""
  config = instances.get_config("airbus")
  config.image_size = 32
  config.model.features = (4,)
  config.airbus.update(dict(validation_fraction=0.25, num_threads=2))
  config.eval.update(dict(num_examples=4, batch_size=4))
  return config


def _dsb2018() -> ml_collections.ConfigDict:
  """Needs `data_dir`: a directory that `tests/test_dsb2018.py` wrote. Two levels: inputs padded to even sides."""
  config = instances.get_config("dsb2018")
  config.image_size = 16
  config.model.features = (4, 8)
  config.dsb2018.update(dict(test_fraction=0.5, num_threads=2))
  config.update(dict(max_instances=8))
  config.extraction.max_instances = 8
  config.eval.update(dict(num_examples=4, max_instances=16))
  return config


def _multi_fashion() -> ml_collections.ConfigDict:
  """Needs `data_dir`: a directory that `tests/test_multi_fashion.py` wrote (never Debian's default)."""
  config = multitask.get_config("multi_fashion")
  config.data_dir = ""
  config.eval.update(dict(num_examples=8, batch_size=8))
  return config


EXPERIMENTS = {"orientation": _orientation, "propel": _propel, "multitask": _multitask, "three_tasks": _three_tasks,
               "instances": _instances}
# Configs of experiments that read files: not in the loops over EXPERIMENTS.
DATA_SETS = {"airbus": _airbus, "dsb2018": _dsb2018, "multi_fashion": _multi_fashion}


def get_config(experiment: str = "orientation") -> ml_collections.ConfigDict:
  config = {**EXPERIMENTS, **DATA_SETS}[experiment]()
  config.update(dict(num_train_steps=4, batch_size=8, log_every_steps=1, eval_every_steps=100,
                     checkpoint_every_steps=2, progress_bar=False,
                     tensorboard=False, write_figures=False))
  config.schedule.name = "constant"
  return config
