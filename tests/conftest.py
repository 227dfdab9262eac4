"""Settings shared by every test, and by the `train.py` processes tests start (tests/runs.py).

* JAX's persistent compilation cache: every `train_and_evaluate` call builds
  fresh jitted closures, so each test would otherwise recompile the same
  U-Net step; the cache keys programs by their HLO and reuses them across
  tests, workers and subprocesses.
* `jax_threefry_partitionable=False`: XLA:CPU in jaxlib 0.10.2 compiles the
  partitionable threefry of many small random arrays (a model's initialisers,
  the procedural data) 10-20x slower than the classic one. The tests check
  properties that hold for either random stream.
"""

import importlib
import os

import jax
import pytest

SETTINGS = {
    "jax_compilation_cache_dir": os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".jax_cache")),
    "jax_persistent_cache_min_compile_time_secs": 0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
    "jax_threefry_partitionable": False,
}
for name, value in SETTINGS.items():
  jax.config.update(name, value)


def reference_package(name: str):
  """Imports the reference package `name` for a cross-check, or skips the test where it is not installed.

  With `REQUIRE_REFERENCE_PACKAGES=1` (as `.ci/run` sets after installing the `reference` extra) a missing
  package is an error, so a cross-check never skips silently there.
  """
  if os.environ.get("REQUIRE_REFERENCE_PACKAGES") == "1":
    return importlib.import_module(name)
  return pytest.importorskip(name)
