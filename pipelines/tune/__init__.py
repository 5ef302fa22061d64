"""The `tune` stage as a package: the driver (:mod:`~pipelines.tune.stage`, the stage and its ``SPEC``), the
search space (:mod:`~pipelines.tune.space`), one trial (:mod:`~pipelines.tune.trial`), the trials' MLflow runs
(:mod:`~pipelines.tune.runs`), their table (:mod:`~pipelines.tune.records`) and the console line
(:mod:`~pipelines.tune.progress`).

Nothing is imported here: the config loader checks a search space (:mod:`~pipelines.tune.space`) without
loading the stage. Run alone: ``python -m pipelines.tune --config configs/demo.yaml``.
"""
