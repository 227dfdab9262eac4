"""Training throughput of each experiment config, as `train.py` runs it.

    python scripts/bench_training.py                    # every experiment, default configs
    python scripts/bench_training.py --experiments=orientation --steps=50

For each config: builds the jitted pieces `train.py` uses (`train.build_training`),
times the first step (tracing and compilation of the batch generator and the
train step), then `--steps` steps of batch generation + train step in a
row, as the loop dispatches them. Prints a markdown table of steps/s and
examples/s (the global batch) on all local devices.
"""

import os
import sys
import time

from absl import app
from absl import flags
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import instances
from configs import multitask
from configs import orientation
from configs import propel
from scripts import tables
import train

CONFIGS = {"orientation": orientation, "propel": propel, "multitask": multitask, "instances": instances}
_EXPERIMENTS = flags.DEFINE_list("experiments", list(CONFIGS), "Experiments to time.")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps per experiment, after the first.")


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


def main(argv):
  del argv
  rows = [(f"`configs/{name}.py`", throughput(CONFIGS[name].get_config(), _STEPS.value))
          for name in _EXPERIMENTS.value]
  print(f"{jax.device_count()} × {jax.devices()[0].device_kind}, jax {jax.__version__}\n")
  print(tables.markdown_table(rows, COLUMNS, first="config"))


if __name__ == "__main__":
  app.run(main)
