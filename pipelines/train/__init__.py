"""The `train` stage as a package: the driver (:mod:`~pipelines.train.driver`, the stage and its ``SPEC``),
launching a run on Ray Train (:mod:`~pipelines.train.launch`, shared with the tune stage's trials), what it hands
each worker (:mod:`~pipelines.train.job`), the Ray Train worker (:mod:`~pipelines.train.worker`), its data
(:mod:`~pipelines.train.ingest`) and checkpoints (:mod:`~pipelines.train.checkpoints`).

Nothing is imported here, so the tune stage can use the launching code while the driver declares tune as its
upstream. Run alone: ``python -m pipelines.train --config configs/demo.yaml [--resume]``.
"""
