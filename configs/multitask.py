"""Digit localization (per-pixel map) + classification (class vector), and a third head, with multi-task methods.

    python train.py --config=configs/multitask.py --workdir=/tmp/multitask
    python train.py --config=configs/multitask.py --config.weighting=fixed --config.alpha=0.1 ...
    python train.py --config=configs/multitask.py --config.weighting=uncertainty ...
    python train.py --config=configs/multitask.py --config.weighting=upgrad ...
    python train.py --config=configs/multitask.py:three_tasks --config.weighting=mgda ...
    python train.py --config=configs/multitask.py:multi_fashion --config.weighting=upgrad ...

`weighting` names a loss-level weighting (`losses.loss_weighting`) or a gradient-level method
(`losses.gradient_aggregator`); "three_tasks" adds a scalar head, the digit's size; "multi_fashion" trains
Pareto MTL's LeNet on Multi-Fashion (two classifications) from the IDX files in `--config.data_dir`.
"""

import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """`variant`: "" for localization + classification, "three_tasks" to add the digit's size, "multi_fashion"
  for Multi-Fashion's two classifications."""
  config = common.base_config()
  config.task = "multitask"
  config.num_tasks = 2  # localization, classification (and size, with 3).
  # Loss-level: any name in losses.LOSS_WEIGHTING_NAMES ("fixed", "trainable", "uncertainty", "dwa", "rlw",
  # "gls", "famo", "imtl_l", "stch", "pbi", "cosmos", …); gradient-level: any name in losses.AGGREGATOR_NAMES
  # ("upgrad", "mgda", "pcgrad", "cagrad", "nash_mtl", "gradnorm", …), which takes the names both levels have
  # ("mean", "sum", "constant", "random": the same updates); "scalarization.NAME" or "aggregation.NAME" choose.
  config.weighting = "trainable"
  config.alpha = 0.5  # "fixed" with two tasks: the weight of the localization loss (classification gets 1 − α).
  config.fixed_weights = ()  # "fixed" with three tasks: the three weights.
  # Options of losses.loss_weighting per method (the weights of "fixed", "stch", "pbi" and "cosmos" are the
  # ones above). DWA's period is its "epoch" in steps; TorchJD has no default for STCH's μ (LibMTL: 1),
  # PBI's θ (the paper: 5) or COSMOS's λ (the paper: 0.01 to 8).
  config.weighting_options = ml_collections.ConfigDict(dict(
      dwa=dict(period=50, temperature=2.0), stch=dict(mu=1.0), pbi=dict(theta=5.0), cosmos=dict(lambda_=1.0)))
  # Gradient-level methods aggregate the per-task gradients of these modules of the U-Net: its encoder.
  config.shared_params = ("ConvBlock_0", "ConvBlock_1", "ConvBlock_2")
  # Aggregate the per-task gradients of the encoder's output (its skip tensors and bottleneck) instead of
  # its parameters, as LibMTL's rep_grad: one backward pass of the encoder instead of N, an approximation.
  config.representation_gradients = False
  # Options of losses.gradient_aggregator per method, beyond TorchJD's defaults (CAGrad's c has none there;
  # 0.5 is LibMTL's and the paper's choice for multi-task benchmarks).
  # FairGrad's α has no default there either: α = 1 is proportional fairness, the paper's main setting.
  config.aggregator_options = ml_collections.ConfigDict(dict(cagrad=dict(c=0.5), fairgrad=dict(alpha=1.0)))

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
  if variant == "three_tasks":
    config.num_tasks = 3
    config.fixed_weights = (1 / 3, 1 / 3, 1 / 3)
  elif variant == "multi_fashion":
    _multi_fashion(config)
  elif variant:
    raise ValueError(f"Unknown multitask config variant {variant!r}; use '', 'three_tasks' or 'multi_fashion'.")
  return config


def _multi_fashion(config: ml_collections.ConfigDict) -> None:
  """Multi-Fashion (Lin et al., NeurIPS 2019; `data.multi_fashion`) with Pareto MTL's LeNet (`models.LeNet`):
  the classes of the top-left and the bottom-right item. MNIST's four IDX files in `data_dir` make it
  Multi-MNIST."""
  for name in ("canvas_size", "min_digit_size", "max_digit_size", "num_fragments", "fragment_size", "noise_std",
               "model"):
    del config[name]  # The digits' and the U-Net's: an override of them is an error here.
  config.data_source = "multi_fashion"
  config.data_dir = "/usr/share/datasets/fashion-mnist/"  # Debian's dataset-fashion-mnist.
  config.multi_fashion = ml_collections.ConfigDict(dict(seed=0))  # The pairs and shifts of both splits.
  config.shared_params = ("conv1", "conv2", "fc1")  # models.lenet.ENCODER_MODULES.
  config.eval = ml_collections.ConfigDict(dict(num_examples=20_000, batch_size=1000))
  # Pareto MTL trains its LeNet 100 epochs with batches of 256 (SGD, momentum 0.9, learning rate 1e-3
  # halved every 15 epochs). Here a run is about one minute of one CPU core, so that every method and the
  # fixed-weight sweep fit over 3 seeds: Adam at 3e-3, batches of 128, 500 steps, about half an epoch of
  # the 120,000 canvases (3e-3 learnt faster than Pareto MTL's 1e-3 in a 300-step trial).
  config.batch_size = 128
  config.num_train_steps = 500
  config.optimizer.learning_rate = 3e-3
  config.schedule.warmup_steps = 25
  config.log_every_steps = 25
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 250
