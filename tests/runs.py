"""Starting `train.py` as a separate process, and reading what a run left in its workdir."""

import os
import sys

import conftest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ORIENTATION = [sys.executable, "train.py", "--config=tests/tiny_configs.py:orientation"]


def subprocess_env(**variables) -> dict[str, str]:
  """The environment for a subprocess: it finds the tests' modules and has the JAX settings of conftest.py."""
  return {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
          **{name.upper(): str(value) for name, value in conftest.SETTINGS.items()}, **variables}

