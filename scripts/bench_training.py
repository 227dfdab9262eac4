"""Training throughput of each experiment config, its train step against a PyTorch twin, and its profile.

    python -m scripts.bench_training                    # every experiment, default configs
    python -m scripts.bench_training --experiments=orientation --steps=50
    python -m scripts.bench_training --torch_twin --experiments=orientation,propel --steps=10 --repeats=5
    python -m scripts.bench_training --profile=/tmp/profile --experiments=orientation --steps=5

Throughput (default): for each config, builds the jitted pieces `train.py`
uses (`train.build_training`), times the first step (tracing and compilation
of the batch generator and the train step), then `--steps` steps of batch
generation + train step in a row, as the loop dispatches them. Prints a
markdown table of steps/s and examples/s (the global batch) on all local
devices.

Twin comparison (`--torch_twin`, the experiments with a twin in
`scripts/torch_unet.py`: orientation's U-Net and propel's SmallCNN): the
network in JAX and in PyTorch eager, in one process, with the same
architecture, parameter count and initial weights (the Flax initialisation
is copied into the twin and the outputs compared), the config's batch
size, AdamW with the config's schedule and weight decay, and clipping of the
global gradient norm at the config's value. Each of `--repeats` rounds
times `--steps` steps of every row in turn (the rows interleaved, so that
other load on the machine falls on all of them alike); the table gives the
median ms/step over the rounds, the fastest and slowest round, and the
ratios to the PyTorch row of the same batches (of the medians, of the
fastest rounds, and the range of the ratios within a round). PyTorch runs
on CUDA when JAX runs on a GPU and PyTorch has CUDA, otherwise on the CPU
with as many threads as the process may use (XLA's CPU thread pool has as
many). Other processes on the same cores slow PyTorch's OpenMP threads far
more than XLA's thread pool; the fastest rounds are the least disturbed.

Profile (`--profile=DIR`): traces `--steps` train steps on a fixed batch
with `jax.profiler` into DIR and joins the trace with the optimised HLO of
the step: milliseconds per step by kind of operation (convolutions forward,
input and kernel gradients; matrix products; reductions; transposes;
elementwise fusions) and for the 20 costliest operations, with the
`op_name` of the JAX operation each comes from.
"""

import collections
import glob
import gzip
import json
import os
import re
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import instances
from configs import multitask
from configs import orientation
from configs import propel
import models
from scripts import benchmarking
from scripts import tables
import train

CONFIGS = {"orientation": orientation, "propel": propel, "multitask": multitask, "instances": instances}
_EXPERIMENTS = flags.DEFINE_list("experiments", list(CONFIGS), "Experiments to time.")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps per experiment, after the first; per row and round with "
                              "--torch_twin.")
_TORCH_TWIN = flags.DEFINE_bool("torch_twin", False, "Time the train step against the PyTorch twin of the network "
                                "instead of the throughput table.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Rounds of the twin comparison, each timing every row in turn.")
_PROFILE = flags.DEFINE_string("profile", None, "Directory: trace `--steps` train steps of each experiment with "
                               "jax.profiler into it and print where the step's time goes, by kind of XLA operation "
                               "and for the costliest operations, instead of the throughput table.")


def throughput(config, num_steps: int) -> dict[str, float]:
  training = train.build_training(config)
  state = training.init()
  start = time.perf_counter()
  state, metrics, _ = training.step(state, training.next_batch(config.seed, 0))
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for step in range(1, num_steps + 1):
    state, metrics, _ = training.step(state, training.next_batch(config.seed, step))
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start
  return {"batch": config.batch_size, "first": first, "steps_per_second": num_steps / seconds,
          "examples_per_second": num_steps * config.batch_size / seconds}


COLUMNS = [("batch", "global batch", "{}"), ("first", "first step (s)", "{:.1f}"),
           ("steps_per_second", "steps/s", "{:.2f}"), ("examples_per_second", "examples/s", "{:.0f}")]


def _orientation_twin(config, torch_unet):
  """`(Flax model, PyTorch twin, batch → (NHWC image, target of the network output's shape))`."""
  features = tuple(config.model.features)

  def inputs_and_target(batch):
    angle = np.asarray(batch["orientation"])
    return np.asarray(batch["image"]), np.stack([np.cos(2 * angle), np.sin(2 * angle)], axis=-1)

  return (models.UNet(features=features, out_channels=2),
          torch_unet.UNet(in_channels=1, features=features, out_channels=2), inputs_and_target)


def _propel_twin(config, torch_unet):
  features, hidden = tuple(config.model.features), config.model.hidden

  def inputs_and_target(batch):
    return np.asarray(batch["image"]), np.asarray(batch["target"])

  return (models.SmallCNN(features=features, hidden=hidden, outputs=2),
          torch_unet.SmallCNN(in_channels=1, image_size=config.canvas_size, features=features, hidden=hidden,
                              outputs=2), inputs_and_target)


TWINS = {"orientation": _orientation_twin, "propel": _propel_twin}


def _jax_mse_step(model, optimizer, mesh):
  """Jitted `(params, opt_state, images, target) → (params, opt_state, loss)`, the batch sharded as by `train.py`."""
  def step(params, opt_state, images, target):
    def loss(params):
      return jnp.mean(jnp.square(model.apply({"params": params}, images).astype(jnp.float32) - target))
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  return jax.jit(step, in_shardings=(replicated, replicated, batch, batch), out_shardings=replicated,
                 donate_argnums=(0, 1))


def _torch_mse_steps(twin, config, batches, num_steps: int, torch):
  """`batch_of_step → run`: `run()` takes `num_steps` PyTorch steps on `batches[batch_of_step(step)]`."""
  schedule = train.make_schedule(config)
  learning_rates = np.asarray(jax.vmap(schedule)(jnp.arange(num_steps + 1)))
  optimizer = torch.optim.AdamW(twin.parameters(), lr=float(learning_rates[0]),
                                weight_decay=config.optimizer.weight_decay, eps=1e-8)
  loss_fn = torch.nn.MSELoss()

  def steps(batch_of_step):
    def run():
      for step in range(1, num_steps + 1):
        images, target = batches[batch_of_step(step)]
        for group in optimizer.param_groups:
          group["lr"] = float(learning_rates[step])
        optimizer.zero_grad(set_to_none=True)
        loss_fn(twin(images), target).backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), config.optimizer.grad_clip_norm)
        optimizer.step()
      if images.is_cuda:
        torch.cuda.synchronize()
    return run
  return steps


def _twin_rows(name: str, num_steps: int):
  """`(description, {row: () → None taking num_steps steps}, {JAX row: its PyTorch row})`."""
  # Imported here: only the twin comparison needs PyTorch.
  import torch

  from scripts import torch_unet

  config = CONFIGS[name].get_config()
  model, twin, inputs_and_target = TWINS[name](config, torch_unet)
  device = benchmarking.torch_device(torch)
  training = train.build_training(config)
  batches = [training.next_batch(config.seed, step) for step in range(num_steps + 1)]
  host_batches = [inputs_and_target(jax.device_get(batch)) for batch in batches]

  params = jax.jit(model.init)(jax.random.key(config.seed), host_batches[0][0])["params"]
  num_params = sum(leaf.size for leaf in jax.tree.leaves(params))
  if torch_unet.num_parameters(twin) != num_params:
    raise AssertionError(f"The PyTorch twin has {torch_unet.num_parameters(twin)} parameters, "
                         f"the Flax model {num_params}.")
  torch_unet.load_flax_params(twin, jax.device_get(params))
  twin = twin.to(device)

  def channels_first(array):
    return array.transpose(0, 3, 1, 2) if array.ndim == 4 else array

  torch_batches = [tuple(torch.tensor(channels_first(array)).to(device) for array in pair) for pair in host_batches]
  with torch.no_grad():
    twin_output = twin(torch_batches[0][0]).cpu().numpy()
  jax_output = channels_first(np.asarray(model.apply({"params": params}, host_batches[0][0])))
  # Loose enough for TF32 convolutions on a GPU; a different architecture is off by O(1).
  if not np.abs(twin_output - jax_output).max() <= 1e-2 * np.abs(jax_output).max():
    raise AssertionError(f"The PyTorch twin computes another function: max |Δ| = "
                         f"{np.abs(twin_output - jax_output).max():.3g}.")

  optimizer = train.make_optimizer(config)
  mse_step = _jax_mse_step(model, optimizer, training.mesh)
  batch_sharding = jax.sharding.NamedSharding(training.mesh, jax.sharding.PartitionSpec("data"))
  jax_batches = [jax.device_put(pair, batch_sharding) for pair in host_batches]
  mse_state = [params, optimizer.init(params)]
  train_state = [training.init()]

  def jax_mse(batch_of_step):
    def run():
      for step in range(1, num_steps + 1):
        mse_state[0], mse_state[1], loss = mse_step(*mse_state, *jax_batches[batch_of_step(step)])
      jax.block_until_ready(loss)
    return run

  def jax_train(stream):
    def run():
      for step in range(1, num_steps + 1):
        batch = training.next_batch(config.seed, step) if stream else batches[0]
        train_state[0], metrics, _ = training.step(train_state[0], batch)
      jax.block_until_ready(metrics)
    return run

  torch_mse = _torch_mse_steps(twin, config, torch_batches, num_steps, torch)
  fixed, stream = (lambda step: 0), (lambda step: step)
  network = f"{type(model).__name__} {tuple(config.model.features)}"
  rows = {
      f"JAX, `train.py` step ({config.loss} task loss, metrics, finite checks), fixed batch": jax_train(False),
      f"JAX, {network} + MSE, fixed batch": jax_mse(fixed),
      f"PyTorch, {network} + MSE, fixed batch": torch_mse(fixed),
      "JAX, `train.py` loop: `next_batch` + step (task loss), data stream": jax_train(True),
      f"JAX, {network} + MSE, data stream (batches made beforehand)": jax_mse(stream),
      f"PyTorch, {network} + MSE, the same batches": torch_mse(stream),
  }
  names = list(rows)
  baselines = {names[0]: names[2], names[1]: names[2], names[3]: names[5], names[4]: names[5]}
  description = (f"`configs/{name}.py`: batch {config.batch_size} of {host_batches[0][0].shape[1:]} inputs, "
                 f"{num_params:,} parameters (the twin's count is the same), AdamW (lr schedule "
                 f"{config.schedule.name}, peak {config.optimizer.learning_rate}, weight decay "
                 f"{config.optimizer.weight_decay}), global-norm clipping at {config.optimizer.grad_clip_norm}; "
                 f"MSE = mean over all elements of the network output against a target of its shape; "
                 f"PyTorch {torch.__version__} on {device.type}"
                 + (f" with {torch.get_num_threads()} threads." if device.type == "cpu" else "."))
  return description, rows, baselines


def twin_comparison(name: str, num_steps: int, repeats: int) -> str:
  description, rows, baselines = _twin_rows(name, num_steps)
  seconds = benchmarking.interleaved_rounds(rows, repeats, per_call=num_steps)
  titles = ["row", "ms/step, median", "fastest–slowest round", "JAX / PyTorch, medians",
            "JAX / PyTorch, fastest rounds", "JAX / PyTorch, each round"]
  lines = [description, "", "| " + " | ".join(titles) + " |", "|---" * len(titles) + "|"]
  for row, times in seconds.items():
    ratios = ["—"] * 3
    if row in baselines:
      medians, fastest, (low, high) = benchmarking.ratios(times, seconds[baselines[row]])
      ratios = [f"{medians:.2f}", f"{fastest:.2f}", f"{low:.2f}–{high:.2f}"]
    lines.append(f"| {row} | {1e3 * statistics.median(times):.1f} | {1e3 * min(times):.1f}–{1e3 * max(times):.1f} | "
                 + " | ".join(ratios) + " |")
  return "\n".join(lines)


def _kind(instruction: str, computations: dict[str, str]) -> str:
  """What an optimised-HLO instruction of the entry computation computes, read from its fused body."""
  called = re.search(r"calls=%([\w.\-]+)", instruction)
  body = computations.get(called.group(1), "") if called else instruction
  if " convolution(" in body or " convolution(" in instruction:
    if "transpose(" in instruction:
      return "convolution, input gradient"
    return "convolution, forward" if "op_name=" in instruction else "convolution, kernel gradient"
  if " dot(" in body:
    return "matrix product"
  if " reduce(" in body or " reduce-window(" in body:
    return "reduction"
  name = instruction.split("=")[0]
  if "transpose" in name or "copy" in name:
    return "transpose or copy"
  return "elementwise"


def profile_step(config, num_steps: int, directory: str) -> str:
  """Traces `num_steps` train steps on a fixed batch and tabulates the time of the step's XLA operations."""
  training = train.build_training(config)
  state = training.init()
  batch = training.next_batch(config.seed, 0)
  hlo = training.step.lower(state, batch).compile().as_text()
  state, metrics, _ = training.step(state, batch)
  jax.block_until_ready(metrics)
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    for _ in range(num_steps):
      state, metrics, _ = training.step(state, batch)
    jax.block_until_ready(metrics)
  trace_path = max(glob.glob(os.path.join(directory, "plugins", "profile", "*", "perfetto_trace.json.gz")),
                   key=os.path.getmtime)
  with gzip.open(trace_path) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  seconds = collections.defaultdict(float)  # Per step, by the HLO instruction each thunk runs.
  for event in events:
    if event.get("ph") == "X":
      seconds[event["name"]] += event.get("dur", 0) / 1e6 / num_steps
  computations = {match.group(1): match.group(2)
                  for match in re.finditer(r"\n%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S)}
  instructions = {}
  for line in hlo[hlo.index("\nENTRY"):].splitlines():
    match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ", line)
    if match and match.group(1) in seconds:
      op_name = re.search(r'op_name="([^"]*)"', line)
      instructions[match.group(1)] = (match.group(2), op_name.group(1) if op_name else "", _kind(line, computations))
  total = sum(seconds[name] for name in instructions)
  by_kind = collections.defaultdict(lambda: [0.0, 0])
  for name, (_, _, kind) in instructions.items():
    by_kind[kind][0] += seconds[name]
    by_kind[kind][1] += 1
  header = (f"`configs/{config.task}.py`, {num_steps} steps traced to {trace_path}: "
            f"{1e3 * total:.1f} ms of XLA operations a step.")
  lines = [header, "", "| kind | ms/step | share | operations |", "|---|---|---|---|"]
  lines += [f"| {kind} | {1e3 * t:.1f} | {100 * t / total:.0f}% | {n} |"
            for kind, (t, n) in sorted(by_kind.items(), key=lambda item: -item[1][0])]
  lines += ["", "| ms/step | operation | shape | kind | op_name |", "|---|---|---|---|---|"]
  for name in sorted(instructions, key=lambda name: -seconds[name])[:20]:
    shape, op_name, kind = instructions[name]
    lines.append(f"| {1e3 * seconds[name]:.2f} | `{name}` | `{shape.split('{')[0]}` | {kind} | {op_name} |")
  return "\n".join(lines)


def main(argv):
  del argv
  print(benchmarking.environment("scripts.bench_training", ("jax", "jaxlib", "optax", "flax", "torch")) + "\n")
  if _PROFILE.value:
    for name in _EXPERIMENTS.value:
      print(profile_step(CONFIGS[name].get_config(), _STEPS.value, _PROFILE.value) + "\n", flush=True)
    return
  if not _TORCH_TWIN.value:
    rows = [(f"`configs/{name}.py`", throughput(CONFIGS[name].get_config(), _STEPS.value))
            for name in _EXPERIMENTS.value]
    print(tables.markdown_table(rows, COLUMNS, first="config"))
    return
  for name in _EXPERIMENTS.value:
    if name not in TWINS:
      print(f"`configs/{name}.py`: no PyTorch twin, skipped.\n")
      continue
    print(twin_comparison(name, _STEPS.value, _REPEATS.value) + "\n", flush=True)


if __name__ == "__main__":
  app.run(main)
