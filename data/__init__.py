"""Procedural data streams: jittable functions of (key or seed, step), no files."""
