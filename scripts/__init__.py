"""Scripts that produce the tables and figures of README.md and BENCHMARKS.md."""
