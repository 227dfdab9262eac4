"""A first run on an accelerator: the loss benchmarks, the training throughput and a short real training run.

    python -m scripts.gpu_smoke --workdir=/tmp/gpu_smoke
    python -m scripts.gpu_smoke --workdir=/tmp/gpu_smoke_cpu --quick --allow_cpu   # the script itself, on a CPU

On the devices JAX sees, one after the other, each in its own process (each owns the device's memory in
turn), with its output shown and kept in `--workdir`:

1. `python -m scripts.bench_losses --quick`: each loss at its benchmark size against its peers and the
   elementwise floor (on a GPU, the HBM-bandwidth floor); `losses.md`.
2. `python -m scripts.bench_training --steps=20`: steps/s of every experiment's default config;
   `training.md`.
3. `python train.py --config=configs/orientation.py:full` for 200 steps, evaluated and checkpointed at
   the last step only; the run in `orientation_full/` (started afresh each time).

The output starts with JAX's devices, its version and the date (UTC), and ends with a summary: the
tables of both benchmarks, the 200-step run's steps/s (the median over its logging intervals after the
first, which compiles) and its final held-out metrics. The parts are sized to take under 8 minutes
together on one GPU, compilation included, an estimate from the configs' sizes that no GPU has checked
yet (BENCHMARKS.md, "GPU and TPU"). It needs only the `experiments` extra of pyproject.toml: without
PyTorch the benchmarks leave out their PyTorch rows.

With only a CPU it stops unless `--allow_cpu` is given; `--quick` shrinks every part (one loss, one
experiment, a tiny training run) to check the script itself.
"""

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

import rundir

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the outputs: the benchmarks' tables, the run, the logs.",
                               required=True)
_QUICK = flags.DEFINE_bool("quick", False, "Shrink every part: a check of this script on a CPU.")
_ALLOW_CPU = flags.DEFINE_bool("allow_cpu", False, "Run even when JAX sees only a CPU.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = "orientation_full"
TRAIN_STEPS = 200

# The quick run: the smallest of each part, a training run of a few steps on small images.
QUICK_TRAIN_OVERRIDES = ["--config.batch_size=4", "--config.image_size=32",
                         "--config.model.features=(8, 16)", "--config.eval.num_examples=8",
                         "--config.eval.batch_size=8", "--config.log_every_steps=2", "--config.schedule.warmup_steps=2"]

_DEVICES = ("import datetime, json, jax; print(json.dumps({'devices': str(jax.devices()), 'backend': "
            "jax.default_backend(), 'jax': jax.__version__, "
            "'date': f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC'}))")


def _devices() -> dict[str, str]:
  """JAX's devices, backend and version, asked in a child process so that this one never holds the device."""
  result = subprocess.run([sys.executable, "-c", _DEVICES], cwd=ROOT, capture_output=True, text=True, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def _run(command: list[str], log_path: str, env: dict[str, str]) -> tuple[int, str, float]:
  """Runs `command` from the checkout's root in `env`, its output shown and written to `log_path`.

  Returns (exit status, output, seconds).
  """
  print(f"\n$ {shlex.join(command)}", flush=True)
  start = time.perf_counter()
  lines = []
  with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True) as process, \
      open(log_path, "w", encoding="utf-8") as log:
    for line in process.stdout:
      sys.stdout.write(line)
      log.write(line)
      lines.append(line)
  return process.returncode, "".join(lines), time.perf_counter() - start


def _tables(markdown: str) -> str:
  """The section titles (a level lower) and table rows of a benchmark's Markdown output."""
  return "\n".join("#" + line if line.startswith("#") else line
                   for line in markdown.splitlines() if line.startswith(("#", "|")))


def _run_summary(workdir: str) -> str:
  train = rundir.read_metrics(workdir, "train")
  final = rundir.read_metrics(workdir, "eval")[-1]
  rates = [record["steps_per_second"] for record in train[1:]] or [train[0]["steps_per_second"]]
  metrics = ", ".join(f"{name} {value:.4g}" for name, value in final.items() if name not in ("step", "split"))
  return (f"{statistics.median(rates):.2f} steps/s (median over {len(rates)} logging intervals after the first); "
          f"final evaluation at step {final['step']}: {metrics}.")


def main(argv):
  del argv
  device = _devices()
  print(f"Devices: {device['devices']} ({device['backend']}); JAX {device['jax']}; {device['date']}.", flush=True)
  if device["backend"] == "cpu":
    if not _ALLOW_CPU.value:
      raise SystemExit("JAX sees only a CPU, so this would not measure an accelerator. Install JAX for the GPU "
                       "(e.g. `pip install -U \"jax[cuda12]\"`), or pass --allow_cpu to run it anyway.")
    print("Warning: JAX sees only a CPU; the numbers below are not an accelerator's.", flush=True)
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  quick = _QUICK.value
  losses_md, training_md = os.path.join(workdir, "losses.md"), os.path.join(workdir, "training.md")
  run_dir = os.path.join(workdir, RUN)
  if os.path.exists(run_dir):  # The previous run of this script: train afresh, not resume a finished run.
    shutil.rmtree(run_dir)
  python = sys.executable
  num_steps = 4 if quick else TRAIN_STEPS
  config = ["--config=configs/orientation.py", *QUICK_TRAIN_OVERRIDES] if quick else [
      "--config=configs/orientation.py:full", "--config.log_every_steps=50"]
  steps = {
      "loss benchmarks": [python, "-m", "scripts.bench_losses", "--quick", f"--output={losses_md}",
                          *(["--only=angular", "--repeats=3"] if quick else [])],
      "training throughput": [python, "-m", "scripts.bench_training",
                              *(["--experiments=orientation", "--steps=2"] if quick else ["--steps=20"])],
      f"{num_steps}-step run": [
          python, "train.py", *config, f"--workdir={run_dir}", f"--config.num_train_steps={num_steps}",
          f"--config.eval_every_steps={num_steps}", f"--config.checkpoint_every_steps={num_steps}",
          "--config.progress_bar=False", "--config.tensorboard=False", "--config.write_figures=False"],
  }
  # The quick check's CPU compiles the classic threefry much faster than the partitionable one (as the tests do).
  env = {**os.environ, **({"JAX_THREEFRY_PARTITIONABLE": "false"} if quick else {})}
  results = {}
  for name, command in steps.items():
    results[name] = _run(command, os.path.join(workdir, name.replace(" ", "_") + ".log"), env)

  header = (f"Devices: {device['devices']} ({device['backend']}); JAX {device['jax']}; {device['date']}; "
            f"`python -m scripts.gpu_smoke {' '.join(sys.argv[1:])}`.")
  summary = ["\n# Summary\n", header, ""]
  for name, (status, output, seconds) in results.items():
    summary.append(f"## {name} ({seconds:.0f} s" + (")" if status == 0 else f", FAILED with exit status {status})"))
    if status:
      summary.append("\n".join(output.splitlines()[-5:]))
    elif name == "loss benchmarks":
      with open(losses_md, encoding="utf-8") as f:
        summary.append(_tables(f.read()))
    elif name == "training throughput":
      with open(training_md, "w", encoding="utf-8") as f:
        f.write(output)
      summary.append(_tables(output))
    else:
      summary.append(_run_summary(run_dir))
    summary.append("")
  print("\n".join(summary))
  if any(status for status, _, _ in results.values()):
    raise SystemExit(1)


if __name__ == "__main__":
  app.run(main)
