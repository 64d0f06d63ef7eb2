"""Runs: the run directory, its lock, the queue and checkpoints."""
