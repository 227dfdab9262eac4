"""Localization, classification and (with three tasks) size of a digit on a cluttered canvas.

One input, heads of different output shapes sharing a U-Net encoder: head 1
a per-pixel localization map (sigmoid, binary cross-entropy against the
digit's stroke mask, averaged over pixels), head 2 the class (softmax
cross-entropy over 10 digits), and with `config.num_tasks = 3` head 3 a
scalar, the digit's size rescaled to [0, 1] (squared error), read from the
same pooled bottleneck as the class.

With `config.data_source = "multi_fashion"` (configs/multitask.py:multi_fashion)
the input is instead Multi-Fashion, or Multi-MNIST (`data.multi_fashion`,
read from the IDX files in `config.data_dir`), and the model Pareto MTL's
LeNet (`models.LeNet`): two tasks, the classes of the top-left and of the
bottom-right item (softmax cross-entropy each), evaluated by each one's
accuracy and loss on the first `config.eval.num_examples` test canvases.

`config.weighting` names the multi-task method:

* a loss-level weighting (`losses.loss_weighting`, any name in
  `losses.LOSS_WEIGHTING_NAMES` that is not a gradient-level one): "fixed"
  ((α, 1 − α) for two tasks, `config.fixed_weights` for three, which are also
  the preference vector of "stch", "pbi" and "cosmos"), "trainable" α,
  "uncertainty", "dwa", "rlw", "gls", "famo", "imtl_l", …, with the options
  `config.weighting_options[name]`. Trainable weights live in the parameter
  pytree under "weighting" and are updated by the model's optimizer; any
  other state of the weighting is the task state.
* a gradient-level method (`losses.gradient_aggregator`: "upgrad", "mgda",
  "pcgrad", …): the task hands the loop its per-task losses and the shared
  parameters (`config.shared_params`, the encoder's blocks), and the loop
  aggregates the per-task gradients of those (`tasks.base.TaskGradients`).

Held-out evaluation: the localization IoU (prediction = sigmoid > 0.5,
intersection over union of each image's masks, averaged over images), the
classification accuracy and, with three tasks, the mean absolute error of
the size in pixels, on the held-out digits at fixed random placements.
"""

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from data import digits
from data import multi_fashion
import losses
from models import LeNet
from models import UNet
from models import lenet
from models.unet import encoder_module_names
import rundir
from tasks import base
from tasks.base import ConfigError
from tasks.base import Task
from tasks.base import TaskGradients

TASK_NAMES = ("localization", "classification", "size")
# Multi-Fashion / Multi-MNIST (config.data_source = "multi_fashion"): the class of each item.
CLASSIFICATIONS = ("top_left", "bottom_right")


def _sampler(config: ml_collections.ConfigDict, split: dict[str, jax.Array]):
  """`(key, num) -> batch` of digits from `split` on cluttered canvases."""
  place = functools.partial(
      digits.cluttered_canvas, canvas=config.canvas_size, min_size=config.min_digit_size,
      max_size=config.max_digit_size, fragment_size=config.fragment_size, noise_std=config.noise_std)
  count = split["labels"].shape[0]

  def sample(key, num):
    index_key, fragment_key, place_key = jax.random.split(key, 3)
    index = jax.random.randint(index_key, (num,), 0, count)
    fragments = jax.random.randint(fragment_key, (num, config.num_fragments), 0, count)
    placed = jax.vmap(place)(jax.random.split(place_key, num), split["images"][index], split["images"][fragments])
    return {**placed, "label": split["labels"][index]}

  return sample


def weighting_from_config(config: ml_collections.ConfigDict) -> losses.LossWeighting:
  """`config.weighting` with its `config.weighting_options`; the preference vector ((α, 1 − α) or
  `config.fixed_weights`) and `config.seed` go to the methods that take `weights` or `seed`."""
  preference = (config.alpha, 1.0 - config.alpha) if config.num_tasks == 2 else tuple(config.fixed_weights)
  accepted = losses.scalarization.option_names(config.weighting)
  shared = {name: value for name, value in dict(weights=preference, seed=config.seed).items() if name in accepted}
  return losses.loss_weighting(config.weighting, num_tasks=config.num_tasks,
                               **{**shared, **config.weighting_options.get(config.weighting, {})})


def shared_mask(config: ml_collections.ConfigDict, params) -> dict:
  """True for the model's top-level modules that `config.shared_params` names, false elsewhere."""
  return {"model": {name: jax.tree.map(lambda _, shared=name in config.shared_params: shared, module)
                    for name, module in params["model"].items()},
          "weighting": jax.tree.map(lambda _: False, params["weighting"])}


@dataclasses.dataclass(frozen=True)
class _TwoItems:
  """Multi-Fashion or Multi-MNIST (`data.multi_fashion`) as `build` reads it instead of the digits.

  Attributes:
    image_shape: `(H, W, 1)` of the canvases.
    train_loader: `Task.train_loader`, the Grain stream of the training canvases.
    test: the held-out canvases, evaluated in order in batches of `config.eval.batch_size`.
  """

  image_shape: tuple[int, int, int]
  train_loader: Callable[[int, int, int], Any]
  test: multi_fashion.MultiItems


def _two_items(config: ml_collections.ConfigDict) -> _TwoItems:
  """The IDX files in `config.data_dir`, read and paired before anything is compiled."""
  if config.num_tasks != 2:
    raise ConfigError(f"config.data_source='multi_fashion' has two tasks ({', '.join(CLASSIFICATIONS)}), "
                      f"got config.num_tasks={config.num_tasks}.")
  if not config.data_dir:
    raise ConfigError("config.data_source='multi_fashion' needs --config.data_dir=DIR, the directory of the four "
                      "IDX files of Fashion-MNIST (or MNIST).")
  try:
    splits = multi_fashion.load(config.data_dir, seed=config.multi_fashion.seed)
  except (FileNotFoundError, ValueError) as error:
    raise ConfigError(str(error)) from None
  train = splits["train"]

  def train_loader(seed, process_index, process_count):
    return multi_fashion.training_iterator(train, seed=seed, batch_size=config.batch_size // process_count,
                                           process_index=process_index, process_count=process_count)

  return _TwoItems(image_shape=train.image_shape, train_loader=train_loader, test=splits["test"])


def _per_example_classifications(outputs: tuple[jax.Array, ...], labels: jax.Array) -> dict[str, jax.Array]:
  """`loss_<task>` (softmax cross-entropy) and `accuracy_<task>` (0 or 1) of each example `(B,)`, from the
  LeNet's logits per task and the `(B, 2)` labels."""
  metrics = {}
  for index, (name, logits) in enumerate(zip(CLASSIFICATIONS, outputs)):
    metrics[f"loss_{name}"] = optax.softmax_cross_entropy_with_integer_labels(logits, labels[:, index])
    metrics[f"accuracy_{name}"] = (jnp.argmax(logits, -1) == labels[:, index]).astype(jnp.float32)
  return metrics


def _classification_evaluation(predict: Callable, test: multi_fashion.MultiItems, config: ml_collections.ConfigDict):
  """`Task.evaluate` of the two classifications: each task's accuracy and mean loss over the first
  `config.eval.num_examples` test canvases."""
  sums = jax.jit(lambda params, batch: jax.tree.map(
      jnp.sum, _per_example_classifications(predict(params, batch["image"]), batch["labels"])))

  def evaluate(params, task_state):
    del task_state
    batches = multi_fashion.evaluation_batches(test, config.eval.batch_size, config.eval.num_examples)
    totals = functools.reduce(functools.partial(jax.tree.map, jnp.add), (sums(params, batch) for batch in batches))
    return {name: float(total) / min(config.eval.num_examples, len(test)) for name, total in totals.items()}

  return evaluate


def build(config: ml_collections.ConfigDict) -> Task:
  if config.num_tasks not in (2, 3):
    raise ConfigError(f"config.num_tasks must be 2 or 3, got {config.num_tasks}.")
  two_items = _two_items(config) if config.get("data_source") == "multi_fashion" else None
  task_names = TASK_NAMES[:config.num_tasks] if two_items is None else CLASSIFICATIONS
  gradient_level = config.weighting in losses.AGGREGATOR_NAMES
  weighting = None if gradient_level else weighting_from_config(config)
  if two_items is None:
    model = UNet(features=tuple(config.model.features), out_channels=1, num_classes=10,
                 num_scalars=config.num_tasks - 2, dtype=base.compute_dtype(config))
    split = digits.load_split()
    sample_train = _sampler(config, jax.tree.map(jnp.asarray, split["train"]))
    init_model = base.init_on_images(model, (config.canvas_size, config.canvas_size, 1))
  else:
    model = LeNet(num_tasks=2, dtype=base.compute_dtype(config))
    init_model = base.init_on_images(model, two_items.image_shape)

  def init(rng):
    weighting_params, weighting_state = ({}, {}) if weighting is None else weighting.init()
    return {"model": init_model(rng), "weighting": weighting_params}, weighting_state

  def predict(params, inputs, method=None):
    """`(map logits, class logits[, size])` of the images (or of the representation, for `method=UNet.decode`)
    in float32, so that the softmax and the losses run in float32."""
    outputs = model.apply({"params": params["model"]}, inputs, method=method)
    return jax.tree.map(lambda x: x.astype(jnp.float32), outputs)

  def relative_size(batch):
    return (batch["size"] - config.min_digit_size) / (config.max_digit_size - config.min_digit_size)

  def task_losses(params, task_state, batch, rng):
    """The N unweighted task losses `(N,)`, and the metrics that do not depend on a weighting."""
    del rng
    return losses_of_outputs(predict(params, batch["image"]), task_state, batch)

  def losses_of_outputs(outputs, task_state, batch):
    if two_items is not None:
      metrics = jax.tree.map(jnp.mean, _per_example_classifications(outputs, batch["labels"]))
      return jnp.stack([metrics[f"loss_{name}"] for name in task_names]), (metrics, task_state)
    map_logits, class_logits, *size = outputs
    localization = jnp.mean(
        optax.sigmoid_binary_cross_entropy(map_logits[..., 0], batch["mask"].astype(jnp.float32)), axis=(1, 2))
    classification = optax.softmax_cross_entropy_with_integer_labels(class_logits, batch["label"])
    per_task = [jnp.mean(localization), jnp.mean(classification)]
    if size:
      per_task.append(jnp.mean(jnp.square(size[0][:, 0] - relative_size(batch))))
    metrics = {"accuracy": jnp.mean(jnp.argmax(class_logits, -1) == batch["label"]),
               **{f"loss_{name}": value for name, value in zip(task_names, per_task)}}
    return jnp.stack(per_task), (metrics, task_state)

  def loss(params, task_state, batch, rng):
    values, (metrics, task_state) = task_losses(params, task_state, batch, rng)
    if weighting is None:  # Gradient-level: the loop aggregates the gradients of `values` instead.
      return jnp.sum(values), (metrics, task_state)
    total, weights, task_state = weighting.combine(params["weighting"], task_state, values)
    for name, value, weight in zip(task_names, values, weights):
      metrics.update({f"weight_{name}": weight, f"weighted_loss_{name}": weight * value})
    return total, (metrics, task_state)

  task_gradients = None
  if gradient_level:
    unknown = set(config.shared_params) - set(jax.eval_shape(init, jax.random.key(0))[0]["model"])
    if not config.shared_params or unknown:
      raise ConfigError(
          f"config.weighting={config.weighting!r} aggregates the gradients of the shared parameters: "
          f"config.shared_params must name some of the model's modules, got {tuple(config.shared_params)}"
          f"{f' (unknown: {sorted(unknown)})' if unknown else ''}.")
    aggregator = losses.gradient_aggregator(config.weighting, seed=config.seed, num_tasks=config.num_tasks,
                                            **config.aggregator_options.get(config.weighting, {}))
    representation = None
    if config.representation_gradients:
      encoder = encoder_module_names(len(config.model.features)) if two_items is None else lenet.ENCODER_MODULES
      if set(config.shared_params) != set(encoder):
        raise ConfigError(
            "config.representation_gradients aggregates the gradients of the model's encoder output: "
            f"config.shared_params must be its modules {encoder}, got {tuple(config.shared_params)}.")
      representation = base.Representation(
          encode=lambda params, batch: model.apply({"params": params["model"]}, batch["image"], method="encode"),
          task_losses=lambda params, features, task_state, batch, rng: losses_of_outputs(
              predict(params, features, method="decode"), task_state, batch))
    task_gradients = TaskGradients(task_names=task_names, task_losses=task_losses,
                                   shared=functools.partial(shared_mask, config), aggregator=aggregator,
                                   representation=representation)
  elif config.representation_gradients:
    raise ConfigError(f"config.representation_gradients applies to the gradient-level methods "
                      f"({', '.join(losses.AGGREGATOR_NAMES)}), not to config.weighting={config.weighting!r}.")

  @functools.cache
  def test_set():
    test = jax.tree.map(jnp.asarray, split["test"])
    return jax.jit(_sampler(config, test), static_argnums=1)(
        jax.random.key(config.eval.seed), config.eval.num_examples)

  @jax.jit
  def per_example_metrics(params, batch):
    map_logits, class_logits, *size = predict(params, batch["image"])
    predicted, truth = map_logits[..., 0] > 0, batch["mask"]
    intersection = jnp.sum(predicted & truth, axis=(1, 2))
    union = jnp.sum(predicted | truth, axis=(1, 2))
    metrics = {"iou": jnp.where(union > 0, intersection / jnp.maximum(union, 1), 1.0),
               "accuracy": (jnp.argmax(class_logits, -1) == batch["label"]).astype(jnp.float32)}
    if size:
      metrics["size_error_px"] = jnp.abs(size[0][:, 0] - relative_size(batch)) * (
          config.max_digit_size - config.min_digit_size)
    return metrics

  def evaluate(params, task_state):
    del task_state
    return {name: float(value) for name, value in
            jax.tree.map(jnp.mean, per_example_metrics(params, test_set())).items()}

  def write_figures(params, task_state, workdir):
    del params, task_state
    return base.write_figure(workdir, "multitask_weights.png", functools.partial(
        plot_weight_history, [(config.weighting, rundir.read_metrics(workdir, "train"))], task_names))

  if two_items is None:
    data = dict(train_batch=base.sampled_batches(sample_train, config.batch_size), evaluate=evaluate)
  else:
    data = dict(train_batch=None, train_loader=two_items.train_loader,
                evaluate=_classification_evaluation(predict, two_items.test, config))
  return Task(init=init, loss=loss, **data, write_figures=write_figures, task_gradients=task_gradients)


def plot_weight_history(runs: list[tuple[str, list[dict[str, float]]]], task_names: tuple[str, ...],
                        path: str) -> None:
  """For each `(label, train records)`: each task's weight, normalised to sum to 1, and its loss over training.

  A gradient-level method's weights are those of the combination of the task gradients closest to its
  update, as the loop logs them.
  """
  plt = base.pyplot()

  figure, axes = plt.subplots(1, 1 + len(task_names), figsize=(5 * (1 + len(task_names)), 4.5), squeeze=False)
  weight_axis, loss_axes = axes[0, 0], axes[0, 1:]
  styles = ("-", "--", ":")
  for (label, records), colour in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4):
    steps = [r["step"] for r in records]
    weights = np.array([[r[f"weight_{name}"] for name in task_names] for r in records])
    shares = weights / np.maximum(np.abs(weights).sum(axis=1, keepdims=True), 1e-12)
    for index, (name, style) in enumerate(zip(task_names, styles)):
      weight_axis.plot(steps, shares[:, index], style, color=colour, label=f"{label}: {name}")
      loss_axes[index].plot(steps, [r[f"loss_{name}"] for r in records], color=colour, label=label)
      loss_axes[index].set(xlabel="step", ylabel="training loss", yscale="log", title=f"{name} loss")
  weight_axis.set(xlabel="step", ylabel="share of the task's weight",
                  title=f"weights / their sum ({', '.join(f'{s} {n}' for s, n in zip(styles, task_names))})")
  weight_axis.legend(fontsize=6)
  loss_axes[0].legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  plt.close(figure)
