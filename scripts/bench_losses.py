"""Loss benchmarks: each public loss against the formulation a user would otherwise write, and a floor.

    python -m scripts.bench_losses                      # every benchmark at every size
    python -m scripts.bench_losses --quick --only=angular,propel
    python -m scripts.bench_losses --output=/tmp/loss-benchmarks.md

For every loss and size it times, in one process and side by side:

* ours: the `losses` function, jitted, forward (the scalar loss) and
  forward + backward (`jax.value_and_grad` with respect to the predicted
  input);
* the peers: the formulation one would otherwise pick, rewritten from the
  circulating sources with their bugs fixed and jitted (arccos of the
  normalised dot product clipped to [−1, 1]; PROPEL's direct formula from
  `torchpropel` with H(P_gt) in D dimensions; the one-hot semi-convolutional
  loss; the broadcast all-masks-against-all-masks F2), PyTorch eager where a
  PyTorch version exists (the same arccos formula, `torchpropel.getloss`),
  and a pure-Python loop on a small input, reported per element;
* the floor: a jitted elementwise op that reads the same inputs once and
  writes as many bytes as the loss's per-element output (forward), or an
  array of the gradient's size plus a scalar (forward + backward).

The `spatial` section (`--only=spatial`) times the discriminative loss, the
complete semi-convolutional loss (a fixed number of seeds per image) and the
spatial-embedding loss (a fixed number of sampled instances in its Lovász
hinge) at 1, 16, 64 and 256 instances per image, forward and forward +
backward, with their memory: all three flat in K.

Times are wall-clock medians over repeats after two warm-up calls, with
`block_until_ready`; the repeats of the implementations of one size are
interleaved, so that load from other processes falls on all of them alike.
PyTorch runs with as many threads as the cores this process may use, which
is also the size of XLA's CPU thread pool. Peak memory of the
semi-convolutional loss as the number of instances grows is the compiled
program's own account (`memory_analysis()`: temporaries + outputs), since
there is no allocator high-water mark for the CPU backend. Prints Markdown.
"""

from collections.abc import Callable
import math
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import losses
from scripts import benchmarking

_QUICK = flags.DEFINE_bool("quick", False, "Fewer sizes and repeats (a smoke test).")
_ONLY = flags.DEFINE_list("only", ["angular", "propel", "semi_conv", "spatial", "f2", "multitask"],
                          "Which benchmarks: angular, propel, semi_conv, spatial, f2, multitask.")
_REPEATS = flags.DEFINE_integer("repeats", 0, "Timed repeats per implementation (0: 15, or 5 with --quick).")
_OUTPUT = flags.DEFINE_string("output", "", "Also write the Markdown to this file.")

CORES = benchmarking.usable_cores()
torch = benchmarking.optional_import("torch")
if torch is not None:
  torch.set_num_threads(CORES)
torchpropel = benchmarking.optional_import("torchpropel")


# ----------------------------------------------------------------------------
# Timing.


class Impl:
  """One implementation at one size: a call that returns something to wait for."""

  def __init__(self, name: str, call: Callable[[], object], kind: str = "jax", elements: int = 1):
    self.name, self.call, self.kind, self.elements = name, call, kind, elements
    self.times: list[float] = []

  def run(self) -> None:
    result = self.call()
    if self.kind == "jax":
      jax.block_until_ready(result)


def measure(impls: list[Impl], repeats: int, budget_s: float) -> None:
  """Warms the implementations up, then times them round-robin; a slow one gets fewer repeats (≥ 3)."""
  runs = {impl: impl.run for impl in impls}
  warm = benchmarking.interleaved_rounds(runs, 1)  # The first call compiles (JAX) or warms caches.
  wanted = {impl: max(3, min(repeats, int(budget_s / max(seconds, 1e-9)))) for impl, (seconds,) in warm.items()}
  for impl, times in benchmarking.interleaved_rounds(runs, wanted, warmup=0).items():
    impl.times = times


def median_ms(impl: Impl | None) -> float | None:
  return None if impl is None or not impl.times else 1e3 * statistics.median(impl.times)


def fmt_ms(value: float | None) -> str:
  if value is None:
    return "—"
  return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def fmt_ratio(numerator: float | None, denominator: float | None) -> str:
  if numerator is None or denominator is None:
    return "—"
  ratio = numerator / denominator
  return f"{ratio:.2g}×" if ratio < 10 else f"{ratio:.0f}×"


def comparison_table(rows: list[tuple[str, Impl | None, Impl | None]], ours: tuple[Impl, Impl | None],
                     floor: tuple[Impl, Impl | None]) -> str:
  """Rows of (name, forward, forward+backward); ratios are peer time / our time, and ours / floor."""
  ours_f, ours_b = median_ms(ours[0]), median_ms(ours[1])
  lines = ["| implementation | forward (ms) | fwd+bwd (ms) | ours faster, forward | ours faster, fwd+bwd |",
           "|---|---|---|---|---|",
           f"| **ours** | {fmt_ms(ours_f)} | {fmt_ms(ours_b)} | — | — |"]
  for name, forward, backward in rows:
    peer_f, peer_b = median_ms(forward), median_ms(backward)
    lines.append(f"| {name} | {fmt_ms(peer_f)} | {fmt_ms(peer_b)} | {fmt_ratio(peer_f, ours_f)} | "
                 f"{fmt_ratio(peer_b, ours_b)} |")
  floor_f, floor_b = median_ms(floor[0]), median_ms(floor[1])
  lines.append(f"| floor (see below) | {fmt_ms(floor_f)} | {fmt_ms(floor_b)} | ours = {fmt_ratio(ours_f, floor_f)} "
               f"floor | ours = {fmt_ratio(ours_b, floor_b)} floor |")
  return "\n".join(lines)


def per_element_line(python: Impl | None, ours_forward: Impl, unit: str, ours_elements: int) -> str:
  """The pure-Python loop's time per element against ours per element (forward)."""
  if python is None or not python.times:
    return ""
  python_us = 1e6 * statistics.median(python.times) / python.elements
  ours_us = 1e6 * statistics.median(ours_forward.times) / ours_elements
  comparison = (f"{fmt_ratio(python_us, ours_us)} faster" if python_us >= ours_us
                else f"{fmt_ratio(ours_us, python_us)} slower")
  return (f"Pure-Python loop (forward, {python.elements:,} {unit}s): {python_us:.3g} µs per {unit}; ours "
          f"{ours_us:.3g} µs per {unit} at the size above, {comparison}.")


def jitted(fn, *args):
  compiled = jax.jit(fn)
  return lambda: compiled(*args)


def value_and_grad(fn, *args):
  """Jitted value and gradient with respect to the first argument."""
  compiled = jax.jit(jax.value_and_grad(fn))
  return lambda: compiled(*args)


# ----------------------------------------------------------------------------
# Angular loss.


def angular_arccos_jax(y_true, y_pred, delta=0.2):
  """The circulating formula with its bugs fixed: arccos of the normalised dot, clipped to [−1, 1]."""
  cosine = jnp.sum(y_true * y_pred, axis=-1) / (
      jnp.linalg.norm(y_true, axis=-1) * jnp.linalg.norm(y_pred, axis=-1))
  return jnp.mean(jnp.arccos(jnp.clip(cosine, -1.0, 1.0)) ** (1.0 + delta))


def angular_arccos_torch(y_true, y_pred, delta=0.2):
  cosine = (y_true * y_pred).sum(-1) / (y_true.norm(dim=-1) * y_pred.norm(dim=-1))
  return torch.arccos(cosine.clamp(-1.0, 1.0)).pow(1.0 + delta).mean()


def angular_python(y_true, y_pred, delta=0.2):
  total = 0.0
  for (t0, t1), (p0, p1) in zip(y_true, y_pred):
    cosine = (t0 * p0 + t1 * p1) / (math.hypot(t0, t1) * math.hypot(p0, p1))
    total += math.acos(max(-1.0, min(1.0, cosine))) ** (1.0 + delta)
  return total / len(y_true)


def torch_forward(fn, *args):
  def call():
    with torch.no_grad():
      return fn(*args)
  return call


def torch_value_and_grad(fn, first, *rest):
  """Forward and backward with respect to `first` (a fresh leaf per call)."""
  def call():
    leaf = first.detach().requires_grad_(True)
    value = fn(leaf, *rest)
    value.backward()
    return value
  return call


def bench_angular(quick: bool, repeats: int, budget: float) -> str:
  shapes = [(16, 256, 256, 2)] if quick else [(4, 64, 64, 2), (16, 128, 128, 2), (16, 256, 256, 2)]
  out = ["## Angular loss θ^(1+δ), δ = 0.2 (`losses.angular_loss`)", ""]
  for shape in shapes:
    keys = jax.random.split(jax.random.key(0))
    y_true = jax.random.normal(keys[0], shape)
    y_pred = jax.random.normal(keys[1], shape)
    pixels = int(np.prod(shape[:-1]))
    ours_f = Impl("ours f", jitted(lambda t, p: losses.angular_loss(p, t), y_true, y_pred))
    ours_b = Impl("ours b", value_and_grad(losses.angular_loss, y_pred, y_true))
    peer_f = Impl("arccos f", jitted(angular_arccos_jax, y_true, y_pred))
    peer_b = Impl("arccos b", value_and_grad(lambda p, t: angular_arccos_jax(t, p), y_pred, y_true))
    # Floor: read both inputs, write one value per pixel / a gradient-sized array and a scalar.
    floor_f = Impl("floor f", jitted(lambda t, p: t[..., 0] + t[..., 1] + p[..., 0] + p[..., 1], y_true, y_pred))
    floor_b = Impl("floor b", jitted(lambda t, p: (lambda g: (g, g[(0,) * g.ndim]))(t + p), y_true, y_pred))
    impls = [ours_f, ours_b, peer_f, peer_b, floor_f, floor_b]
    torch_f = torch_b = python = None
    if torch is not None:
      t_true, t_pred = torch.tensor(np.asarray(y_true)), torch.tensor(np.asarray(y_pred))
      torch_f = Impl("torch f", torch_forward(angular_arccos_torch, t_true, t_pred), "torch")
      torch_b = Impl("torch b", torch_value_and_grad(lambda p, t: angular_arccos_torch(t, p), t_pred, t_true), "torch")
      impls += [torch_f, torch_b]
    if shape == shapes[-1]:
      small_t = np.asarray(y_true[0, :32, :32]).reshape(-1, 2).tolist()
      small_p = np.asarray(y_pred[0, :32, :32]).reshape(-1, 2).tolist()
      python = Impl("python", lambda t=small_t, p=small_p: angular_python(t, p), "python", elements=len(small_t))
      impls.append(python)
    measure(impls, repeats, budget)
    rows = [("JAX arccos of the normalised dot, jitted", peer_f, peer_b)]
    if torch is not None:
      rows.append((f"PyTorch eager, same arccos formula ({torch.get_num_threads()} threads)", torch_f, torch_b))
    out += [f"Shape {shape} float32 ({pixels:,} pixels).", "", comparison_table(rows, (ours_f, ours_b),
                                                                              (floor_f, floor_b)), ""]
    if python is not None:
      out += [per_element_line(python, ours_f, "pixel", pixels), ""]
  return "\n".join(out)


# ----------------------------------------------------------------------------
# PROPEL.


def propel_direct_jax(pred, target, sigma=0.1):
  """`torchpropel.getloss` rewritten in JAX: overlaps formed directly, i < j pairs from an index list,
  with its bugs fixed (H(P_gt) in D dimensions, (μ_a − μ_b)² formed directly)."""
  dims, num = target.shape[-1], pred.shape[1]
  means, variances = pred[..., :dims], pred[..., dims:] ** 2

  def overlap(mean_a, var_a, mean_b, var_b):
    total = var_a + var_b
    return jnp.exp(-0.5 * jnp.sum((mean_a - mean_b) ** 2 / total, axis=-1)) / (
        (2.0 * math.pi) ** (dims / 2) * jnp.sqrt(jnp.prod(total, axis=-1)))

  t1 = 2.0 / num * jnp.sum(overlap(target[:, None], sigma ** 2, means, variances), axis=-1)
  self_overlaps = 1.0 / ((2.0 * math.sqrt(math.pi)) ** dims * jnp.sqrt(jnp.prod(variances, axis=-1)))
  first, second = np.triu_indices(num, 1)
  t2 = (2.0 * math.sqrt(math.pi) * sigma) ** (-dims) + jnp.sum(self_overlaps, axis=-1) / num ** 2
  t2 = t2 + 2.0 / num ** 2 * jnp.sum(
      overlap(means[:, first], variances[:, first], means[:, second], variances[:, second]), axis=-1)
  return jnp.mean(jnp.log10(t2) - jnp.log10(t1))


def propel_python(pred, target, sigma=0.1):
  """PROPEL per example in plain Python: every overlap of the I×I matrix as a product over dimensions."""
  dims = len(target[0])

  def overlap(mean_a, std_a, mean_b, std_b):
    value = 1.0
    for a, s_a, b, s_b in zip(mean_a, std_a, mean_b, std_b):
      variance = s_a * s_a + s_b * s_b
      value *= math.exp(-(a - b) ** 2 / (2 * variance)) / math.sqrt(2 * math.pi * variance)
    return value

  total = 0.0
  for components, point in zip(pred.tolist(), target.tolist()):
    parts = [(c[:dims], c[dims:]) for c in components]
    truth = (point, [sigma] * dims)
    t1 = 2 * sum(overlap(*truth, *part) for part in parts) / len(parts)
    t2 = overlap(*truth, *truth) + sum(overlap(*a, *b) for a in parts for b in parts) / len(parts) ** 2
    total += math.log10(t2) - math.log10(t1)
  return total / len(target)


def propel_torchpropel(pred, target, sigma=0.1):
  """`torchpropel.getloss` with the ground-truth variance in D dimensions (as tests/test_propel.py calls it)."""
  dims = target.shape[-1]
  variance = torch.full((1, 1, dims), sigma ** 2)
  loss, _, _ = torchpropel.getloss(target, variance, pred[..., :dims], pred[..., dims:] ** 2)
  return loss.mean()


def bench_propel(quick: bool, repeats: int, budget: float) -> str:
  configs = [(4096, 8, 3)] if quick else [(1024, 2, 2), (4096, 8, 3), (4096, 16, 3)]
  out = ["## PROPEL (`losses.propel_loss`, σ = 0.1)", ""]
  for batch, components, dims in configs:
    keys = jax.random.split(jax.random.key(1), 3)
    means = 0.5 * jax.random.normal(keys[0], (batch, components, dims))
    stds = jax.random.uniform(keys[1], (batch, components, dims), minval=0.3, maxval=1.0)
    pred = jnp.concatenate([means, stds], axis=-1)
    target = 0.5 * jax.random.normal(keys[2], (batch, dims))
    ours_f = Impl("ours f", jitted(lambda p, t: losses.propel_loss(p, t), pred, target))
    ours_b = Impl("ours b", value_and_grad(lambda p, t: losses.propel_loss(p, t), pred, target))
    peer_f = Impl("direct f", jitted(propel_direct_jax, pred, target))
    peer_b = Impl("direct b", value_and_grad(propel_direct_jax, pred, target))
    # Floor: read pred and target, write one value per example / a pred-sized array and a scalar.
    floor_f = Impl("floor f", jitted(lambda p, t: jnp.sum(p, axis=(1, 2)) + jnp.sum(t, axis=1), pred, target))
    floor_b = Impl("floor b", jitted(lambda p, t: (lambda g: (g, g[0, 0, 0]))(p + t[:, None, :1]), pred, target))
    impls = [ours_f, ours_b, peer_f, peer_b, floor_f, floor_b]
    tp_f = tp_b = python = None
    if torch is not None and torchpropel is not None:
      t_pred, t_target = torch.tensor(np.asarray(pred)), torch.tensor(np.asarray(target))
      tp_f = Impl("torchpropel f", torch_forward(propel_torchpropel, t_pred, t_target), "torch")
      tp_b = Impl("torchpropel b", torch_value_and_grad(propel_torchpropel, t_pred, t_target), "torch")
      impls += [tp_f, tp_b]
    if (batch, components, dims) == configs[-1] or (batch, components, dims) == (4096, 8, 3):
      small = np.asarray(pred[:64]), np.asarray(target[:64])
      python = Impl("python", lambda s=small: propel_python(*s), "python", elements=64)
      impls.append(python)
    measure(impls, repeats, budget)
    rows = [("JAX direct formula (torchpropel's, fixed), jitted", peer_f, peer_b)]
    if tp_f is not None:
      rows.append((f"torchpropel.getloss, PyTorch eager ({torch.get_num_threads()} threads)", tp_f, tp_b))
    out += [f"B = {batch}, I = {components}, D = {dims}, float32.", "",
            comparison_table(rows, (ours_f, ours_b), (floor_f, floor_b)), ""]
    if python is not None:
      out += [per_element_line(python, ours_f, "example", batch), ""]
  return "\n".join(out)


# ----------------------------------------------------------------------------
# Semi-convolutional loss.


def semi_conv_one_hot(labels, embeddings, max_instances):
  """The circulating one-hot formulation with its bugs fixed (depth K + 1, background dropped)."""
  one_hot = jax.nn.one_hot(labels, max_instances + 1, dtype=embeddings.dtype)[..., 1:]  # (B, H, W, K)
  counts = one_hot.sum(axis=(1, 2))
  means = jnp.einsum("bhwk,bhwc->bkc", one_hot, embeddings) / jnp.maximum(counts, 1.0)[..., None]
  difference = embeddings[:, :, :, None, :] - means[:, None, None]  # (B, H, W, K, C)
  squared = jnp.sum(difference * difference, axis=-1)
  distances = jnp.where(squared > 0, jnp.sqrt(jnp.where(squared > 0, squared, 1.0)), 0.0)
  per_instance = jnp.sum(one_hot * distances, axis=(1, 2)) / jnp.maximum(counts, 1.0)
  return jnp.mean(per_instance.sum(axis=1))


def semi_conv_python(labels, embeddings):
  """Per image, two passes over the pixels with dictionaries of per-instance sums."""
  total = 0.0
  for ids, psi in zip(labels, embeddings):
    sums, counts = {}, {}
    for i, vector in zip(ids, psi):
      if i:
        acc = sums.setdefault(i, [0.0] * len(vector))
        for c, value in enumerate(vector):
          acc[c] += value
        counts[i] = counts.get(i, 0) + 1
    means = {i: [value / counts[i] for value in acc] for i, acc in sums.items()}
    distance_sums = {}
    for i, vector in zip(ids, psi):
      if i:
        distance_sums[i] = distance_sums.get(i, 0.0) + math.sqrt(
            sum((a - b) ** 2 for a, b in zip(vector, means[i])))
    total += sum(distance_sums[i] / counts[i] for i in distance_sums)
  return total / len(labels)


def voronoi_labels(batch, height, width, num_instances, seed=0, background=0.3):
  """Each pixel belongs to its nearest of `num_instances` random seeds; a random 30% is background."""
  rng = np.random.default_rng(seed)
  seeds = rng.uniform(0, 1, (batch, num_instances, 2))
  rows, cols = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
  labels = np.empty((batch, height, width), np.int32)
  for b in range(batch):
    squared = (rows[..., None] - seeds[b, :, 0]) ** 2 + (cols[..., None] - seeds[b, :, 1]) ** 2
    labels[b] = squared.argmin(-1) + 1
  labels[rng.random(labels.shape) < background] = 0
  return jnp.asarray(labels)


def memory_mb(fn, *args) -> float:
  """Temporaries + outputs of the compiled program, in MB (XLA's own account; CPU has no allocator peak)."""
  analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
  return (analysis.temp_size_in_bytes + analysis.output_size_in_bytes) / 1e6


def bench_semi_conv(quick: bool, repeats: int, budget: float) -> str:
  batch, height, width, channels = 8, 128, 128, 4
  counts = [1, 64, 256] if quick else [1, 4, 16, 64, 256]
  embeddings = jax.random.normal(jax.random.key(2), (batch, height, width, channels))
  out = ["## Semi-convolutional loss (`losses.semi_conv_loss`)", "",
         (f"B = {batch}, {height}×{width} pixels, C = {channels} embedding channels, float32; K instances per image "
          "(Voronoi cells of K random seeds, 30% of the pixels background), `max_instances` = K."), "",
         ("| K | ours forward (ms) | ours fwd+bwd (ms) | one-hot forward (ms) | one-hot fwd+bwd (ms) | ours faster, "
          "fwd+bwd | ours memory, fwd+bwd (MB) | one-hot memory, fwd+bwd (MB) | ours memory, forward (MB) | "
          "one-hot memory, forward (MB) |"),
         "|---|---|---|---|---|---|---|---|---|---|"]
  at_64 = None
  for num in counts:
    labels = voronoi_labels(batch, height, width, num)
    ours_fn = lambda e, l, k=num: losses.semi_conv_loss(e, l, max_instances=k)
    hot_fn = lambda e, l, k=num: semi_conv_one_hot(l, e, k)
    ours_f = Impl("ours f", jitted(ours_fn, embeddings, labels))
    ours_b = Impl("ours b", value_and_grad(ours_fn, embeddings, labels))
    hot_f = Impl("one-hot f", jitted(hot_fn, embeddings, labels))
    hot_b = Impl("one-hot b", value_and_grad(hot_fn, embeddings, labels))
    impls = [ours_f, ours_b, hot_f, hot_b]
    if num == 64:
      # Floor: read labels and embeddings, write one value per image / an embedding-sized array and a scalar.
      floor_f = Impl("floor f", jitted(lambda e, l: jnp.sum(e, axis=(1, 2, 3)) + jnp.sum(l, axis=(1, 2)),
                                       embeddings, labels))
      floor_b = Impl("floor b", jitted(lambda e, l: (lambda g: (g, g[0, 0, 0, 0]))(e + l[..., None]),
                                       embeddings, labels))
      python_labels = np.asarray(labels[:1, :32, :32]).reshape(1, -1).tolist()
      python_embeddings = np.asarray(embeddings[:1, :32, :32]).reshape(1, -1, channels).tolist()
      python = Impl("python", lambda l=python_labels, e=python_embeddings: semi_conv_python(l, e), "python",
                    elements=32 * 32)
      impls += [floor_f, floor_b, python]
      at_64 = (ours_f, ours_b, floor_f, floor_b, python)
    measure(impls, repeats, budget)
    memory = [memory_mb(jax.value_and_grad(ours_fn), embeddings, labels),
              memory_mb(jax.value_and_grad(hot_fn), embeddings, labels),
              memory_mb(ours_fn, embeddings, labels), memory_mb(hot_fn, embeddings, labels)]
    out.append(f"| {num} | {fmt_ms(median_ms(ours_f))} | {fmt_ms(median_ms(ours_b))} | {fmt_ms(median_ms(hot_f))} | "
               f"{fmt_ms(median_ms(hot_b))} | {fmt_ratio(median_ms(hot_b), median_ms(ours_b))} | "
               + " | ".join(f"{m:.1f}" for m in memory) + " |")
  if at_64 is not None:
    ours_f, ours_b, floor_f, floor_b, python = at_64
    out += ["", (f"Floor at K = 64: forward {fmt_ms(median_ms(floor_f))} ms, fwd+bwd {fmt_ms(median_ms(floor_b))} ms "
                 f"(ours = {fmt_ratio(median_ms(ours_f), median_ms(floor_f))} and "
                 f"{fmt_ratio(median_ms(ours_b), median_ms(floor_b))} the floor)."), "",
            per_element_line(python, ours_f, "pixel", batch * height * width)]
  return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------
# Discriminative and spatial-embedding losses as the number of instances grows.


def bench_spatial(quick: bool, repeats: int, budget: float) -> str:
  """The losses whose natural form is per instance over the whole image, against K instances per image."""
  batch, height, width, channels = (2 if quick else 8), 128, 128, 2
  keys = jax.random.split(jax.random.key(3), 3)
  embeddings = jax.random.normal(keys[0], (batch, height, width, channels))
  sigmas = jax.random.uniform(keys[1], (batch, height, width), minval=0.5, maxval=1.5)
  seeds = jax.random.normal(keys[2], (batch, height, width))
  key = jax.random.key(4)
  counts = (1, 16, 64, 256)
  out = [("## Instance losses against the number of instances (`losses.discriminative_loss`, "
          "`losses.semi_conv_kernel_loss`, `losses.spatial_embedding_loss`)"), "",
         (f"B = {batch}, {height}×{width} pixels, C = {channels} embedding channels, one σ per pixel, float32; K "
          "instances per image (Voronoi cells of K random seeds, 30% of the pixels background), `max_instances` = K; "
          "value (forward) and `jax.value_and_grad` with respect to the embeddings (fwd+bwd), jitted. "
          "`semi_conv_kernel_loss`: eq. 5 + the Laplacian-kernel cross-entropy of `num_seeds` = 8 seeds per image, "
          f"σ = 1. `spatial_embedding_loss`: the Lovász hinge of `sampled_instances` = {SAMPLED_INSTANCES} drawn "
          f"instances per image (all of them, exact, at K ≤ {SAMPLED_INSTANCES}). Memory is the compiled program's "
          "temporaries + outputs."), "",
         "| loss | K | forward (ms) | fwd+bwd (ms) | memory, forward (MB) | memory, fwd+bwd (MB) |",
         "|---|---|---|---|---|---|"]
  names = ("discriminative_loss", "semi_conv_kernel_loss", "spatial_embedding_loss")
  rows = {}
  for num in counts:
    labels = voronoi_labels(batch, height, width, num)
    functions = {
        "discriminative_loss": lambda e, l, k=num: losses.discriminative_loss(e, l, max_instances=k),
        "semi_conv_kernel_loss": lambda e, l, k=num: losses.semi_conv_kernel_loss(e, l, sigma=1.0, key=key,
                                                                                  max_instances=k),
        "spatial_embedding_loss": lambda e, l, k=num: losses.spatial_embedding_loss(
            e, sigmas, seeds, l, max_instances=k, sampled_instances=SAMPLED_INSTANCES, key=key),
    }
    impls = {}
    for name, fn in functions.items():
      impls[name] = (Impl(f"{name} f", jitted(fn, embeddings, labels)),
                     Impl(f"{name} b", value_and_grad(fn, embeddings, labels)))
    measure([impl for pair in impls.values() for impl in pair], repeats, budget)
    for name, fn in functions.items():
      forward, backward = impls[name]
      memory = memory_mb(fn, embeddings, labels), memory_mb(jax.value_and_grad(fn), embeddings, labels)
      rows[name, num] = (median_ms(forward), median_ms(backward)) + memory
  for name in names:
    for num in counts:
      f, b, memory_f, memory_b = rows[name, num]
      out.append(f"| `{name}` | {num} | {fmt_ms(f)} | {fmt_ms(b)} | {memory_f:.1f} | {memory_b:.1f} |")
  out.append("")
  for name in names:
    (f1, b1, m1, mb1), (f256, b256, m256, mb256) = rows[name, 1], rows[name, 256]
    out.append(f"`{name}` from K = 1 to K = 256: forward {fmt_ratio(f256, f1)}, fwd+bwd {fmt_ratio(b256, b1)} the "
               f"time; memory {fmt_ratio(m256, m1)} (forward) and {fmt_ratio(mb256, mb1)} (fwd+bwd).")
    out.append("")
  return "\n".join(out)


SAMPLED_INSTANCES = 4  # The spatial-embedding loss's hinge instances per image in `bench_spatial`.


# ----------------------------------------------------------------------------
# Airbus F2 metric.

THRESHOLDS = np.asarray(losses.matching.AIRBUS_THRESHOLDS, np.float32)


def f2_broadcast(true_labels, pred_labels, max_instances):
  """Every true mask against every predicted mask by broadcasting (K_t, K_p, H, W); ids in 1…max_instances."""
  ids = jnp.arange(1, max_instances + 1)

  def per_image(truth, prediction):
    true_masks = truth[None] == ids[:, None, None]
    pred_masks = prediction[None] == ids[:, None, None]
    intersection = jnp.sum(true_masks[:, None] & pred_masks[None], axis=(2, 3))
    union = jnp.sum(true_masks[:, None] | pred_masks[None], axis=(2, 3))
    iou = intersection / jnp.maximum(union, 1)
    true_exists, pred_exists = true_masks.any(axis=(1, 2)), pred_masks.any(axis=(1, 2))
    matched = iou[None] > THRESHOLDS[:, None, None]
    true_positives = jnp.sum(jnp.any(matched, axis=2) & true_exists, axis=1)
    false_negatives = jnp.sum(true_exists) - true_positives
    false_positives = jnp.sum(~jnp.any(matched, axis=1) & pred_exists, axis=1)
    denominator = 5 * true_positives + 4 * false_negatives + false_positives
    return jnp.mean(jnp.where(denominator > 0, 5 * true_positives / jnp.maximum(denominator, 1), 1.0))

  return jnp.mean(jax.vmap(per_image)(true_labels, pred_labels))


def f2_python(true_labels, pred_labels):
  """Per image: a pixel loop builds the contingency counts, then IoUs and F2 per threshold."""
  scores = []
  for truth, prediction in zip(true_labels, pred_labels):
    joint, true_area, pred_area = {}, {}, {}
    for t, p in zip(truth, prediction):
      if t:
        true_area[t] = true_area.get(t, 0) + 1
      if p:
        pred_area[p] = pred_area.get(p, 0) + 1
      if t and p:
        joint[(t, p)] = joint.get((t, p), 0) + 1
    if not true_area and not pred_area:
      scores.append(1.0)
      continue
    iou = {(t, p): n / (true_area[t] + pred_area[p] - n) for (t, p), n in joint.items()}
    per_threshold = []
    for threshold in THRESHOLDS:
      hits = [key for key, value in iou.items() if value > threshold]
      true_positives = len({t for t, _ in hits})
      false_negatives = len(true_area) - true_positives
      false_positives = len(pred_area) - len({p for _, p in hits})
      per_threshold.append(5 * true_positives / (5 * true_positives + 4 * false_negatives + false_positives))
    scores.append(sum(per_threshold) / len(per_threshold))
  return sum(scores) / len(scores)


def rectangle_scenes(batch, size, num_objects, seed=0):
  """Up to `num_objects` random rectangles (ids 1…n) per image; the prediction drops 5% of the pixels
  and is shifted by one column."""
  rng = np.random.default_rng(seed)
  truth = np.zeros((batch, size, size), np.int32)
  for image in truth:
    for k in range(1, num_objects + 1):
      r, c = rng.integers(0, size - 12, 2)
      h, w = rng.integers(3, 12, 2)
      image[r:r + h, c:c + w] = k
  prediction = np.roll(np.where(rng.random(truth.shape) < 0.05, 0, truth), 1, axis=2)
  return jnp.asarray(truth), jnp.asarray(prediction)


def bench_f2(quick: bool, repeats: int, budget: float) -> str:
  configs = [(8, 64, 32)] if quick else [(8, 64, 32), (8, 128, 64)]
  out = ["## Airbus F2 metric (`losses.f2_iou_score`, forward only: a metric)", ""]
  for batch, size, max_instances in configs:
    truth, prediction = rectangle_scenes(batch, size, max_instances // 2)
    ours = Impl("ours", jitted(lambda t, p, m=max_instances: losses.f2_iou_score(p, t, max_instances=m), truth,
                               prediction))
    broadcast = Impl("broadcast", jitted(lambda t, p, m=max_instances: f2_broadcast(t, p, m), truth, prediction))
    # Floor: read both label maps, write one value per image.
    floor = Impl("floor", jitted(lambda t, p: jnp.sum(t + p, axis=(1, 2)), truth, prediction))
    impls = [ours, broadcast, floor]
    python = None
    if size == configs[-1][1]:
      flat_t = np.asarray(truth[:2]).reshape(2, -1).tolist()
      flat_p = np.asarray(prediction[:2]).reshape(2, -1).tolist()
      python = Impl("python", lambda t=flat_t, p=flat_p: f2_python(t, p), "python", elements=2 * size * size)
      impls.append(python)
    measure(impls, repeats, budget)
    assert abs(float(ours.call()) - float(broadcast.call())) < 1e-6
    out += [(f"B = {batch}, {size}×{size} pixels, {max_instances // 2} objects per image, "
             f"`max_instances` = {max_instances}."),
            "", "| implementation | time (ms) | ours faster |", "|---|---|---|",
            f"| **ours** (contingency table of compacted ids) | {fmt_ms(median_ms(ours))} | — |",
            (f"| JAX broadcast (K_t, K_p, H, W), jitted | {fmt_ms(median_ms(broadcast))} | "
             f"{fmt_ratio(median_ms(broadcast), median_ms(ours))} |"),
            (f"| floor (see below) | {fmt_ms(median_ms(floor))} | "
             f"ours = {fmt_ratio(median_ms(ours), median_ms(floor))} floor |"), ""]
    if python is not None:
      out += [per_element_line(python, ours, "pixel", batch * size * size), ""]
  return "\n".join(out)


# ----------------------------------------------------------------------------


def environment() -> str:
  return (benchmarking.environment("scripts.bench_losses", ("jax", "jaxlib", "numpy", "torch", "torchpropel"))
          + f" XLA's CPU thread pool and PyTorch's intra-op threads: {CORES}.")


BENCHMARKS = {"angular": bench_angular, "propel": bench_propel, "semi_conv": bench_semi_conv, "spatial": bench_spatial,
              "f2": bench_f2}


def main(argv):
  del argv
  unknown = set(_ONLY.value) - set(BENCHMARKS) - {"multitask"}
  if unknown:
    raise app.UsageError(f"--only: unknown benchmarks {sorted(unknown)}; choose from "
                         f"{sorted(BENCHMARKS) + ['multitask']}.")
  repeats = _REPEATS.value or (5 if _QUICK.value else 15)
  budget = 2.0 if _QUICK.value else 6.0  # Seconds of timed calls per implementation and size, at most.
  sections = [environment(), ""]
  started = time.perf_counter()
  for name, bench in BENCHMARKS.items():
    if name in _ONLY.value:
      sections.append(bench(_QUICK.value, repeats, budget))
      print(sections[-1], flush=True)
  if "multitask" in _ONLY.value:
    sections.append("## Multi-task weighting\n\n`trainable_alpha_loss`, `balanced_weights_loss` and the "
                    "`loss_weighting` rules combine a handful of scalar task losses: a few scalar operations, "
                    "not worth timing against a model's forward pass.\n")
    print(sections[-1])
  sections.append(f"Total benchmark time {time.perf_counter() - started:.0f} s.")
  print(sections[0])
  print(sections[-1])
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w", encoding="utf-8") as output:
      output.write("\n".join(sections) + "\n")


if __name__ == "__main__":
  app.run(main)
