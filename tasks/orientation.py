"""Orientation maps of fringe patterns: data, model, loss and evaluation.

A U-Net reads a noisy fringe image and predicts the doubled-angle encoding
(cos 2θ, sin 2θ) of the fringe orientation θ ∈ [0, π) at every pixel; errors
are reported for θ itself. `config.loss` selects the angular loss θ^(1+δ)
(`losses.angular_loss`) or plain MSE on the encoding, the usual peer. The
classical peer, the gradient structure tensor, is evaluated on the same
held-out set by `evaluate_structure_tensor`.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data import fringes
import losses
from models import UNet
from models import structure_tensor_orientation
from tasks import base
from tasks.base import Task

LOSSES = ("angular", "mse")


def _sampler(config: ml_collections.ConfigDict):
  sample = functools.partial(
      fringes.sample_fringes, height=config.image_size, width=config.image_size, **config.data)
  return lambda key, num: jax.vmap(sample)(jax.random.split(key, num))


def evaluation_set(config: ml_collections.ConfigDict, seed: int) -> dict[str, jax.Array]:
  """`config.eval.num_examples` images drawn from `seed`, independent of the training stream."""
  return jax.jit(_sampler(config), static_argnums=1)(jax.random.key(seed), config.eval.num_examples)


@functools.partial(jax.jit, static_argnames="noisy_threshold")
def _split_metrics(examples, predicted_orientation, *, noisy_threshold):
  target = losses.encode_orientation(examples["orientation"], axial=True)
  prediction = losses.encode_orientation(predicted_orientation, axial=True)
  noisy = examples["noise_std"] > noisy_threshold
  splits = {"": examples["mask"], "noisy/": examples["mask"] & noisy[:, None, None]}
  return {prefix + name: value for prefix, mask in splits.items()
          for name, value in losses.orientation_metrics(prediction, target, mask=mask, axial=True).items()}


def _metrics_by_split(config, examples, predicted_orientation) -> dict[str, float]:
  """Metrics of θ on all pixels and on the images noisier than `config.eval.noisy_threshold`."""
  metrics = _split_metrics(examples, predicted_orientation, noisy_threshold=config.eval.noisy_threshold)
  return {name: float(value) for name, value in metrics.items()}


def _standardize(images: jax.Array) -> jax.Array:
  mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
  std = jnp.std(images, axis=(1, 2, 3), keepdims=True)
  return (images - mean) / (std + 1e-6)


def evaluate_structure_tensor(
    config: ml_collections.ConfigDict,
    gradient_sigmas=(0.5, 1.0, 1.5, 2.0),
    integration_sigmas=(2.0, 3.0, 4.0, 6.0, 8.0, 12.0),
) -> tuple[dict[str, float], dict[str, float]]:
  """The classical baseline on the held-out set, its scales tuned on a separate validation draw.

  Returns:
    `(scales, metrics)`: the (gradient, integration) σ with the lowest mean
    error on the validation set, and the test-set metrics they give.
  """
  validation = evaluation_set(config, config.eval.seed + 1)
  test = evaluation_set(config, config.eval.seed)

  def orientation(images, gradient_sigma, integration_sigma):
    return jax.jit(functools.partial(
        structure_tensor_orientation, gradient_sigma=gradient_sigma,
        integration_sigma=integration_sigma))(images[..., 0])

  def validation_error(scales):
    metrics = _metrics_by_split(config, validation, orientation(validation["image"], *scales))
    return metrics["mean_abs_error_deg"]

  best = min(itertools.product(gradient_sigmas, integration_sigmas), key=validation_error)
  scales = {"gradient_sigma": best[0], "integration_sigma": best[1]}
  return scales, _metrics_by_split(config, test, orientation(test["image"], *best))


def build(config: ml_collections.ConfigDict) -> Task:
  if config.loss not in LOSSES:
    raise base.ConfigError(f"config.loss must be one of {LOSSES}, got {config.loss!r}.")
  model = UNet(features=tuple(config.model.features), out_channels=2, dtype=base.compute_dtype(config))
  sample_batch = _sampler(config)

  init_model = base.init_on_images(model, (config.image_size, config.image_size, 1))

  def init(rng):
    return init_model(rng), {}

  def predict(params, images):
    return model.apply({"params": params}, _standardize(images))

  def loss(params, task_state, batch, rng):
    del rng  # The model is deterministic.
    target = losses.encode_orientation(batch["orientation"], axial=True)
    prediction = predict(params, batch["image"])
    mask = batch["mask"]
    if config.loss == "angular":
      value = losses.angular_loss(prediction, target, delta=config.delta, mask=mask)
    else:
      squared_error = jnp.sum((prediction - target) ** 2, axis=-1)
      value = jnp.sum(jnp.where(mask, squared_error, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
    metrics = losses.orientation_metrics(prediction, target, mask=mask, axial=True)
    return value, (metrics, task_state)

  predict_orientation = jax.jit(
      lambda params, images: losses.decode_orientation(predict(params, images), axial=True))

  @functools.cache
  def test_set():
    return evaluation_set(config, config.eval.seed)

  def predict_all(params, images):
    return base.map_in_chunks(predict_orientation, params, images, config.eval.batch_size)

  def evaluate(params, task_state):
    del task_state
    examples = test_set()
    return _metrics_by_split(config, examples, predict_all(params, examples["image"]))

  def write_figures(params, task_state, workdir):
    del task_state
    examples = jax.tree.map(lambda x: x[:4], test_set())
    return base.write_figure(workdir, "orientation_examples.png",
                             functools.partial(_plot_examples, examples, predict_all(params, examples["image"])))

  return Task(init=init, train_batch=base.sampled_batches(sample_batch, config.batch_size), loss=loss,
              evaluate=evaluate, write_figures=write_figures)


def _plot_examples(examples, predicted_orientation, path: str) -> None:
  """One row per example: input, true and predicted orientation (cyclic colours), error."""
  plt = base.pyplot()

  examples = jax.tree.map(np.asarray, examples)
  predicted = np.asarray(predicted_orientation)
  error = np.degrees(np.abs(np.angle(np.exp(2j * (predicted - examples["orientation"]))))) / 2
  rows = len(predicted)
  figure, axes = plt.subplots(rows, 4, figsize=(12, 3 * rows), squeeze=False)
  for row in range(rows):
    invalid = ~examples["mask"][row]
    panels = [
        (f"input (noise σ = {examples['noise_std'][row]:.2f})", examples["image"][row, ..., 0], "gray", None),
        ("true orientation", np.ma.array(examples["orientation"][row], mask=invalid), "hsv", (0, np.pi)),
        ("predicted orientation", predicted[row], "hsv", (0, np.pi)),
        ("error (degrees)", np.ma.array(error[row], mask=invalid), "magma", (0, 30)),
    ]
    for axis, (title, image, cmap, limits) in zip(axes[row], panels):
      shown = axis.imshow(image, cmap=cmap, vmin=limits and limits[0], vmax=limits and limits[1])
      axis.set_title(title)
      axis.axis("off")
      figure.colorbar(shown, ax=axis, fraction=0.046)
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  plt.close(figure)
