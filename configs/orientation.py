"""Orientation maps of fringe patterns with the angular loss θ^1.2.

    python train.py --config=configs/orientation.py --workdir=/tmp/orientation
    python train.py --config=configs/orientation.py:full --workdir=...  # GPU/TPU
    python train.py --config=configs/orientation.py --config.loss=mse ...  # MSE peer
"""

import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """`variant`: "" for the 2-core CPU default, "full" for a GPU or TPU run."""
  config = common.base_config()
  config.task = "orientation"
  config.loss = "angular"  # "angular" (θ^(1+δ)) or "mse" on (cos 2θ, sin 2θ).
  config.delta = 0.2
  config.image_size = 64

  # Keyword arguments of data.fringes.sample_fringes (besides the image size).
  config.data = ml_collections.ConfigDict(dict(
      min_carrier_period=5.0, max_carrier_period=20.0, max_chirp=0.8, num_bends=3,
      max_bend_strength=0.5, max_background=0.5, min_amplitude=0.3,
      max_amplitude_modulation=0.7, max_noise_std=1.0, min_period=2.5, max_period=40.0))

  config.model = ml_collections.ConfigDict()
  config.model.features = (16, 32, 64)

  # The held-out set is drawn from its own seed, the same for every run.
  config.eval = ml_collections.ConfigDict()
  config.eval.seed = 2022
  config.eval.num_examples = 256
  config.eval.batch_size = 64
  config.eval.noisy_threshold = 0.5  # Images with noise_std above this form the "noisy" split.

  config.num_train_steps = 1300
  config.batch_size = 16
  config.optimizer.learning_rate = 3e-3
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500

  if variant == "full":
    config.image_size = 128
    config.model.features = (32, 64, 128, 256)
    config.batch_size = 64
    config.num_train_steps = 13000
    config.optimizer.learning_rate = 1e-3
    config.eval.num_examples = 1024
    config.eval_every_steps = 2000
    config.checkpoint_every_steps = 2000
  elif variant:
    raise ValueError(f"Unknown orientation config variant {variant!r}; use '' or 'full'.")
  return config
