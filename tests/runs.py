"""Starting `train.py` as a separate process, and reading what a run left in its workdir."""

import os
import sys

import jax
import orbax.checkpoint as ocp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ORIENTATION = [sys.executable, "train.py", "--config=tests/tiny_configs.py:orientation"]


def subprocess_env(**variables) -> dict[str, str]:
  """The environment for a subprocess: it finds the tests' modules and shares their compiled programs."""
  return {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
          "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
          **variables}


def latest_checkpoint(workdir):
  """(step, params) of the newest checkpoint in `workdir`, on this process's first device."""
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = manager.latest_step()
  manager.close()
  path = os.path.join(workdir, "checkpoints", str(step), "default")
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # Whichever devices wrote it.
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata)
  return step, checkpointer.restore(path, target)["params"]
