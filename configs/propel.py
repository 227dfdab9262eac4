"""Rotated-digit orientation regression with a PROPEL mixture head (Asad et al., ICPR 2020).

    python train.py --config=configs/propel.py --workdir=/tmp/propel_i2
    python train.py --config=configs/propel.py --config.num_components=4 ...
    python train.py --config=configs/propel.py --config.loss=weighted_propel ...   # PROPEL with learned weights
    python train.py --config=configs/propel.py --config.loss=mse ...   # point-estimate peer
    python train.py --config=configs/propel.py --config.loss=mdn ...   # mixture density network peer
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.base_config()
  config.task = "propel"
  # "propel", "weighted_propel" (PROPEL of a mixture with a learned weight per component), "mse" or "mdn"
  # (negative log-likelihood).
  config.loss = "propel"
  config.num_components = 2  # I, for "propel", "weighted_propel" and "mdn".
  config.sigma = 0.1  # Standard deviation of the ground-truth Gaussian (PROPEL).
  config.min_std = 0.01  # Floor of the predicted standard deviations.
  config.canvas_size = 32
  config.digit_size = 22.0  # Side of the upscaled 8×8 digit, in pixels.

  config.model = ml_collections.ConfigDict()
  config.model.features = (16, 32, 64)
  config.model.hidden = 128

  config.eval = ml_collections.ConfigDict()
  config.eval.seed = 2020
  config.eval.angles_per_digit = 4

  config.num_train_steps = 2000
  config.batch_size = 64
  config.optimizer.learning_rate = 2e-3
  config.log_every_steps = 100
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  return config
