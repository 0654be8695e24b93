"""Checkpoints: loading them from a hub cache, writing that cache, training the mini-suite."""
