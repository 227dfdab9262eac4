"""Shares compiled XLA programs between tests.

Every `train_and_evaluate` call builds fresh jitted closures, so each test
would otherwise recompile the same U-Net step; JAX's persistent compilation
cache keys programs by their HLO and reuses them across tests and workers.
"""

import os

import jax

jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
