"""Prints, per experiment, how far the parameters after a few steps on all devices are from those on one.

Run with several host devices, e.g.
`XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/same_params_on_devices.py`;
tests/test_distributed.py does. Both runs start from the same state and see
the same batches, so only the sharding of the step differs. The runs use
plain SGD: Adam divides each gradient by its own magnitude, which turns the
rounding noise of gradients that are zero in exact arithmetic (a bias before
a normalisation) into full-size steps of either sign.
"""

import json
import sys

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

import tiny_configs
import train


def main(experiments, num_steps=2):
  differences = {}
  for experiment in experiments:
    config = tiny_configs.get_config(experiment)
    config.optimizer.name = "sgd"
    trainings = [train.build_training(config, devices) for devices in (jax.devices()[:1], jax.devices())]
    initial_state = jax.device_get(trainings[0].init())  # On the host: each run gets its own copy.
    batches = [trainings[0].next_batch(config.seed, step) for step in range(num_steps)]
    params = []
    for training in trainings:
      state = jax.device_put(initial_state, NamedSharding(training.mesh, PartitionSpec()))
      for batch in batches:
        state, _, _ = training.step(state, jax.device_put(batch, NamedSharding(training.mesh, PartitionSpec("data"))))
      params.append(jax.tree.leaves(jax.device_get(state.params)))
    differences[experiment] = {
        "num_devices": [len(t.mesh.devices) for t in trainings],
        "max_abs_difference": max(float(np.abs(a - b).max()) for a, b in zip(*params)),
        "max_abs_change": max(float(np.abs(a - b).max()) for a, b in zip(
            params[0], jax.tree.leaves(jax.device_get(initial_state.params))))}
  print(json.dumps(differences))


if __name__ == "__main__":
  main(sys.argv[1:] or list(tiny_configs.EXPERIMENTS))
