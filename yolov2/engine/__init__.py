"""Training building blocks: optimizer and schedules, EMA, precision, checkpoints, the step itself.

Each is a small function or class with explicit arguments; `pipelines/train/worker.py` assembles them.
"""
