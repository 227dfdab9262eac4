"""Step time of the multi-task methods in `train.py`, and of TorchJD's on the same network and batch.

    python -m scripts.bench_multitask                                  # every method, JAX only
    python -m scripts.bench_multitask --steps=2 --repeats=1 --methods=upgrad,mgda
    python -m scripts.bench_multitask --torch --steps=5 --repeats=5    # with the TorchJD rows

JAX: for `configs/multitask.py:<--variant>` (its batch and model), `train.build_training` of the plain
summed-loss step (weighting "fixed" with every weight 1) and of each method of `--methods` (by default
every gradient-level aggregator, `losses.AGGREGATOR_NAMES`, and the loss-level weightings
"trainable", "uncertainty", "dwa" and "famo" where they exist). Each jitted `training.step` is compiled
first, then timed on one fixed batch (`training.next_batch(config.seed, 0)`).

TorchJD (`--torch`): the PyTorch twin of the same U-Net (`scripts/torch_unet.py`) with the same initial
weights (its outputs, task losses and per-task Jacobian of the shared parameters checked against JAX's),
the same three losses on the same batch, `torchjd.autojac.mtl_backward` on the shared features (the
encoder's skip tensors and bottleneck output) then `torchjd.autojac.jac_to_grad` over the encoder's
parameters with `UPGrad()`, `MGDA()` or `PCGrad()`, global-norm clipping and Adam with the config's
schedule, as `train.make_optimizer` builds it; and a plain PyTorch step of the summed losses. PyTorch runs
on CUDA when JAX runs on a GPU and PyTorch has CUDA, otherwise on the CPU with as many threads as the
process may use (`scripts/benchmarking.py`, `torch_device`).

Each of `--repeats` rounds times `--steps` steps of every row in turn (the rows interleaved, so that other
load on the machine falls on all of them alike), after one untimed round; the table gives the median
ms/step over the rounds, its ratio to the plain JAX step and, for the methods TorchJD has, to TorchJD's
(the ratio of the medians, and the range of the ratios within a round). The JAX step is the whole step of
the loop: the per-task gradients, the aggregation, the logged weights and metrics, the finite checks and
the optimizer; the PyTorch step computes the losses, the gradients and the update only. The methods of
`--representation_methods` get a second row each, with `config.representation_gradients` (the aggregator
on the gradients of the encoder's output, LibMTL's rep_grad).
"""

import copy
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import multitask as multitask_configs
import losses
import models
from scripts import benchmarking
from scripts.benchmarking import ratio_text
from tasks import multitask as multitask_task
import train

LOSS_LEVEL = ("trainable", "uncertainty", "dwa", "famo")
PLAIN = "plain (summed losses)"
TORCHJD = {"upgrad": "UPGrad", "mgda": "MGDA", "pcgrad": "PCGrad"}  # JAX method: its TorchJD aggregator.

_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per row and round.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds, each taking --steps steps of every row in turn.")
_METHODS = flags.DEFINE_list("methods", None, "Methods to time besides the plain step: gradient-level aggregators "
                             "and loss-level weightings (default: every aggregator and " + ", ".join(LOSS_LEVEL)
                             + " where they exist).")
_VARIANT = flags.DEFINE_string("variant", "three_tasks", "Variant of configs/multitask.py.")
_TORCH = flags.DEFINE_bool("torch", False, "Add the TorchJD rows (UPGrad, MGDA, PCGrad) and a plain PyTorch step.")
_REPRESENTATION = flags.DEFINE_list("representation_methods", ["upgrad", "mgda", "pcgrad"],
                                    "Gradient-level methods also timed with config.representation_gradients.")
REPRESENTATION = ", representation gradients"  # The suffix of those rows.
_STRATEGIES = flags.DEFINE_bool("jacobian_strategies", True,
                                "Also time ways to compute the per-task gradients alone, as train.py's choice.")


def method_config(variant: str, method: str | None):
  """The config of `method` (a name, or a name with the suffix `REPRESENTATION`); None: the plain step, every
  task loss with weight 1 (0.5 each with two tasks)."""
  config = multitask_configs.get_config(variant)
  if method is None:
    config.weighting, config.alpha = "fixed", 0.5
    config.fixed_weights = (1.0,) * config.num_tasks if config.num_tasks > 2 else ()
  else:
    config.weighting = method.removesuffix(REPRESENTATION)
    config.representation_gradients = method.endswith(REPRESENTATION)
  return config


def _loss_weighting_exists(config, name: str) -> bool:
  config = copy.deepcopy(config)
  config.weighting = name
  try:
    multitask_task.weighting_from_config(config)
  except ValueError:
    return False
  return True


def _jax_row(config, num_steps: int):
  """`(training, initial model params on the host, run)`: `run()` takes `num_steps` steps on the fixed batch."""
  training = train.build_training(config)
  state = [training.init()]
  initial = jax.device_get(state[0].params["model"])
  batch = training.next_batch(config.seed, 0)

  def run():
    for _ in range(num_steps):
      state[0], metrics, _ = training.step(state[0], batch)
    jax.block_until_ready(metrics)
  return training, initial, run


def _jacobian_strategy_rows(training, task_names: tuple[str, ...], num_steps: int) -> dict:
  """`{strategy: run}`: the gradients of the task losses alone (all parameters), by each way of computing them.

  "summed": the gradient of the summed losses (the plain step's); "vmap over one VJP": one forward pass,
  `jax.vmap` of its VJP over the N basis cotangents; "N VJPs of one forward pass": the same VJP called N
  times; "one VJP per task loss": `tasks.multitask.per_task_gradients`, what a gradient-level step does.
  """
  state = training.init()
  batch = training.next_batch(0, 0)
  task_losses = multitask_task.logged_task_losses(training.task, task_names)
  losses_of = lambda params: task_losses(params, state.task_state, batch, jax.random.key(0))[0]
  num_tasks = len(task_names)

  def vmapped(params):
    _, vjp = jax.vjp(losses_of, params)
    return jax.vmap(vjp)(jnp.eye(num_tasks))

  def unrolled(params):
    _, vjp = jax.vjp(losses_of, params)
    return [vjp(cotangent) for cotangent in jnp.eye(num_tasks)]

  strategies = {"summed": jax.grad(lambda params: jnp.sum(losses_of(params))), "vmap over one VJP": vmapped,
                "N VJPs of one forward pass": unrolled,
                "one VJP per task loss (the gradient-level step)": lambda params: multitask_task.per_task_gradients(
                    lambda p: (losses_of(p), ()), num_tasks, params)[0]}

  def timed(fn):
    fn = jax.jit(fn)

    def run():
      for _ in range(num_steps):
        out = fn(state.params)
      jax.block_until_ready(out)
    return run
  return {name: timed(fn) for name, fn in strategies.items()}


def _torch_rows(config, params, batch, task_losses, names: list[str], num_steps: int, total_steps: int):
  """`(description, {row: run})`: the twin checked against JAX, and one row per TorchJD aggregator in `names`.

  `task_losses` is the task's own `(params, task_state, batch, rng) -> (losses, aux)`, against which the
  twin's losses and the per-task Jacobian of its shared parameters are checked.
  """
  # Imported here: only the TorchJD rows need PyTorch.
  import torch
  from torchjd import aggregation
  from torchjd import autojac

  from scripts import torch_unet

  device = benchmarking.torch_device(torch)
  num_tasks = config.num_tasks
  twin = torch_unet.UNet(in_channels=1, features=tuple(config.model.features), out_channels=1, num_classes=10,
                         num_scalars=num_tasks - 2)
  num_params = sum(leaf.size for leaf in jax.tree.leaves(params))
  if torch_unet.num_parameters(twin) != num_params:
    raise AssertionError(f"The PyTorch twin has {torch_unet.num_parameters(twin)} parameters, "
                         f"the Flax model {num_params}.")
  torch_unet.load_flax_params(twin, params)
  twin = twin.to(device)

  host = jax.device_get(batch)
  # NCHW with the strides of a fresh tensor: NHWC data transposed to (B, 1, H, W) have the strides of a
  # channels-last tensor too, for which convolutions pick the channels-last path, whose backward TorchJD's
  # `torch.vmap` cannot run ("NYI: querying is_contiguous inside of vmap for memory_format other than
  # torch.contiguous_format").
  nchw = np.asarray(host["image"]).transpose(0, 3, 1, 2)
  images = torch.empty(nchw.shape, dtype=torch.float32).copy_(torch.from_numpy(np.array(nchw)))
  images = images.to(device)
  masks = torch.tensor(np.asarray(host["mask"], np.float32)).to(device)
  labels = torch.tensor(np.asarray(host["label"], np.int64)).to(device)
  relative_size = torch.tensor(np.asarray(
      (host["size"] - config.min_digit_size) / (config.max_digit_size - config.min_digit_size), np.float32)).to(device)

  def torch_losses(outputs):
    """As `tasks/multitask.py`: BCE per pixel averaged over pixels then images, softmax CE, squared size error."""
    map_logits, class_logits, *size = outputs
    per_task = [torch.nn.functional.binary_cross_entropy_with_logits(map_logits[:, 0], masks),
                torch.nn.functional.cross_entropy(class_logits, labels)]
    if size:
      per_task.append(torch.mean(torch.square(size[0][:, 0] - relative_size)))
    return per_task

  # The same function: outputs, losses and the per-task Jacobian of the shared parameters.
  full_params = {"model": params, "weighting": {}}
  jax_losses, _ = task_losses(full_params, {}, batch, jax.random.key(0))
  jax_jacobian = jax.jacrev(lambda p: task_losses(p, {}, batch, jax.random.key(0))[0])(full_params)["model"]
  outputs, features = twin(images, return_features=True)
  jax_outputs = models.UNet(features=tuple(config.model.features), out_channels=1, num_classes=10,
                                    num_scalars=num_tasks - 2).apply({"params": params}, host["image"])
  output_error = max(
      float(np.abs(np.asarray(jax_output) - (t.detach().cpu().numpy().transpose(0, 2, 3, 1) if t.ndim == 4
                                             else t.detach().cpu().numpy())).max())
      for jax_output, t in zip(jax_outputs, outputs))
  twin_losses = torch_losses(outputs)
  loss_error = float(np.abs(np.asarray(jax_losses) - np.array([v.item() for v in twin_losses])).max())
  shared = twin.encoder_parameters()
  autojac.mtl_backward(twin_losses, features=features)
  torch_jacobian = np.concatenate([p.jac.cpu().numpy().reshape(num_tasks, -1) for p in shared], axis=1)
  expected = []
  for name in config.shared_params:  # The twin's encoder parameters in the order `load_flax_params` copies them.
    block = jax_jacobian[name]
    for i in range(2):
      conv, norm = block[f"Conv_{i}"], block[f"GroupNorm_{i}"]
      expected += [np.transpose(np.asarray(conv["kernel"]), (0, 4, 3, 1, 2)), np.asarray(conv["bias"]),
                   np.asarray(norm["scale"]), np.asarray(norm["bias"])]
  expected = np.concatenate([e.reshape(num_tasks, -1) for e in expected], axis=1)
  jacobian_error = float(np.abs(torch_jacobian - expected).max() / np.abs(expected).max())
  for p in twin.parameters():
    p.grad = None
    if hasattr(p, "jac"):
      del p.jac
  if not (output_error <= 1e-4 * max(1.0, max(float(np.abs(np.asarray(o)).max()) for o in jax_outputs))
          and loss_error <= 1e-4 and jacobian_error <= 1e-3):
    raise AssertionError(f"The PyTorch twin computes another function: outputs max |Δ| = {output_error:.3g}, "
                         f"losses {loss_error:.3g}, shared Jacobian relative {jacobian_error:.3g}.")

  learning_rates = np.asarray(jax.vmap(train.make_schedule(config))(np.arange(total_steps + 1)))
  clip = config.optimizer.grad_clip_norm

  def row(aggregator):
    net = copy.deepcopy(twin)
    shared_params = net.encoder_parameters()
    optimizer = torch.optim.Adam(net.parameters(), lr=float(learning_rates[0]), eps=1e-8)
    count = [0]

    def run():
      for _ in range(num_steps):
        for group in optimizer.param_groups:
          group["lr"] = float(learning_rates[min(count[0], total_steps)])
        count[0] += 1
        optimizer.zero_grad(set_to_none=True)
        if aggregator is None:
          sum(torch_losses(net(images))).backward()
        else:
          outputs, features = net(images, return_features=True)
          autojac.mtl_backward(torch_losses(outputs), features=features)
          autojac.jac_to_grad(shared_params, aggregator)
        if clip > 0:
          torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        optimizer.step()
      if images.is_cuda:
        torch.cuda.synchronize()
    return run

  rows = {PLAIN: row(None)}
  rows.update({name: row(getattr(aggregation, TORCHJD[name])()) for name in names})
  description = (f"TorchJD side: the twin `scripts/torch_unet.py:UNet` with the same initial weights (outputs "
                 f"max |Δ| {output_error:.1e}, task losses {loss_error:.1e}, per-task Jacobian of the encoder "
                 f"{jacobian_error:.1e} relative), PyTorch {torch.__version__} on {device.type}"
                 + (f" with {torch.get_num_threads()} threads" if device.type == "cpu" else "")
                 + f", TorchJD {benchmarking.version('torchjd')}; Adam with the same schedule and clipping.")
  return description, rows


def _has_defaults(name: str, config) -> bool:
  """Whether the aggregator `name` builds with the options `config.aggregator_options` gives it."""
  try:
    losses.gradient_aggregator(name, num_tasks=config.num_tasks, **config.aggregator_options.get(name, {}))
  except ValueError:
    return False
  return True


def main(argv):
  del argv
  start = time.perf_counter()
  environment = benchmarking.environment("scripts.bench_multitask", ("jax", "jaxlib", "optax", "torch", "torchjd"))
  variant, num_steps, repeats = _VARIANT.value, _STEPS.value, _REPEATS.value
  plain_config = method_config(variant, None)
  needs_options = []
  if _METHODS.value is None:
    # The aggregators whose every option has a default or a value in the config (krum, trimmed_mean, constant
    # and fairgrad have neither).
    aggregators = [m for m in losses.AGGREGATOR_NAMES if _has_defaults(m, plain_config)]
    needs_options = [m for m in losses.AGGREGATOR_NAMES if m not in aggregators]
    methods = aggregators + [m for m in LOSS_LEVEL if _loss_weighting_exists(plain_config, m)]
    missing = [m for m in LOSS_LEVEL if m not in methods]
  else:
    methods, missing = _METHODS.value, []
  methods = methods + [name + REPRESENTATION for name in _REPRESENTATION.value]

  jax_rows, failed = {}, {}
  plain_training, initial_params, jax_rows[PLAIN] = _jax_row(plain_config, num_steps)
  task_losses = None
  for method in methods:
    try:
      training, _, run = _jax_row(method_config(variant, method), num_steps)
      run()  # Compiles; a method that fails under jit fails here.
    except Exception as error:  # noqa: BLE001 (any failure of one method is reported, the others timed)
      failed[method] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
      continue
    jax_rows[method] = run
    if task_losses is None and training.task.gradients is not None:
      task_losses = multitask_task.logged_task_losses(training.task, multitask_task.names_of_tasks(plain_config))

  torch_rows, torch_description = {}, ""
  if _TORCH.value:
    if task_losses is None:  # No gradient-level method was asked for: the task's losses from one that is.
      task_losses = multitask_task.logged_task_losses(
          train.build_training(method_config(variant, "upgrad")).task, multitask_task.names_of_tasks(plain_config))
    names = [m for m in TORCHJD if m in jax_rows]
    total_steps = num_steps * (repeats + 1)
    torch_description, torch_rows = _torch_rows(
        plain_config, initial_params, plain_training.next_batch(plain_config.seed, 0), task_losses, names, num_steps,
        total_steps)

  strategy_rows = {}
  if _STRATEGIES.value:
    strategy_rows = _jacobian_strategy_rows(train.build_training(method_config(variant, "mean")),
                                            multitask_task.names_of_tasks(plain_config), num_steps)
  rows = {**{("jax", name): run for name, run in jax_rows.items()},
          **{("torch", name): run for name, run in torch_rows.items()},
          **{("strategy", name): run for name, run in strategy_rows.items()}}
  seconds = benchmarking.interleaved_rounds(rows, repeats, per_call=num_steps)

  config = plain_config
  num_params = sum(leaf.size for leaf in jax.tree.leaves(initial_params))
  num_shared = sum(leaf.size for name in config.shared_params for leaf in jax.tree.leaves(initial_params[name]))
  print(f"{environment} After the run: load average {benchmarking.load_average()}; total "
        f"{time.perf_counter() - start:.0f} s.\n")
  print(f"`configs/multitask.py:{variant}`: N = {config.num_tasks} tasks, batch {config.batch_size} of "
        f"{config.canvas_size}×{config.canvas_size} images, UNet {tuple(config.model.features)} with "
        f"{num_params:,} parameters, of which {num_shared:,} shared ({', '.join(config.shared_params)}); "
        f"{config.optimizer.name} (peak lr {config.optimizer.learning_rate}, {config.schedule.name}), clipping at "
        f"{config.optimizer.grad_clip_norm}. The jitted `train.py` step on one fixed batch; {repeats} rounds of "
        f"{num_steps} steps of every row in turn; medians over the rounds, ratios of the medians (in brackets "
        "the range of the ratios within a round).")
  if torch_description:
    print("\n" + torch_description)
  print("\n| method | JAX ms/step | × plain JAX step | TorchJD ms/step | JAX / TorchJD |\n|---|---|---|---|---|")
  plain = seconds[("jax", PLAIN)]
  for name in jax_rows:
    times = seconds[("jax", name)]
    kind = ("" if name == PLAIN or name.endswith(REPRESENTATION)
            else " (gradient-level)" if name in losses.AGGREGATOR_NAMES else " (loss-level)")
    torch_times = seconds.get(("torch", name))
    torch_cells = (f"{1e3 * statistics.median(torch_times):.1f} | {ratio_text(times, torch_times)}" if torch_times
                   else "— | —")
    print(f"| {name}{kind} | {1e3 * statistics.median(times):.1f} | {ratio_text(times, plain)} | {torch_cells} |")

  gradient_level = [m for m in jax_rows if m in losses.AGGREGATOR_NAMES]
  over = [m for m in gradient_level
          if statistics.median(seconds[("jax", m)]) > 1.5 * statistics.median(plain)]
  print(f"\nGoal, gradient-level step ≤ 1.5× the plain step at N = {config.num_tasks}: "
        + (f"met by all {len(gradient_level)} methods." if not over
           else f"met by {len(gradient_level) - len(over)} of {len(gradient_level)}; not by {', '.join(over)}."))
  representation = [m for m in jax_rows if m.endswith(REPRESENTATION)]
  if representation:
    print("With representation gradients: "
          + ", ".join(f"{m.removesuffix(REPRESENTATION)} {ratio_text(seconds[('jax', m)], plain)}×"
                      for m in representation)
          + " the plain step.")
  compared = [m for m in jax_rows if ("torch", m) in seconds]
  if compared:
    slow = [m for m in compared
            if statistics.median(seconds[("jax", m)]) > 0.5 * statistics.median(seconds[("torch", m)])]
    print("Goal, JAX ≥ 2× faster than TorchJD per step (JAX / TorchJD ≤ 0.5): "
          + (f"met for all of {', '.join(compared)}." if not slow
             else f"met for {len(compared) - len(slow)} of {len(compared)}; not for {', '.join(slow)}."))
  if strategy_rows:
    print("\nThe per-task gradients alone (all parameters, jitted, the same batch, in the same rounds):\n\n"
          "| strategy | ms | × summed-loss gradient |\n|---|---|---|")
    summed = seconds[("strategy", "summed")]
    for name in strategy_rows:
      times = seconds[("strategy", name)]
      print(f"| {name} | {1e3 * statistics.median(times):.1f} | {ratio_text(times, summed)} |")
  if missing:
    print(f"\nNo such loss-level weighting in this checkout, skipped: {', '.join(missing)}.")
  if needs_options:
    print(f"\nAggregators with a required option, skipped (give them with --methods): {', '.join(needs_options)}.")
  for method, error in failed.items():
    print(f"\nFailed to build or compile `{method}`: {error}")


if __name__ == "__main__":
  app.run(main)
