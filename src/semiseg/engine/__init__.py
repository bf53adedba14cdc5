"""Training engine: loop, checkpoints, distributed set-up, evaluation, plots."""
