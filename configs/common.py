"""Fields every experiment config has; `train.py` reads only these and `task`."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = ""  # The module tasks/<task>.py that supplies data, model, loss and evaluation.
  config.seed = 0  # Initialisation and the training data stream.
  config.num_train_steps = 1000
  config.batch_size = 16  # Global batch, split over all devices.
  # The models' activations: "float32" or "bfloat16". Parameters, optimizer state, checkpoints, normalisation
  # statistics and the losses stay float32.
  config.compute_dtype = "float32"

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"  # "adamw", "adam" or "sgd" (with momentum).
  config.optimizer.learning_rate = 1e-3  # Peak learning rate of the schedule.
  config.optimizer.weight_decay = 1e-4  # adamw only.
  config.optimizer.momentum = 0.9  # sgd only.
  config.optimizer.grad_clip_norm = 1.0  # 0 disables clipping.

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "warmup_cosine"  # "warmup_cosine" or "constant".
  config.schedule.warmup_steps = 100
  config.schedule.final_learning_rate_factor = 0.01

  config.log_every_steps = 50
  config.eval_every_steps = 500  # Also evaluated after the last step.
  config.checkpoint_every_steps = 500  # Also saved after the last step.
  config.max_checkpoints_to_keep = 2
  config.on_nonfinite = "stop"  # A non-finite step stops the run ("stop") or is skipped and counted ("skip").
  config.progress_bar = True
  config.tensorboard = True  # TensorBoard event files next to metrics.jsonl (which is always written).
  config.write_figures = True  # The task's figures, drawn into the workdir after training.

  # A jax.profiler trace of steps start_step … start_step + num_steps − 1 into workdir/plugins/profile
  # (TensorBoard's profile plugin, or Perfetto); num_steps = 0 traces nothing.
  config.profile = ml_collections.ConfigDict()
  config.profile.start_step = 0
  config.profile.num_steps = 0
  return config
