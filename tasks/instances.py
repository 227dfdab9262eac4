"""Ship instance segmentation with semi-convolutional embeddings, scored with the Airbus F2 metric.

A U-Net maps a synthetic scene (`data.ships`) to one foreground logit and C
embedding channels Φ; `losses.semi_convolution` adds the pixel coordinates,
Ψ = Φ + s·(x, y) with s = half the image size, so Ψ is in pixels and each
pixel can learn to point at its ship's centre. The loss is the foreground
binary cross-entropy plus `config.embedding_weight` times
`losses.semi_conv_loss`. Instances are extracted with
`losses.extract_instances`; the baseline labels the connected components of
the same predicted foreground. Both are scored with `losses.f2_iou_score`
on a fixed held-out set, overall and on the scenes with touching ships.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from data import ships
import losses
from models import UNet
from tasks import base
from tasks.base import Task


def _sampler(config: ml_collections.ConfigDict):
  sample = functools.partial(ships.sample_scene, size=config.image_size, **config.data)
  return lambda key, num: jax.vmap(sample)(jax.random.split(key, num))


def build(config: ml_collections.ConfigDict) -> Task:
  unet = UNet(features=tuple(config.model.features), out_channels=1 + config.embedding_dims,
              dtype=base.compute_dtype(config))
  sample = _sampler(config)
  max_instances = config.data.max_ships

  init_unet = base.init_on_images(unet, (config.image_size, config.image_size, 1))

  def init(rng):
    return init_unet(rng), {}

  def predict(params, images):
    """`(foreground logits (B, H, W), embeddings Ψ (B, H, W, C))`."""
    # In float32 from here: the coordinates Ψ adds need more than bfloat16's 8 bits at 64 pixels.
    outputs = unet.apply({"params": params}, images - 0.3).astype(jnp.float32)
    embeddings = losses.semi_convolution(config.embedding_output_scale * outputs[..., 1:], scale=config.image_size / 2)
    return outputs[..., 0], embeddings

  def loss(params, task_state, batch, rng):
    del rng
    logits, embeddings = predict(params, batch["image"])
    foreground = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, (batch["labels"] > 0).astype(jnp.float32)))
    embedding = losses.semi_conv_loss(embeddings, batch["labels"], max_instances=max_instances)
    metrics = {"foreground_loss": foreground, "embedding_loss": embedding}
    return foreground + config.embedding_weight * embedding, (metrics, task_state)

  @jax.jit
  def segment(params, images):
    logits, embeddings = predict(params, images)
    probability = jax.nn.sigmoid(logits)
    instances = losses.extract_instances(probability, embeddings, max_instances=config.extraction.max_instances,
                                         distance=config.extraction.distance)
    return instances, losses.connected_components(probability > 0.5)

  # Under jit the objects beyond `max_instances` (specks of a noisy foreground) merge instead of raising.
  score = jax.jit(functools.partial(losses.f2_iou_score, reduction="none", max_instances=config.eval.max_instances))

  @functools.cache
  def test_set():
    return jax.jit(sample, static_argnums=1)(jax.random.key(config.eval.seed), config.eval.num_examples)

  def evaluate(params, task_state):
    del task_state
    scenes = test_set()
    predictions = dict(zip(("semi_conv", "connected_components"),
                           base.map_in_chunks(segment, params, scenes["image"], config.eval.batch_size)))
    touching = np.asarray(scenes["touching"])
    metrics = {}
    for name, labels in predictions.items():
      scores = np.asarray(score(labels, scenes["labels"]))
      metrics.update({f"f2_{name}": float(scores.mean()), f"touching/f2_{name}": float(scores[touching].mean()),
                      f"separate/f2_{name}": float(scores[~touching].mean())})
    return metrics

  def write_figures(params, task_state, workdir):
    del task_state
    scenes = jax.tree.map(lambda x: x[:6], test_set())
    instances, components = segment(params, scenes["image"])
    draw = functools.partial(_plot_instances, scenes, instances, components)
    return base.write_figure(workdir, "instances.png", draw)

  return Task(init=init, train_batch=base.sampled_batches(sample, config.batch_size), loss=loss, evaluate=evaluate,
              write_figures=write_figures)


def _plot_instances(scenes, instances, components, path: str) -> None:
  """One row per scene: the image, true instances, semi-convolutional instances, connected components."""
  plt = base.pyplot()

  def overlay(axis, image, labels, title):
    axis.imshow(image, cmap="gray")
    labels = np.asarray(labels)
    _, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape)
    axis.imshow(np.ma.array(compact % 10, mask=labels == 0), cmap="tab10", vmin=0, vmax=9, alpha=0.6)
    axis.set_title(f"{title} ({len(np.unique(labels[labels > 0]))})")
    axis.axis("off")

  rows = len(instances)
  figure, axes = plt.subplots(rows, 4, figsize=(12, 3 * rows), squeeze=False)
  for row in range(rows):
    image = np.asarray(scenes["image"][row, ..., 0])
    axes[row, 0].imshow(image, cmap="gray")
    axes[row, 0].set_title("scene" + (" (touching ships)" if scenes["touching"][row] else ""))
    axes[row, 0].axis("off")
    overlay(axes[row, 1], image, scenes["labels"][row], "true ships")
    overlay(axes[row, 2], image, instances[row], "semi-convolutional")
    overlay(axes[row, 3], image, components[row], "connected components")
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  plt.close(figure)
