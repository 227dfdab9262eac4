"""Localization and classification of a digit on a cluttered canvas, one loss weighted two ways.

One input, two heads of different output shapes sharing a U-Net encoder:
head 1 a per-pixel localization map (sigmoid, binary cross-entropy against
the digit's stroke mask, averaged over pixels), head 2 the class (softmax
cross-entropy over 10 digits). The two per-example losses are combined by
the weighting `config.weighting` (`losses.loss_weighting`): "fixed" with
(α, 1 − α) on (localization, classification), "trainable" α, "uncertainty"
or "dwa". Trainable weights live in the parameter pytree under "weighting"
and are updated by the model's optimizer; DWA's loss history is the task
state.

Held-out evaluation: the localization IoU (prediction = sigmoid > 0.5,
intersection over union of each image's masks, averaged over images) and
the classification accuracy, on the held-out digits at fixed random
placements.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from data import digits
import losses
from models import UNet
from tasks import base
from tasks.base import Task

TASK_NAMES = ("localization", "classification")


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
  return losses.loss_weighting(
      config.weighting, num_tasks=len(TASK_NAMES), fixed_weights=(config.alpha, 1.0 - config.alpha),
      dwa_period=config.dwa_period, dwa_temperature=config.dwa_temperature)


def build(config: ml_collections.ConfigDict) -> Task:
  weighting = weighting_from_config(config)
  model = UNet(features=tuple(config.model.features), out_channels=1, num_classes=10,
               dtype=base.compute_dtype(config))
  split = digits.load_split()
  sample_train = _sampler(config, jax.tree.map(jnp.asarray, split["train"]))

  init_model = base.init_on_images(model, (config.canvas_size, config.canvas_size, 1))

  def init(rng):
    weighting_params, weighting_state = weighting.init()
    return {"model": init_model(rng), "weighting": weighting_params}, weighting_state

  def predict(params, images):
    """`(map logits, class logits)` in float32, so that the cross-entropies' softmax runs in float32."""
    return jax.tree.map(lambda x: x.astype(jnp.float32), model.apply({"params": params["model"]}, images))

  def loss(params, task_state, batch, rng):
    del rng
    map_logits, class_logits = predict(params, batch["image"])
    localization = jnp.mean(
        optax.sigmoid_binary_cross_entropy(map_logits[..., 0], batch["mask"].astype(jnp.float32)), axis=(1, 2))
    classification = optax.softmax_cross_entropy_with_integer_labels(class_logits, batch["label"])
    task_losses = jnp.stack([jnp.mean(localization), jnp.mean(classification)])
    total, weights, task_state = weighting.combine(params["weighting"], task_state, task_losses)
    metrics = {"accuracy": jnp.mean(jnp.argmax(class_logits, -1) == batch["label"])}
    for name, task_loss, weight in zip(TASK_NAMES, task_losses, weights):
      metrics.update({f"loss_{name}": task_loss, f"weight_{name}": weight, f"weighted_loss_{name}": weight * task_loss})
    return total, (metrics, task_state)

  @functools.cache
  def test_set():
    test = jax.tree.map(jnp.asarray, split["test"])
    return jax.jit(_sampler(config, test), static_argnums=1)(
        jax.random.key(config.eval.seed), config.eval.num_examples)

  @jax.jit
  def per_example_metrics(params, batch):
    map_logits, class_logits = predict(params, batch["image"])
    predicted, truth = map_logits[..., 0] > 0, batch["mask"]
    intersection = jnp.sum(predicted & truth, axis=(1, 2))
    union = jnp.sum(predicted | truth, axis=(1, 2))
    return {"iou": jnp.where(union > 0, intersection / jnp.maximum(union, 1), 1.0),
            "accuracy": (jnp.argmax(class_logits, -1) == batch["label"]).astype(jnp.float32)}

  def evaluate(params, task_state):
    del task_state
    return {name: float(value) for name, value in
            jax.tree.map(jnp.mean, per_example_metrics(params, test_set())).items()}

  def write_figures(params, task_state, workdir):
    del params, task_state
    return base.write_figure(workdir, "multitask_weights.png", functools.partial(
        plot_weight_history, [(config.weighting, base.read_metrics(workdir, "train"))]))

  return Task(init=init, train_batch=base.sampled_batches(sample_train, config.batch_size), loss=loss,
              evaluate=evaluate, write_figures=write_figures)


def plot_weight_history(runs: list[tuple[str, list[dict[str, float]]]], path: str) -> None:
  """For each `(label, train records)`: the localization weight α and both weighted losses over training."""
  plt = base.pyplot()

  figure, (weight_axis, loss_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
  for (label, records), colour in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4):
    steps = [r["step"] for r in records]
    weight_axis.plot(steps, [r["weight_localization"] for r in records], color=colour, label=label)
    for name, style in zip(TASK_NAMES, ("-", "--")):
      loss_axis.plot(steps, [r[f"weighted_loss_{name}"] for r in records], style, color=colour,
                     label=f"{label}: {name}")
  weight_axis.set(xlabel="step", ylabel="weight of the localization loss", yscale="log",
                  title="α (uncertainty: 1/(2σ²); DWA: w, sums to 2)")
  loss_axis.set(xlabel="step", ylabel="weighted training loss", yscale="log",
                title="weighted losses (solid: localization, dashed: classification)")
  weight_axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  plt.close(figure)
