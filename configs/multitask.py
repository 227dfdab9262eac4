"""Digit localization (per-pixel map) + classification (class vector) with a trainable loss weight α.

    python train.py --config=configs/multitask.py --workdir=/tmp/multitask
    python train.py --config=configs/multitask.py --config.weighting=fixed --config.alpha=0.1 ...
    python train.py --config=configs/multitask.py --config.weighting=uncertainty ...
    python train.py --config=configs/multitask.py --config.weighting=dwa ...
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.base_config()
  config.task = "multitask"
  config.weighting = "trainable"  # "fixed", "trainable", "uncertainty" or "dwa".
  config.alpha = 0.5  # "fixed": the weight of the localization loss (classification gets 1 − α).
  config.dwa_period = 50  # "dwa": steps per period, its "epoch".
  config.dwa_temperature = 2.0

  config.canvas_size = 32
  config.min_digit_size = 12.0
  config.max_digit_size = 18.0
  config.num_fragments = 4
  config.fragment_size = 7.0
  config.noise_std = 0.1

  config.model = ml_collections.ConfigDict()
  config.model.features = (8, 16, 32)

  config.eval = ml_collections.ConfigDict()
  config.eval.seed = 2018
  config.eval.num_examples = 1024

  config.num_train_steps = 800
  config.batch_size = 32
  # Plain Adam: weight decay would pull the weighting parameters towards equal weights.
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 3e-3
  config.log_every_steps = 25
  config.eval_every_steps = 400
  config.checkpoint_every_steps = 400
  return config
