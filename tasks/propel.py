"""Rotation regression with mixture outputs: PROPEL against MSE and a mixture density network.

A handwritten digit, upscaled and rotated by a random angle φ, is the input;
the target is (cos φ, sin φ) (D = 2). Digits that look alike under a half
turn (0, 1, 8, and 6 against 9) make the target bimodal, φ or φ + π. A
small CNN predicts, depending on `config.loss`:

* "propel": I equally weighted Gaussians (`config.num_components`) trained
  with `losses.propel_loss`;
* "weighted_propel": I Gaussians and a weight logit per component (the
  MDN's head), trained with `losses.propel_loss` of the weighted mixture,
  `log_weights` the log-softmax of the logits;
* "mdn": I Gaussians with learned weights trained by negative log-likelihood
  (a mixture density network, Bishop 1994);
* "mse": one point (cos, sin) trained with squared error.

Evaluation on held-out digits at fixed random angles: the angular error of
the mixture mean's direction, of the mode (the component mean of highest
mixture density), of the best component (the oracle choice among the I
means), the held-out negative log-likelihood of the target under the
mixture (nats), and the weight given to the true mode (the total mixture
weight of the components whose mean points within 45° of the true angle;
for equal weights the fraction of the components there), the last two not
defined for MSE; overall, per digit class, and for the rotation-ambiguous
classes.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data import digits
import losses
from models import SmallCNN
from tasks import base
from tasks.base import Task

LOSSES = ("propel", "weighted_propel", "mse", "mdn")
WEIGHTED_LOSSES = ("weighted_propel", "mdn")  # A weight logit per component.
NAMES = {"propel": "PROPEL", "weighted_propel": "weighted PROPEL", "mdn": "MDN", "mse": "MSE"}
AMBIGUOUS_CLASSES = (0, 1, 6, 8, 9)
TRUE_MODE_DEG = 45.0  # A component whose mean points this close to the true angle is on the true mode.


def _render(config, images, labels, angles):
  render = functools.partial(digits.draw_digit, canvas=config.canvas_size, digit_size=config.digit_size)
  return {
      "image": jax.vmap(lambda digit, angle: render(digit, angle=angle))(images, angles)[..., None],
      "target": jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1),
      "label": labels,
  }


def _sample(config, split, key, num):
  index_key, angle_key = jax.random.split(key)
  index = jax.random.randint(index_key, (num,), 0, split["labels"].shape[0])
  angles = jax.random.uniform(angle_key, (num,), maxval=2 * jnp.pi)
  return _render(config, split["images"][index], split["labels"][index], angles)


def evaluation_set(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Every held-out digit at `config.eval.angles_per_digit` random angles drawn from `config.eval.seed`."""
  test = digits.load_split()["test"]
  repeats = config.eval.angles_per_digit
  images = jnp.repeat(jnp.asarray(test["images"]), repeats, axis=0)
  labels = jnp.repeat(jnp.asarray(test["labels"]), repeats)
  angles = jax.random.uniform(jax.random.key(config.eval.seed), labels.shape, maxval=2 * jnp.pi)
  return jax.jit(functools.partial(_render, config))(images, labels, angles)


def _angle_error_deg(vectors, target):
  """The angle in degrees between predicted and target (cos, sin) vectors."""
  return jnp.degrees(losses.angular_distance(vectors, target))


def build(config: ml_collections.ConfigDict) -> Task:
  if config.loss not in LOSSES:
    raise base.ConfigError(f"config.loss must be one of {LOSSES}, got {config.loss!r}.")
  components = 1 if config.loss == "mse" else config.num_components
  dims = 2
  weighted = config.loss in WEIGHTED_LOSSES
  outputs = dims if config.loss == "mse" else components * (2 * dims + weighted)
  model = SmallCNN(features=tuple(config.model.features), hidden=config.model.hidden, outputs=outputs,
                   dtype=base.compute_dtype(config))
  train_split = jax.tree.map(jnp.asarray, digits.load_split()["train"])

  init_model = base.init_on_images(model, (config.canvas_size, config.canvas_size, 1))

  def init(rng):
    return init_model(rng), {}

  def predict(params, images):
    """`(pred (B, I, 2D) or None, means (B, I, D), normalised log_weights (B, I) or None for equal weights)`."""
    raw = model.apply({"params": params}, images)
    if config.loss == "mse":
      return None, raw[:, None, :], None
    raw = raw.reshape(raw.shape[0], components, -1)
    pred = losses.constrain_mixture(raw[..., :2 * dims], min_std=config.min_std)
    log_weights = jax.nn.log_softmax(raw[..., -1].astype(jnp.float32)) if weighted else None  # float32 softmax.
    return pred, pred[..., :dims], log_weights

  def point_estimate(pred, means, log_weights):
    return means[:, 0] if pred is None else losses.mixture_mean(pred, log_weights=log_weights)

  def loss(params, task_state, batch, rng):
    del rng
    target = batch["target"]
    pred, means, log_weights = predict(params, batch["image"])
    if config.loss in ("propel", "weighted_propel"):
      value = losses.propel_loss(pred, target, sigma=config.sigma, log_weights=log_weights)
    elif config.loss == "mdn":
      value = -jnp.mean(losses.mixture_log_density(pred, target, log_weights=log_weights))
    else:
      value = jnp.mean(jnp.sum((means[:, 0] - target) ** 2, axis=-1))
    metrics = {"mean_error_deg": jnp.mean(_angle_error_deg(point_estimate(pred, means, log_weights), target))}
    return value, (metrics, task_state)

  @jax.jit
  def per_example_metrics(params, batch):
    target = batch["target"]
    pred, means, log_weights = predict(params, batch["image"])
    component_errors = _angle_error_deg(means, jnp.broadcast_to(target[:, None], means.shape))
    errors = {
        "mean_error_deg": _angle_error_deg(point_estimate(pred, means, log_weights), target),
        "best_component_error_deg": jnp.min(component_errors, axis=1),
    }
    if pred is not None:
      errors["nll"] = -losses.mixture_log_density(pred, target, log_weights=log_weights)
      errors["true_mode_weight"] = jnp.sum(
          jnp.where(component_errors <= TRUE_MODE_DEG, _mixture_weights(log_weights, components), 0.0), axis=1)
      # The mode estimate: the component mean where the mixture density is highest.
      density_at_means = jax.vmap(
          lambda point: losses.mixture_log_density(pred, point, log_weights=log_weights), in_axes=1, out_axes=1)(means)
      mode = jnp.take_along_axis(means, jnp.argmax(density_at_means, axis=1)[:, None, None], axis=1)[:, 0]
      errors["mode_error_deg"] = _angle_error_deg(mode, target)
    return errors

  @functools.cache
  def test_set():
    return evaluation_set(config)

  def evaluate(params, task_state):
    del task_state
    examples = test_set()
    values = jax.device_get(per_example_metrics(params, examples))
    labels = np.asarray(examples["label"])
    groups = {"": np.ones_like(labels, bool), "ambiguous/": np.isin(labels, AMBIGUOUS_CLASSES),
              "unambiguous/": ~np.isin(labels, AMBIGUOUS_CLASSES)}
    groups.update({f"class_{c}/": labels == c for c in range(10)})
    return {prefix + name: float(np.mean(value[selected]))
            for prefix, selected in groups.items() for name, value in values.items()}

  def write_figures(params, task_state, workdir):
    del task_state
    examples = test_set()
    labels = np.asarray(examples["label"])
    chosen = np.concatenate([np.flatnonzero(labels == c)[:2] for c in (6, 9, 0, 8, 1, 4)])
    shown = jax.tree.map(lambda x: x[chosen], examples)
    pred, means, log_weights = predict(params, shown["image"])
    return base.write_figure(workdir, "propel_mixtures.png", functools.partial(
        _plot_mixtures, shown, pred, means, log_weights, title=_describe(config)))

  train_batch = base.sampled_batches(functools.partial(_sample, config, train_split), config.batch_size)
  return Task(init=init, train_batch=train_batch, loss=loss, evaluate=evaluate, write_figures=write_figures)


def _describe(config) -> str:
  return NAMES[config.loss] + ("" if config.loss == "mse" else f", I = {config.num_components}")


def _mixture_weights(log_weights, num_components: int):
  """The weights `(B, I)` of normalised `log_weights`, or 1/I each where they are None."""
  return 1.0 / num_components if log_weights is None else jnp.exp(log_weights)


def _plot_mixtures(examples, pred, means, log_weights, path: str, *, title: str) -> None:
  """Per example: the input, and the predicted density on the unit circle against the true angle."""
  plt = base.pyplot()

  count = len(examples["label"])
  circle = np.linspace(0, 2 * np.pi, 361)
  points = np.stack([np.cos(circle), np.sin(circle)], axis=-1)
  weights = np.broadcast_to(np.asarray(_mixture_weights(log_weights, means.shape[1])), means.shape[:2])
  figure = plt.figure(figsize=(3 * count // 2, 6.4))
  for k in range(count):
    image_axis = figure.add_subplot(4, count // 2, k + 1 + (k // (count // 2)) * (count // 2))
    image_axis.imshow(np.asarray(examples["image"][k, ..., 0]), cmap="gray")
    image_axis.set_title(f"digit {int(examples['label'][k])}")
    image_axis.axis("off")
    polar = figure.add_subplot(4, count // 2, k + 1 + (k // (count // 2) + 1) * (count // 2), projection="polar")
    true_angle = np.arctan2(*np.asarray(examples["target"][k])[::-1])
    if pred is not None:
      repeated = np.broadcast_to(np.asarray(pred[k]), (len(circle),) + pred.shape[1:])
      repeated_log_weights = None if log_weights is None else np.broadcast_to(
          np.asarray(log_weights[k]), (len(circle),) + log_weights.shape[1:])
      density = np.exp(np.asarray(losses.mixture_log_density(repeated, points, log_weights=repeated_log_weights)))
      polar.fill_between(circle, 0.3, 0.3 + 0.7 * density / density.max(), color="tab:blue", alpha=0.5,
                         label="density on the unit circle (scaled)")
    for mean, weight in zip(np.asarray(means[k]), weights[k]):
      polar.plot([np.arctan2(mean[1], mean[0])] * 2, [0, np.hypot(*mean)], color="tab:red", lw=1.5,
                 alpha=float(weight / weights[k].max()), label="means (opacity ∝ weight)")
    polar.plot([true_angle, true_angle], [0, 1], color="tab:green", lw=3, alpha=0.7, label="true angle", zorder=3)
    polar.set_ylim(0, 1.05)
    polar.set_yticks([])
    polar.set_xticks([])
  handles, names = figure.axes[1].get_legend_handles_labels()
  unique = dict(zip(names, handles))
  figure.legend(unique.values(), unique.keys(), loc="lower center", ncol=3)
  figure.suptitle(title)
  figure.tight_layout(rect=(0, 0.05, 1, 0.95))
  figure.savefig(path, dpi=80)
  plt.close(figure)
