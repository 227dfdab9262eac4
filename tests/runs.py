"""Starting `train.py` as a separate process, and reading what a run left in its workdir."""

import os
import sys

import jax
import orbax.checkpoint as ocp

import conftest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ORIENTATION = [sys.executable, "train.py", "--config=tests/tiny_configs.py:orientation"]


def subprocess_env(**variables) -> dict[str, str]:
  """The environment for a subprocess: it finds the tests' modules and has the JAX settings of conftest.py."""
  return {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
          **{name.upper(): str(value) for name, value in conftest.SETTINGS.items()}, **variables}


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
