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
  "pcgrad", …): the task computes its own gradients (`Task.gradients`,
  `GradientAggregation`), aggregating the per-task gradients of the shared
  parameters (`config.shared_params`, the encoder's blocks); the aggregator's
  state is the task state.
* The names both levels have ("mean", "sum", "constant", "random") are the
  gradient-level methods; "scalarization.NAME" and "aggregation.NAME" choose
  the level of any name.

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
from tasks.base import Metrics
from tasks.base import PyTree
from tasks.base import Task

TASK_NAMES = ("localization", "classification", "size")
# Multi-Fashion / Multi-MNIST (config.data_source = "multi_fashion"): the class of each item.
CLASSIFICATIONS = ("top_left", "bottom_right")


def per_task_gradients(task_losses: Callable[..., tuple[jax.Array, Any]], num_tasks: int, *args):
  """`([grads of task i's loss w.r.t. args, for each task i], (losses, aux))` of `task_losses(*args)`.

  One VJP per task, unrolled rather than vmapped: each backpropagates only through what its own loss
  reads (JAX's symbolic zeros drop the other tasks' heads), and XLA computes the shared forward pass once
  for all of them. Unrolled rather than vmapped because XLA:CPU runs the batched convolution gradients
  of a `jax.vmap` over the VJPs slowly (BENCHMARKS.md, "Multi-task methods: step time").
  """
  def task_loss(index, *args):
    losses, aux = task_losses(*args)
    return losses[index], (losses, aux)

  grads_and_aux = [jax.grad(task_loss, argnums=tuple(range(1, len(args) + 1)), has_aux=True)(index, *args)
                   for index in range(num_tasks)]
  return [grads for grads, _ in grads_and_aux], grads_and_aux[0][1]


def _effective_weights(task_grads: list[jax.Array], update: list[jax.Array]) -> jax.Array:
  """The weights w (N,) with Σᵢ wᵢ gᵢ closest to `update` in least squares, for logging any aggregator alike.

  For the methods that return a combination of the task gradients (mean, MGDA, UPGrad, IMTL-G, …) this is
  exactly their weighting; for the others (GradDrop) it is the nearest such combination.
  """
  gram = sum(jnp.einsum("i...,j...->ij", g, g) for g in task_grads)
  projections = sum(jnp.einsum("i...,...->i", g, u) for g, u in zip(task_grads, update))
  return jnp.linalg.pinv(gram.astype(jnp.float32), hermitian=True) @ projections.astype(jnp.float32)


def _shared_leaves(tree: PyTree, is_shared: list[bool]) -> list[jax.Array]:
  """The leaves of `tree` (params, or their per-task gradients) where the flat mask `is_shared` is true."""
  return [leaf for leaf, shared in zip(jax.tree.leaves(tree), is_shared) if shared]


@dataclasses.dataclass(frozen=True)
class Representation:
  """The model split at the representation every task reads, for gradients taken there (`GradientAggregation`).

  Attributes:
    encode: `(params, batch) -> representation`, a pytree of arrays computed by the shared parameters only.
    task_losses: `(params, representation, task_state, batch, rng) -> (losses (N,), (metrics, task_state))`,
      the unweighted task losses given the representation, reading only the tasks' own parameters.
  """

  encode: Callable[[PyTree, dict[str, jax.Array]], PyTree]
  task_losses: Callable[..., tuple[jax.Array, tuple[Metrics, PyTree]]]


@dataclasses.dataclass(frozen=True)
class GradientAggregation:
  """A multi-task model trained by a gradient-level method: its `Task.gradients` and its task state.

  `gradients` differentiates each task's loss separately inside the jitted step, one VJP per task: each
  backpropagates only through what its loss reads, so a head's backward pass runs once, for its own
  task. The parameters `shared` selects get the update `aggregator` makes of their N per-task gradients;
  every other parameter (a task's own head) gets the gradient of the summed losses, which is its own
  task's gradient, as TorchJD's `mtl_backward` does.

  With `representation` set, the aggregator combines the per-task gradients with respect to the shared
  representation instead, and one backward pass through the encoder takes the combination to the shared
  parameters (LibMTL's `rep_grad`): the encoder's backward runs once instead of N times, but the
  aggregator sees the gradients of the batch's features, not of the parameters, so it is an
  approximation of the method (exact for the mean).

  The aggregator's state is the task state's entry "aggregator" (`init_state`), so that the loop checkpoints
  it and keeps it unchanged on a step it does not apply, as any task state.

  Attributes:
    task_names: the N tasks; `gradients` logs `weight_<name>`, the weights of the combination of the task
      gradients closest to each update.
    task_losses: `(params, task_state, batch, rng) -> (losses (N,), (metrics, task_state))`, unweighted.
    shared: `params -> pytree of bools` (the structure of `params`), true for the parameters every task
      reads.
    aggregator: an `optax.GradientTransformationExtraArgs` (`losses.gradient_aggregator`) over the list
      of shared parameter arrays (or of the representation's arrays):
      `update(grads with a leading task axis, state, params, task_losses=...)`.
    representation: None, or the model split at its shared representation, to aggregate there.
  """

  task_names: tuple[str, ...]
  task_losses: Callable[[PyTree, PyTree, dict[str, jax.Array], jax.Array], tuple[jax.Array, tuple[Metrics, PyTree]]]
  shared: Callable[[PyTree], PyTree]
  aggregator: Any
  representation: Representation | None = None

  def init_state(self, params: PyTree) -> dict[str, PyTree]:
    """The task state at `params`: `{"aggregator": the aggregator's initial state}`."""
    return {"aggregator": self.aggregator.init(_shared_leaves(params, jax.tree.leaves(self.shared(params))))}

  def gradients(self, params, task_state, batch, rng):
    """`((summed losses, (metrics, task_state)), grads)` of one step: `Task.gradients`.

    `grads` holds the aggregator's update for the shared parameters and each head's own task gradient;
    `metrics` adds `weight_<task>` to the task's, and `task_state["aggregator"]` is the aggregator's new state.
    """
    is_shared = self.shared(params)
    is_shared_leaves = jax.tree.leaves(is_shared)
    representation = self.representation
    num_tasks = len(self.task_names)
    if representation is None:
      rows, (task_losses, (metrics, task_state)) = per_task_gradients(
          lambda params: self.task_losses(params, task_state, batch, rng), num_tasks, params)
      params_rows = [params_grads for (params_grads,) in rows]
      aggregated_rows = [_shared_leaves(params_grads, is_shared_leaves) for params_grads in params_rows]
    else:
      features, encode_vjp = jax.vjp(lambda params: representation.encode(params, batch), params)
      rows, (task_losses, (metrics, task_state)) = per_task_gradients(
          lambda params, features: representation.task_losses(params, features, task_state, batch, rng),
          num_tasks, params, features)
      params_rows = [params_grads for params_grads, _ in rows]
      aggregated_rows = [jax.tree.leaves(feature_grads) for _, feature_grads in rows]
    # The rows of the Jacobian, leaf by leaf: a leading task axis on every shared array.
    jacobian = [jnp.stack(task_leaves) for task_leaves in zip(*aggregated_rows)]
    update, aggregator_state = self.aggregator.update(
        jacobian, task_state["aggregator"], _shared_leaves(params, is_shared_leaves), task_losses=task_losses)
    # A head's gradient is its own task's: the other tasks' gradients of it are zeros.
    own = jax.tree.map(lambda *task_grads: sum(task_grads), *params_rows)
    if representation is None:  # The update's arrays are the shared parameters', in the order of the leaves.
      update_leaves = iter(update)
      grads = jax.tree.map(lambda own_grad, shared: next(update_leaves) if shared else own_grad, own, is_shared)
    else:  # One backward pass of the encoder takes the aggregated representation gradient to its parameters.
      (encoder_grads,) = encode_vjp(jax.tree.unflatten(jax.tree.structure(features), update))
      grads = jax.tree.map(lambda encoder_grad, own_grad, shared: encoder_grad if shared else own_grad,
                           encoder_grads, own, is_shared)
    weights = _effective_weights(jacobian, update)
    metrics = {**metrics, **{f"weight_{name}": w for name, w in zip(self.task_names, weights)}}
    return (jnp.sum(task_losses), (metrics, {**task_state, "aggregator": aggregator_state})), grads


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


# `config.weighting` may name its level: "aggregation.mean" or "scalarization.mean".
GRADIENT_PREFIX, LOSS_PREFIX = "aggregation.", "scalarization."


def method_of(config: ml_collections.ConfigDict) -> tuple[bool, str]:
  """`(gradient_level, name)` of `config.weighting`. A bare name that both levels have ("mean", "sum",
  "constant", "random": the same update d = Jᵀw either way, one backward pass at the loss level) is the
  gradient-level one, as it always was; the prefixes "aggregation." and "scalarization." choose a level."""
  weighting = config.weighting
  if weighting.startswith(GRADIENT_PREFIX):
    return True, weighting.removeprefix(GRADIENT_PREFIX)
  if weighting.startswith(LOSS_PREFIX):
    return False, weighting.removeprefix(LOSS_PREFIX)
  return weighting in losses.AGGREGATOR_NAMES, weighting


def weighting_from_config(config: ml_collections.ConfigDict) -> losses.LossWeighting:
  """`config.weighting` with its `config.weighting_options`; the preference vector ((α, 1 − α) or
  `config.fixed_weights`) and `config.seed` go to the methods that take `weights` or `seed`."""
  _, name = method_of(config)
  preference = (config.alpha, 1.0 - config.alpha) if config.num_tasks == 2 else tuple(config.fixed_weights)
  accepted = losses.scalarization.option_names(name)
  shared = {option: value for option, value in dict(weights=preference, seed=config.seed).items()
            if option in accepted}
  return losses.loss_weighting(name, num_tasks=config.num_tasks, **{**shared, **config.weighting_options.get(name, {})})


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


def names_of_tasks(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The tasks `build(config)` trains, in the order of its losses."""
  return CLASSIFICATIONS if config.get("data_source") == "multi_fashion" else TASK_NAMES[:config.num_tasks]


def build(config: ml_collections.ConfigDict) -> Task:
  if config.num_tasks not in (2, 3):
    raise ConfigError(f"config.num_tasks must be 2 or 3, got {config.num_tasks}.")
  two_items = _two_items(config) if config.get("data_source") == "multi_fashion" else None
  task_names = names_of_tasks(config)
  gradient_level, method = method_of(config)
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
    if weighting is None:  # Gradient-level: the task state is the aggregator's.
      params = {"model": init_model(rng), "weighting": {}}
      return params, aggregation.init_state(params)
    weighting_params, weighting_state = weighting.init()
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
    if weighting is None:  # Gradient-level: `aggregation.gradients` aggregates the gradients of `values` instead.
      return jnp.sum(values), (metrics, task_state)
    total, weights, task_state = weighting.combine(params["weighting"], task_state, values)
    for name, value, weight in zip(task_names, values, weights):
      metrics.update({f"weight_{name}": weight, f"weighted_loss_{name}": weight * value})
    return total, (metrics, task_state)

  aggregation = None
  if gradient_level:
    unknown = set(config.shared_params) - set(jax.eval_shape(init_model, jax.random.key(0)))
    if not config.shared_params or unknown:
      raise ConfigError(
          f"config.weighting={config.weighting!r} aggregates the gradients of the shared parameters: "
          f"config.shared_params must name some of the model's modules, got {tuple(config.shared_params)}"
          f"{f' (unknown: {sorted(unknown)})' if unknown else ''}.")
    aggregator = losses.gradient_aggregator(method, seed=config.seed, num_tasks=config.num_tasks,
                                            **config.aggregator_options.get(method, {}))
    representation = None
    if config.representation_gradients:
      encoder = encoder_module_names(len(config.model.features)) if two_items is None else lenet.ENCODER_MODULES
      if set(config.shared_params) != set(encoder):
        raise ConfigError(
            "config.representation_gradients aggregates the gradients of the model's encoder output: "
            f"config.shared_params must be its modules {encoder}, got {tuple(config.shared_params)}.")
      representation = Representation(
          encode=lambda params, batch: model.apply({"params": params["model"]}, batch["image"], method="encode"),
          task_losses=lambda params, features, task_state, batch, rng: losses_of_outputs(
              predict(params, features, method="decode"), task_state, batch))
    aggregation = GradientAggregation(task_names=task_names, task_losses=task_losses,
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
  return Task(init=init, loss=loss, **data, write_figures=write_figures,
              gradients=None if aggregation is None else aggregation.gradients)


def logged_task_losses(task: Task, task_names: tuple[str, ...]):
  """`(params, task_state, batch, rng) -> (losses (N,), (metrics, task_state))`: the unweighted losses of the
  tasks `task_names` (`names_of_tasks`) that the `loss` of a task `build` made logs as `loss_<name>`, whatever
  its method."""
  def task_losses(params, task_state, batch, rng):
    _, (metrics, task_state) = task.loss(params, task_state, batch, rng)
    return jnp.stack([metrics[f"loss_{name}"] for name in task_names]), (metrics, task_state)
  return task_losses


def plot_weight_history(runs: list[tuple[str, list[dict[str, float]]]], task_names: tuple[str, ...],
                        path: str) -> None:
  """For each `(label, train records)`: each task's weight, normalised to sum to 1, and its loss over training.

  A gradient-level method's weights are those of the combination of the task gradients closest to its
  update, as `GradientAggregation.gradients` logs them.
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
