"""Settings shared by every test, and by the `train.py` processes tests start (tests/runs.py).

* JAX's persistent compilation cache: every `train_and_evaluate` call builds
  fresh jitted closures, so each test would otherwise recompile the same
  U-Net step; the cache keys programs by their HLO and reuses them across
  tests, workers and subprocesses.
* `jax_disable_most_optimizations=True`: the tests run tiny programs a few
  times each, so XLA's optimisation passes cost more than they save (a
  third of the suite's CPU time); every claim the tests check holds for the
  unoptimised program too.
* `jax_threefry_partitionable=False`: XLA:CPU in jaxlib 0.10.2 compiles the
  partitionable threefry of many small random arrays (a model's initialisers,
  the procedural data) 10-20x slower than the classic one. The tests check
  properties that hold for either random stream.
"""

import contextlib
import importlib
import importlib.util
import os
import sys
import types

import jax
import pytest

import losses

SETTINGS = {
    # JAX's own variable chooses another directory (an empty one for a run from a cold cache).
    "jax_compilation_cache_dir": os.environ.get("JAX_COMPILATION_CACHE_DIR")
    or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".jax_cache")),
    "jax_persistent_cache_min_compile_time_secs": 0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
    "jax_threefry_partitionable": False,
    "jax_disable_most_optimizations": True,
}
for name, value in SETTINGS.items():
  jax.config.update(name, value)


@contextlib.contextmanager
def optimized_compilation():
  """XLA's optimisations on, for a claim about the numerics of the compiled program that users run."""
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", SETTINGS["jax_disable_most_optimizations"])


@pytest.fixture
def scored_shapes(monkeypatch):
  """The shapes `(pred_labels, true_labels)` of every `losses.f2_iou_score` call, as a run evaluates."""
  shapes = []
  score = losses.f2_iou_score

  def recording_score(pred_labels, true_labels, **options):
    shapes.append((pred_labels.shape, true_labels.shape))
    return score(pred_labels, true_labels, **options)

  monkeypatch.setattr(losses, "f2_iou_score", recording_score)
  return shapes


def reference_package(name: str):
  """Imports the reference package `name` for a cross-check, or skips the test where it is not installed.

  With `REQUIRE_REFERENCE_PACKAGES=1` (as `.ci/run` sets after installing the `reference` extra) a missing
  package is an error, so a cross-check never skips silently there.
  """
  if os.environ.get("REQUIRE_REFERENCE_PACKAGES") == "1":
    return importlib.import_module(name)
  return pytest.importorskip(name)


def libmtl_weighting(name: str):
  """LibMTL's module `LibMTL.weighting.<name>`, imported without running `LibMTL/__init__.py`.

  That file imports LibMTL's architectures and trainer, hence torchvision, which fails to import where the
  installed torchvision was built for another torch; the weighting modules need only torch and NumPy.
  """
  if "LibMTL" not in sys.modules:
    spec = importlib.util.find_spec("LibMTL")
    if spec is None:
      reference_package("LibMTL")  # Skips, or fails under REQUIRE_REFERENCE_PACKAGES=1.
    package = types.ModuleType("LibMTL")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["LibMTL"] = package
  return importlib.import_module(f"LibMTL.weighting.{name}")
