"""Experiments: each module `tasks/<name>.py` defines `build(config) -> Task`.

`config.task` names the module, so a new experiment is a new module and a
config that names it; the training loop in `train.py` is never edited.
"""

import importlib
import pkgutil

import ml_collections

from tasks.base import ConfigError
from tasks.base import Task


def available() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base")


def build(config: ml_collections.ConfigDict) -> Task:
  """Imports `tasks.<config.task>` and builds its `Task` from `config`."""
  if config.task not in available():
    raise ConfigError(f"Unknown task {config.task!r}; available tasks: {', '.join(available())}.")
  return importlib.import_module(f"tasks.{config.task}").build(config)


__all__ = ("ConfigError", "Task", "available", "build")
