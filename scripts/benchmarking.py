"""What the benchmark scripts share: interleaved timing rounds, their ratios, and the machine they ran on.

Every benchmark times its rows in rounds, each round running every row once in turn, so that load
from other processes on the machine falls on all rows alike; the medians over the rounds and the
fastest rounds (the least disturbed) are compared, within one process only.
"""

from collections.abc import Callable, Hashable, Mapping
import datetime
import importlib
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from typing import Any

import jax


def usable_cores() -> int:
  """The cores this process may run on (the size of XLA's CPU thread pool)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def optional_import(name: str) -> Any:
  """The module `name`, or None where it is not installed (PyTorch and the reference packages are optional)."""
  try:
    return importlib.import_module(name)
  except ImportError:
    return None


def torch_device(torch) -> Any:
  """CUDA when JAX runs on a GPU and PyTorch has CUDA, else the CPU with as many threads as `usable_cores`."""
  device = torch.device("cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu")
  if device.type == "cpu":
    torch.set_num_threads(usable_cores())
  return device


def interleaved_rounds(runs: Mapping[Hashable, Callable[[], Any]], rounds: int | Mapping[Hashable, int], *,
                       warmup: int = 1, per_call: int = 1) -> dict[Hashable, list[float]]:
  """Seconds per step of each of `runs` in each round: `warmup` untimed rounds, then the timed ones.

  Each run must return only once its work is done (`jax.block_until_ready`, `torch.cuda.synchronize`).
  `rounds` is the number of timed rounds, or a number per run: a run leaves the rounds after its own
  number. A call takes `per_call` steps; its time is divided by it.
  """
  for _ in range(warmup):  # Compilation and warm caches.
    for run in runs.values():
      run()
  wanted = rounds if isinstance(rounds, Mapping) else dict.fromkeys(runs, rounds)
  seconds = {name: [] for name in runs}
  for round_index in range(max(wanted.values(), default=0)):
    for name, run in runs.items():
      if round_index < wanted[name]:
        start = time.perf_counter()
        run()
        seconds[name].append((time.perf_counter() - start) / per_call)
  return seconds


def ratios(times: list[float], baseline: list[float]) -> tuple[float, float, tuple[float, float]]:
  """`times` against `baseline` timed in the same rounds: (ratio of the medians, of the fastest rounds,
  (lowest, highest) ratio within a round)."""
  per_round = [t / b for t, b in zip(times, baseline)]
  return (statistics.median(times) / statistics.median(baseline), min(times) / min(baseline),
          (min(per_round), max(per_round)))


def ratio_text(times: list[float], baseline: list[float]) -> str:
  """"median ratio (lowest–highest within a round)", the range left out with a single round."""
  median, _, (low, high) = ratios(times, baseline)
  return f"{median:.2f}" + (f" ({low:.2f}–{high:.2f})" if len(times) > 1 else "")


def load_average() -> str:
  """The 1, 5 and 15 minute load averages of the machine."""
  return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def version(package: str) -> str:
  """The installed version of `package`, or "not installed"."""
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def command(module: str) -> str:
  """The command line that ran `module` (`python -m module` and this process's arguments)."""
  return " ".join(["python -m", module, *sys.argv[1:]])


def environment(module: str, packages: tuple[str, ...] = ("jax", "jaxlib", "numpy")) -> str:
  """One line: the date (UTC), the command, the machine, the versions of `packages`, JAX's devices and the load."""
  devices = jax.devices()
  return (f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: `{command(module)}`. "
          f"Machine: {_cpu_model()}, {os.cpu_count()} cores ({usable_cores()} usable by this process), "
          f"{platform.system()} {platform.machine()}, Python {platform.python_version()}. "
          f"Versions: {', '.join(f'{p} {version(p)}' for p in packages)}. "
          f"JAX devices: {len(devices)} × {devices[0].device_kind} ({jax.default_backend()}): {devices}"
          + (f", XLA_FLAGS={os.environ['XLA_FLAGS']}" if os.environ.get("XLA_FLAGS") else "")
          + f". Load average (1, 5, 15 min): {load_average()}.")
