"""Ship instance segmentation with embedding losses: semi-convolutional (Novotny et al., ECCV 2018) and peers.

    python train.py --config=configs/instances.py --workdir=/tmp/instances
    python train.py --config=configs/instances.py --config.method=discriminative --workdir=/tmp/discriminative
    python train.py --config=configs/instances.py:airbus --config.data_dir=/data/airbus --workdir=/tmp/airbus
    python train.py --config=configs/instances.py:dsb2018 --config.data_dir=../shared/data/dsb2018 --workdir=/tmp/dsb

The default trains on the synthetic scenes of `data/ships.py`; the "airbus" variant reads Kaggle's
Airbus Ship Detection layout (`train_v2/*.jpg` and `train_ship_segmentations_v2.csv`) in `data_dir`;
the "dsb2018" variant reads the 2018 Data Science Bowl's nuclei (`stage1_train/<ImageId>/images/*.png`
and `masks/*.png`) in `data_dir`, the fluorescence images by default, as StarDist evaluated them.
"""

import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """`variant`: "" for the synthetic scenes on the 2-core CPU, "airbus" or "dsb2018" for Kaggle's data in `data_dir`."""
  config = common.base_config()
  config.task = "instances"
  # The embedding loss: "semi_conv", "semi_conv_eq5" (its ablation: eq. 5 alone), "discriminative" or "spatial".
  config.method = "semi_conv"
  config.data_source = "synthetic"  # "synthetic" (data/ships.py), "airbus" or "dsb2018" (Kaggle's layouts in data_dir).
  config.image_size = 64
  # Keyword arguments of data.ships.sample_scene (besides the size).
  config.data = ml_collections.ConfigDict(dict(
      max_ships=6, max_group=3, harbour_probability=0.6, distinguishable_probability=0.5, ship_probability=0.5,
      min_length=12.0, max_length=24.0, min_width=4.0, max_width=6.0))
  config.max_instances = config.data.get_ref("max_ships")  # The largest instance id the losses see.

  # Each method's settings; the loss is the foreground BCE + weight × the embedding loss, and `distance` is
  # the radius of losses.extract_instances in the embedding's units.
  config.semi_conv = ml_collections.ConfigDict(dict(
      embedding_dims=2,  # C: the semi-convolutional operator adds the coordinates to the first two.
      output_scale=10.0,  # Φ = this × the network output, so Φ is in pixels at init.
      weight=0.1,  # Eq. 5 is in pixels per instance.
      # losses.semi_conv_kernel_loss ("semi_conv"): the kernel's σ in pixels is trained from this (as log σ).
      initial_sigma=2.0, kernel="laplacian", num_seeds=8,
      pull_weight=1.0,  # Of eq. 5.
      kernel_weight=10.0,  # Of the kernel cross-entropy, a mean over all pixels (mostly far background, ~0).
      distance=2.0))  # The radius of the "semi_conv_eq5" ablation's extraction.
  config.discriminative = ml_collections.ConfigDict(dict(
      embedding_dims=4, delta_v=0.5, delta_d=1.5, weight=1.0,
      distance=1.5))  # Between δ_v (an instance's spread) and 2δ_d − δ_v (the nearest other pixel).
  config.spatial = ml_collections.ConfigDict(dict(
      output_scale=10.0,  # Centre offsets = this × the network output, in pixels.
      initial_sigma=3.0,  # σ = this × exp(tanh(network output)), in pixels.
      seed_threshold=0.5,  # The smallest seed score that starts an instance.
      sampled_instances=None,  # Instances per image in the Lovász hinge (None: all; an int: flat in max_instances).
      weight=1.0))
  config.extraction = ml_collections.ConfigDict(dict(max_instances=12))  # Instances extracted per image.
  # The watershed baseline's markers: h-maxima of the distance to the background, h in pixels.
  config.watershed = ml_collections.ConfigDict(dict(h=1.0))

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

  config.data_dir = ""  # The Kaggle layout, for data_source="airbus".
  config.airbus = ml_collections.ConfigDict()
  config.airbus.crop_size = 0  # A random crop of the resized image (0: the whole image), per example.
  config.airbus.validation_fraction = 0.1  # Held out by image id, with split_seed.
  config.airbus.split_seed = 0
  config.airbus.num_threads = 8  # Grain's JPEG-decoding threads.
  config.dsb2018 = ml_collections.ConfigDict()
  config.dsb2018.crop_size = config.get_ref("image_size")  # Random training crops; whole images are evaluated.
  config.dsb2018.modalities = ("fluorescence",)  # Any of "fluorescence", "brightfield", "colour".
  config.dsb2018.test_fraction = 0.1  # Held out by image id, with split_seed: data/dsb2018_test_ids.txt.
  config.dsb2018.split_seed = 0
  config.dsb2018.channels = 1  # 1: grey (the mean of the colour channels); 3: RGB.
  config.dsb2018.num_threads = 8  # PNG-decoding threads of the one pass over the data set, and Grain's.
  if variant == "airbus":
    config.data_source = "airbus"
    config.data = ml_collections.ConfigDict()
    config.max_instances = 16  # Airbus images hold at most 15 ships.
    config.image_size = 256  # 768×768 images resized to this; scored at 768×768.
    config.semi_conv.update(dict(output_scale=40.0, distance=4.0))
    config.spatial.update(dict(output_scale=40.0, initial_sigma=8.0))
    config.extraction.max_instances = 24
    config.eval.num_examples = 512  # The first validation images.
    config.eval.batch_size = 16
    config.eval_every_steps = config.checkpoint_every_steps = 1000
    config.num_train_steps = 20000
  elif variant == "dsb2018":
    config.data_source = "dsb2018"
    config.data = ml_collections.ConfigDict()
    config.image_size = 128  # The training crops; the test images are whole, 256×256 to 1040×1388.
    # Renumbered 1…n per crop: a 128×128 crop of the fluorescence images meets at most 102 nuclei.
    config.max_instances = 128
    config.semi_conv.update(dict(output_scale=20.0, distance=4.0))
    # 16 instances per crop in the Lovász hinge, drawn afresh each step: the exact loss over 128 ids ran at
    # about 0.7 steps/s here, the sampled one's cost is flat in max_instances (BENCHMARKS.md).
    config.spatial.update(dict(output_scale=20.0, initial_sigma=5.0, sampled_instances=16))
    config.extraction.max_instances = 400  # Whole test images hold up to 375 nuclei.
    config.eval.num_examples = 54  # The whole held-out tenth of the 541 fluorescence images.
    config.eval.batch_size = 1  # Whole images, each at its own size.
    config.eval.max_instances = 512
    config.model.features = (16, 32, 64)
    config.batch_size = 8
    # About 20 minutes on the 2-core CPU: ~1 step/s, decoding the data set ~1 min, evaluating ~4 min.
    config.num_train_steps = 800
    config.eval_every_steps = 800
    config.checkpoint_every_steps = 200
  elif variant:
    raise ValueError(f"Unknown instances config variant {variant!r}; use '', 'airbus' or 'dsb2018'.")
  return config
