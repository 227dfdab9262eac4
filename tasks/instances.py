"""Ship instance segmentation with embedding losses, scored with the Airbus F2 metric.

A U-Net maps an image to one foreground logit and the channels of an
instance embedding, trained with the foreground binary cross-entropy plus
`config.<method>.weight` times the loss that `config.method` names (the
ablation "semi_conv_eq5" reads `config.semi_conv`):

* "semi_conv": Novotny et al.'s semi-convolutional method. `losses.semi_convolution`
  adds the pixel coordinates, Ψ = Φ + s·(x, y) with s = half the image size,
  so Ψ is in pixels and each pixel can learn to point at its ship's centre;
  `losses.semi_conv_kernel_loss` trains eq. 5 with the steered-kernel
  cross-entropy of sampled seeds, its σ a trained parameter (log σ in the
  params), and `losses.extract_kernel_instances` reads instances at the
  kernel's 0.5 level set around seeds, with no radius to tune.
* "semi_conv_eq5": the ablation with eq. 5 alone (`losses.semi_conv_loss`),
  extracted by `losses.extract_instances` with the radius `config.semi_conv.distance`.
* "discriminative": De Brabandere et al.'s pull/push loss on plain
  (translation-invariant) embeddings, extracted the same way with a radius
  between δ_v and 2δ_d − δ_v.
* "spatial": Neven et al.'s spatial embeddings. Each pixel predicts its
  ship's centre (an offset plus its coordinate, in pixels), a bandwidth σ
  (in pixels) and a seed logit, trained with `losses.spatial_embedding_loss`;
  `losses.extract_spatial_instances` grows instances from the seeds with the
  learned σ, with no radius to tune.

Two baselines segment the same predicted foreground (probability > 0.5):
its connected components, and the classical nuclei watershed (`watershed_instances`:
the watershed of the negated Euclidean distance transform from markers at its
h-maxima, `config.watershed.h` pixels). Every method is scored with
`losses.f2_iou_score`; on DSB2018 also with the competition's mean AP
(`losses.average_precision`, "ap_<method>") and StarDist's AP pooled over the
test images at IoU 0.5, 0.75 and 0.9 (`losses.matching_counts`,
`losses.pooled_scores`; "pooled_ap50_<method>", …).

The data (`config.data_source`) are either the synthetic scenes of
`data.ships` (jitted functions of the step), evaluated on a fixed held-out
draw overall and on its splits (touching ships that can or cannot be told
apart in the image, and the other scenes); or Kaggle's Airbus layout in
`config.data_dir` (options in `config.airbus`), read with Grain (`data.airbus`) and evaluated on the
validation images at the original 768×768, with the predicted labels
upsampled, as Kaggle scores them; or the 2018 Data Science Bowl's nuclei in
`config.data_dir` (options in `config.dsb2018`, `data.dsb2018`), trained on
random crops and evaluated on whole held-out images, each padded to a square
the U-Net takes and scored at its own size.
"""

from collections.abc import Callable
import dataclasses
import functools
import os
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from data import airbus
from data import dsb2018
from data import kaggle
from data import ships
import losses
from models import UNet
import rundir
from tasks import base
from tasks.base import ConfigError
from tasks.base import Task

METHODS = ("semi_conv", "semi_conv_eq5", "discriminative", "spatial")
POOLED_THRESHOLDS = (0.5, 0.75, 0.9)  # The IoU thresholds of StarDist's pooled AP that DSB2018 runs report.
FIGURE_IMAGES = 6  # Held-out images in a run's figure.


@dataclasses.dataclass(frozen=True)
class _Method:
  """How one embedding loss reads the U-Net's output channels after the foreground logit."""

  num_channels: int
  # `((B, H, W, num_channels) outputs, params) -> what the loss and extraction read.
  embed: Callable[[jax.Array, dict], Any]
  loss: Callable[[Any, jax.Array, jax.Array], jax.Array]  # `(embedding, labels, rng) -> scalar`.
  extract: Callable[[jax.Array, Any], jax.Array]  # `(foreground probability, embedding) -> labels`.
  weight: float  # Of the loss, besides the foreground cross-entropy.
  params: dict = dataclasses.field(default_factory=dict)  # Trained parameters of the method, beside the U-Net's.


def _method(config: ml_collections.ConfigDict, image_size: int) -> _Method:
  if config.method not in METHODS:
    raise ConfigError(f"config.method must be one of {METHODS}, got {config.method!r}.")
  options = config["semi_conv" if config.method == "semi_conv_eq5" else config.method]
  max_instances = config.max_instances
  if config.method == "spatial":
    def embed(outputs, params):  # (centres e in pixels, bandwidths σ in pixels, seed logits)
      del params
      centres = losses.semi_convolution(options.output_scale * outputs[..., :2], scale=image_size / 2)
      # σ within a factor e of its initial value: an unbounded exp lets one pixel's σ dominate the smoothness term.
      return centres, options.initial_sigma * jnp.exp(jnp.tanh(outputs[..., 2])), outputs[..., 3]
    return _Method(
        num_channels=4, embed=embed, weight=options.weight,
        loss=lambda embedding, labels, rng: losses.spatial_embedding_loss(
            *embedding, labels, max_instances=max_instances, sampled_instances=options.sampled_instances, key=rng),
        extract=lambda probability, embedding: losses.extract_spatial_instances(
            *embedding, max_instances=config.extraction.max_instances, seed_threshold=options.seed_threshold))
  extract = functools.partial(losses.extract_instances, max_instances=config.extraction.max_instances,
                              distance=options.distance)
  semi_convolution = lambda outputs: losses.semi_convolution(options.output_scale * outputs, scale=image_size / 2)
  if config.method == "semi_conv":
    return _Method(
        num_channels=options.embedding_dims, weight=options.weight,
        params={"semi_conv_log_sigma": jnp.log(jnp.asarray(options.initial_sigma, jnp.float32))},
        embed=lambda outputs, params: (semi_convolution(outputs), jnp.exp(params["semi_conv_log_sigma"])),
        loss=lambda embedding, labels, rng: losses.semi_conv_kernel_loss(
            embedding[0], labels, sigma=embedding[1], key=rng, max_instances=max_instances,
            num_seeds=options.num_seeds, kernel=options.kernel, pull_weight=options.pull_weight,
            kernel_weight=options.kernel_weight),
        extract=lambda probability, embedding: losses.extract_kernel_instances(
            probability, embedding[0], sigma=embedding[1], max_instances=config.extraction.max_instances,
            kernel=options.kernel))
  if config.method == "semi_conv_eq5":
    return _Method(
        num_channels=options.embedding_dims, weight=options.weight,
        embed=lambda outputs, params: semi_convolution(outputs),
        loss=lambda embedding, labels, rng: losses.semi_conv_loss(embedding, labels, max_instances=max_instances),
        extract=extract)
  return _Method(
      num_channels=options.embedding_dims, weight=options.weight, embed=lambda outputs, params: outputs,
      loss=lambda embedding, labels, rng: losses.discriminative_loss(
          embedding, labels, max_instances=max_instances, delta_v=options.delta_v, delta_d=options.delta_d),
      extract=extract)


@dataclasses.dataclass(frozen=True)
class _Model:
  method: _Method
  init: Callable[[jax.Array], dict]  # `rng -> params`.
  predict: Callable[[dict, jax.Array], tuple[jax.Array, jax.Array]]  # `(foreground logits, embedding)`.
  segment: Callable[[dict, jax.Array], tuple[jax.Array, jax.Array]]  # `(instances, connected components)`.


DATA_SOURCES = ("synthetic", "airbus", "dsb2018")


def size_multiple(config: ml_collections.ConfigDict) -> int:
  """The U-Net's input sides must be multiples of this: 2^(levels − 1)."""
  return 2 ** (len(config.model.features) - 1)


def _input_channels(config: ml_collections.ConfigDict) -> int:
  return {"synthetic": 1, "airbus": 3, "dsb2018": config.dsb2018.channels}[config.data_source]


def _model(config: ml_collections.ConfigDict) -> _Model:
  if config.data_source not in DATA_SOURCES:
    raise ConfigError(f"config.data_source must be one of {DATA_SOURCES}, got {config.data_source!r}.")
  synthetic = config.data_source == "synthetic"
  training_size = config.image_size if synthetic else config[config.data_source].crop_size or config.image_size
  method = _method(config, training_size)
  unet = UNet(features=tuple(config.model.features), out_channels=1 + method.num_channels,
              dtype=base.compute_dtype(config))

  def predict(params, images):
    # In float32 from here: the coordinates Ψ adds need more than bfloat16's 8 bits at 64 pixels.
    unet_params = {name: value for name, value in params.items() if name not in method.params}
    outputs = unet.apply({"params": unet_params}, images - 0.3).astype(jnp.float32)
    # The coordinate scale follows the (square) input, so that Ψ is in pixels on crops and whole images alike.
    embed = method.embed if images.shape[1] == training_size else _method(config, images.shape[1]).embed
    return outputs[..., 0], embed(outputs[..., 1:], params)

  @jax.jit
  def segment(params, images):
    logits, embedding = predict(params, images)
    probability = jax.nn.sigmoid(logits)
    return method.extract(probability, embedding), losses.connected_components(probability > 0.5), probability

  image_shape = (config.image_size, config.image_size, _input_channels(config))
  init_unet = base.init_on_images(unet, image_shape)
  return _Model(method=method, init=lambda rng: {**init_unet(rng), **method.params}, predict=predict,
                segment=segment)


def watershed_instances(probability: np.ndarray, *, h: float, threshold: float = 0.5) -> np.ndarray:
  """The classical nuclei baseline: `(B, H, W)` int32 labels of a `(B, H, W)` foreground probability.

  The foreground (probability > `threshold`) is flooded by `skimage.segmentation.watershed` over the
  negated Euclidean distance to the background (`scipy.ndimage.distance_transform_edt`), from one
  marker per connected h-maxima region of that distance (`skimage.morphology.h_maxima`: maxima at
  least `h` pixels above every path to a higher one). A flat ridge (an elongated object) is one marker,
  and two touching round objects get one each once the neck between them is `h` pixels narrower than
  their radii. Runs on the host, image by image.
  """
  # Imported when evaluated: scikit-image takes a second to import.
  from scipy import ndimage
  from skimage import morphology
  from skimage import segmentation
  probability = np.asarray(probability)
  labels = np.zeros(probability.shape, np.int32)
  for image, foreground in zip(labels, probability > threshold):
    if foreground.any():
      distance = ndimage.distance_transform_edt(foreground)
      markers, _ = ndimage.label(morphology.h_maxima(distance, h))
      image[...] = segmentation.watershed(-distance, markers, mask=foreground)
  return labels


def segmenter(config: ml_collections.ConfigDict) -> Callable[[dict, np.ndarray], np.ndarray]:
  """`(params, images) -> instance labels` of a run's model, for images as its data source gives them.

  `images` are `(B, H, W, channels)` floats in [0, 1], square with sides a multiple of `size_multiple`
  (`config.image_size` for the synthetic scenes and Airbus, a padded whole image for DSB2018); the labels
  are `(B, H, W)` int32, 0 for the background. Nothing of the data is read.
  """
  segment = _model(config).segment
  return lambda params, images: np.asarray(segment(params, images)[0])


def build(config: ml_collections.ConfigDict) -> Task:
  model = _model(config)
  method, predict, segment = model.method, model.predict, model.segment

  def init(rng):
    return model.init(rng), {}

  def loss(params, task_state, batch, rng):
    logits, embedding = predict(params, batch["image"])
    foreground = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, (batch["labels"] > 0).astype(jnp.float32)))
    embedding_loss = method.loss(embedding, batch["labels"], rng)
    metrics = {"foreground_loss": foreground, "embedding_loss": embedding_loss}
    return foreground + method.weight * embedding_loss, (metrics, task_state)

  # Under jit the objects beyond `max_instances` (specks of a noisy foreground) merge instead of raising.
  score = jax.jit(functools.partial(losses.f2_iou_score, reduction="none", max_instances=config.eval.max_instances))
  names = (config.method, "connected_components", "watershed")
  # DSB2018 is also scored as its competition (mean AP) and as StarDist reports it (AP pooled over the images).
  nuclei_scores = config.data_source == "dsb2018"
  mean_ap = jax.jit(functools.partial(losses.average_precision, reduction="none",
                                      max_instances=config.eval.max_instances))
  counts = jax.jit(functools.partial(losses.matching_counts, thresholds=POOLED_THRESHOLDS,
                                     max_instances=config.eval.max_instances))
  data = _data(config)

  def held_out(params):
    """`(images, true labels, [each name's predicted labels])` per evaluation batch, labels at the scoring size."""
    for images, true_labels in data.evaluation_batches():
      instances, components, probability = segment(params, images)
      predictions = (instances, components, watershed_instances(probability, h=config.watershed.h))
      yield images, true_labels, [data.at_scoring_size(np.asarray(p), true_labels.shape[1:]) for p in predictions]

  def evaluate(params, task_state):
    del task_state
    scores = {name: [] for name in names}
    mean_aps = {name: [] for name in names}
    totals = {name: np.zeros((3, len(POOLED_THRESHOLDS)), np.int64) for name in names}  # TP, FP, FN.
    for _, true_labels, predictions in held_out(params):
      for name, labels in zip(names, predictions):
        scores[name].append(np.asarray(score(labels, true_labels)))
        if nuclei_scores:
          mean_aps[name].append(np.asarray(mean_ap(labels, true_labels)))
          totals[name] += np.asarray(counts(labels, true_labels))
    metrics = {}
    for name in names:
      per_image = np.concatenate(scores[name])
      metrics[f"f2_{name}"] = float(per_image.mean())
      for split, members in data.splits.items():
        metrics[f"{split}/f2_{name}"] = float(per_image[members].mean()) if members.any() else float("nan")
      if nuclei_scores:
        metrics[f"ap_{name}"] = float(np.concatenate(mean_aps[name]).mean())
        pooled = np.asarray(losses.pooled_scores(losses.MatchingCounts(*totals[name])).average_precision)
        for threshold, value in zip(POOLED_THRESHOLDS, pooled):
          metrics[f"pooled_ap{round(100 * threshold)}_{name}"] = float(value)
    return metrics

  def write_figures(params, task_state, workdir):
    del task_state
    rows = _first_rows(data, held_out(params), FIGURE_IMAGES)
    draw = functools.partial(_plot_instances, rows, data.describe(len(rows)), names)
    return base.write_figure(workdir, "instances.png", draw)

  return Task(init=init, train_batch=data.train_batch, train_loader=data.train_loader, loss=loss,
              evaluate=evaluate, write_figures=write_figures)


def _first_rows(data: "_Data", batches, count: int) -> list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]]:
  """`(displayed image, true labels, [predicted labels])` of the first `count` held-out images, from
  `batches` of `(images, true labels, [predictions])` at the scoring size."""
  rows = []
  for images, true_labels, predictions in batches:
    displayed = data.display(images, true_labels.shape[1:])
    rows += [(displayed[i], true_labels[i], [p[i] for p in predictions]) for i in range(len(images))]
    if len(rows) >= count:
      break
  return rows[:count]


def plot_runs(runs: list[tuple[str, str]], path: str, *, num_images: int = FIGURE_IMAGES) -> None:
  """One figure of several runs on the same held-out images: each image, its true instances and the
  instances of each run's method, titled by the run's label.

  `runs` are `(label, workdir)` of finished runs of one data source; the held-out set is the first run's
  (`config.data_dir` as it recorded it), and each run's newest checkpoint is read.
  """
  configs = [rundir.read_config(workdir) for _, workdir in runs]
  data = _data(configs[0])
  models = [(segmenter(config), rundir.latest_params(workdir)[1]) for config, (_, workdir) in zip(configs, runs)]

  def batches():
    for images, true_labels in data.evaluation_batches():
      yield images, true_labels, [data.at_scoring_size(segment(params, images), true_labels.shape[1:])
                                  for segment, params in models]

  rows = _first_rows(data, batches(), num_images)
  _plot_instances(rows, data.describe(len(rows)), [label for label, _ in runs], path)


@dataclasses.dataclass(frozen=True)
class _Data:
  """Training data and the held-out set of one source, as the task reads them.

  Attributes:
    train_batch: procedural `(seed, step) -> batch`, or None.
    train_loader: Grain `(seed, process_index, process_count) -> iterator`, or None.
    evaluation_batches: `() -> iterable of (images, true labels at the scoring size)`, in a fixed order.
    at_scoring_size: `(predicted (B, h, w) labels, (H, W)) -> (B, H, W)` labels at the true labels' size.
    splits: `{split name: boolean (num held-out images,)}` of the subsets reported besides "all".
    display: `(images, (H, W) of their true labels) -> (B, h, w)` or `(B, h, w, 3)` arrays for the figure,
      the part of the images the true labels cover.
    describe: `n -> titles` of the first n held-out images.
  """

  train_batch: Callable | None
  train_loader: Callable | None
  evaluation_batches: Callable
  at_scoring_size: Callable
  splits: dict[str, np.ndarray]
  display: Callable
  describe: Callable[[int], list[str]]


def _data(config: ml_collections.ConfigDict) -> _Data:
  return {"synthetic": _synthetic, "airbus": _airbus, "dsb2018": _dsb2018}[config.data_source](config)


def _synthetic(config: ml_collections.ConfigDict) -> _Data:
  sample_one = functools.partial(ships.sample_scene, size=config.image_size, **config.data)
  sample = lambda key, num: jax.vmap(sample_one)(jax.random.split(key, num))
  scenes = jax.jit(sample, static_argnums=1)(jax.random.key(config.eval.seed), config.eval.num_examples)
  touching, distinguishable = np.asarray(scenes["touching"]), np.asarray(scenes["distinguishable"])

  def evaluation_batches():
    for i in range(0, config.eval.num_examples, config.eval.batch_size):
      yield scenes["image"][i:i + config.eval.batch_size], scenes["labels"][i:i + config.eval.batch_size]

  def describe(n):
    return [("touching, distinguishable" if distinguishable[i] else "touching, identical") if touching[i]
            else "scene" for i in range(n)]

  return _Data(
      train_batch=base.sampled_batches(sample, config.batch_size), train_loader=None,
      evaluation_batches=evaluation_batches, at_scoring_size=lambda labels, shape: labels,
      splits={"distinguishable": touching & distinguishable, "indistinguishable": touching & ~distinguishable,
              "separate": ~touching},
      display=lambda images, shape: np.asarray(images[..., 0]), describe=describe)


def _airbus(config: ml_collections.ConfigDict) -> _Data:
  """The Kaggle layout in `config.data_dir`, checked in full before anything is compiled."""
  if not config.data_dir:
    raise ConfigError("config.data_source='airbus' needs --config.data_dir=DIR, the directory of the Kaggle layout.")
  try:
    segmentations = airbus.read_layout(config.data_dir)
    image_dir = os.path.join(config.data_dir, airbus.TRAIN_IMAGES)
    airbus.check_images([os.path.join(image_dir, image_id) for image_id in segmentations],
                        num_threads=config.airbus.num_threads)
    train_ids, validation_ids = kaggle.split_image_ids(
        list(segmentations), validation_fraction=config.airbus.validation_fraction, seed=config.airbus.split_seed)
  except (FileNotFoundError, ValueError) as error:
    raise ConfigError(str(error)) from None
  most_ships = max(len(segmentations[i]) for i in segmentations)
  if most_ships > config.max_instances:
    raise ConfigError(f"An image in {config.data_dir} has {most_ships} ships, more than config.max_instances="
                      f"{config.max_instances}.")
  validation_ids = validation_ids[:config.eval.num_examples]
  source = airbus.AirbusShips(image_dir, segmentations, train_ids, size=config.image_size)

  def train_loader(seed, process_index, process_count):
    batches = kaggle.training_batches(source, seed=seed, batch_size=config.batch_size // process_count,
                                      process_index=process_index, process_count=process_count,
                                      crop_size=config.airbus.crop_size)
    options = grain.ReadOptions(num_threads=config.airbus.num_threads, prefetch_buffer_size=2)
    return iter(batches.to_iter_dataset(options))

  @functools.cache
  def validation_labels():  # At Kaggle's 768×768.
    return np.stack([airbus.instance_labels(segmentations[i], airbus.IMAGE_SHAPE, i) for i in validation_ids])

  def evaluation_batches():
    for i in range(0, len(validation_ids), config.eval.batch_size):
      ids = validation_ids[i:i + config.eval.batch_size]
      images = np.stack([airbus.load_image(os.path.join(image_dir, image_id), config.image_size) for image_id in ids])
      yield images, validation_labels()[i:i + len(ids)]

  def at_scoring_size(labels, shape):
    return np.stack([airbus.resize_labels(image, shape) for image in np.asarray(labels)])

  return _Data(train_batch=None, train_loader=train_loader, evaluation_batches=evaluation_batches,
               at_scoring_size=at_scoring_size, splits={}, display=lambda images, shape: np.asarray(images),
               describe=lambda n: validation_ids[:n])


def _dsb2018(config: ml_collections.ConfigDict) -> _Data:
  """The DSB2018 layout in `config.data_dir`, decoded and checked in full before anything is compiled."""
  options = config.dsb2018
  if not config.data_dir:
    raise ConfigError("config.data_source='dsb2018' needs --config.data_dir=DIR, the directory holding "
                      f"{dsb2018.TRAIN_DIR}/.")
  multiple = size_multiple(config)
  if options.crop_size < 1 or options.crop_size % multiple:
    raise ConfigError(f"config.dsb2018.crop_size must be a positive multiple of {multiple} (the U-Net's "
                      f"{len(config.model.features)} levels), got {options.crop_size}.")
  if options.channels not in (1, 3):
    raise ConfigError(f"config.dsb2018.channels must be 1 (grey) or 3 (RGB), got {options.channels}.")
  try:
    modality_of, decoded = dsb2018.read_data_set(
        config.data_dir, dsb2018.list_images(config.data_dir), channels=options.channels,
        modalities=tuple(options.modalities), num_threads=options.num_threads)
    train_ids, test_ids = dsb2018.split_ids(modality_of, modalities=tuple(options.modalities),
                                            test_fraction=options.test_fraction, seed=options.split_seed)
  except (FileNotFoundError, ValueError) as error:
    raise ConfigError(str(error)) from None
  most_nuclei = max(int(decoded[i].labels.max()) for i in test_ids)
  if most_nuclei > config.eval.max_instances:
    raise ConfigError(f"A test image in {config.data_dir} has {most_nuclei} nuclei, more than "
                      f"config.eval.max_instances={config.eval.max_instances}.")
  test_ids = test_ids[:config.eval.num_examples]
  source = dsb2018.Nuclei(decoded, train_ids)

  def train_loader(seed, process_index, process_count):
    batches = kaggle.training_batches(source, seed=seed, batch_size=config.batch_size // process_count,
                                      process_index=process_index, process_count=process_count,
                                      crop_size=options.crop_size)
    read_options = grain.ReadOptions(num_threads=options.num_threads, prefetch_buffer_size=2)
    return iter(batches.to_iter_dataset(read_options))

  def evaluation_batches():  # One whole image at a time, padded to a square the U-Net takes.
    for image_id in test_ids:
      nucleus = decoded[image_id]
      yield dsb2018.pad_to_square(dsb2018.normalise(nucleus), multiple)[None], nucleus.labels[None].astype(np.int32)

  def display(images, shape):  # The image without its padding; a grey image as (B, H, W).
    images = np.asarray(images)[:, :shape[0], :shape[1]]
    return images[..., 0] if images.shape[-1] == 1 else images

  return _Data(train_batch=None, train_loader=train_loader, evaluation_batches=evaluation_batches,
               at_scoring_size=lambda labels, shape: labels[:, :shape[0], :shape[1]], splits={}, display=display,
               describe=lambda n: [f"{i[:12]}… ({decoded[i].modality})" for i in test_ids[:n]])


def _plot_instances(rows, titles, names, path: str) -> None:
  """One row per image: the image, its true instances, and each method's instances (`names`)."""
  plt = base.pyplot()

  def show(axis, image):
    if image.ndim == 2:
      axis.imshow(image, cmap="gray")
    else:
      axis.imshow(image)

  def overlay(axis, image, labels, title):
    show(axis, image)
    labels = np.asarray(labels)
    _, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape)
    axis.imshow(np.ma.array(compact % 10, mask=labels == 0), cmap="tab10", vmin=0, vmax=9, alpha=0.6,
                extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
    axis.set_title(f"{title} ({len(np.unique(labels[labels > 0]))})")
    axis.axis("off")

  columns = 2 + len(names)
  figure, axes = plt.subplots(len(rows), columns, figsize=(3 * columns, 3 * len(rows)), squeeze=False)
  for row, (image, true_labels, predictions) in enumerate(rows):
    show(axes[row, 0], image)
    axes[row, 0].set_title(titles[row])
    axes[row, 0].axis("off")
    overlay(axes[row, 1], image, true_labels, "true instances")
    for column, (name, labels) in enumerate(zip(names, predictions), start=2):
      overlay(axes[row, column], image, labels, name.replace("_", " "))
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  plt.close(figure)
