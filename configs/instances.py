"""Ship instance segmentation with semi-convolutional embeddings (Novotny et al., ECCV 2018).

    python train.py --config=configs/instances.py --workdir=/tmp/instances
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.base_config()
  config.task = "instances"
  config.image_size = 64
  # Keyword arguments of data.ships.sample_scene (besides the size).
  config.data = ml_collections.ConfigDict(dict(
      max_ships=6, max_group=3, harbour_probability=0.5, ship_probability=0.5, min_length=12.0,
      max_length=24.0, min_width=4.0, max_width=6.0))

  config.embedding_dims = 2  # C: the semi-convolutional operator uses the first two.
  config.embedding_output_scale = 10.0  # Φ = this × the network output, so Φ is in pixels at init.
  config.embedding_weight = 0.1  # The semi-convolutional loss is in pixels per instance.
  config.extraction = ml_collections.ConfigDict(dict(max_instances=12, distance=2.0))

  config.model = ml_collections.ConfigDict()
  config.model.features = (16, 32, 64)

  config.eval = ml_collections.ConfigDict()
  config.eval.seed = 2018
  config.eval.num_examples = 256
  config.eval.batch_size = 64
  config.eval.max_instances = 32

  config.num_train_steps = 1100
  config.batch_size = 16
  config.optimizer.learning_rate = 3e-3
  config.eval_every_steps = 550
  config.checkpoint_every_steps = 550
  return config
