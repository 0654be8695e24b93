"""The suite registry: which runs (seed, size) and checkpoints a study compares, as YAML data."""
