"""The `train` stage as a package: the driver (:mod:`~pipelines.train.driver`, the stage and its ``SPEC``),
what it hands each worker (:mod:`~pipelines.train.job`), the Ray Train worker (:mod:`~pipelines.train.worker`),
its data (:mod:`~pipelines.train.ingest`) and checkpoints (:mod:`~pipelines.train.checkpoints`).

Run alone: ``python -m pipelines.train --config configs/demo.yaml [--resume]``.
"""

from pipelines.train.driver import SPEC, train_body
from pipelines.train.job import TrainJob, accumulation_for, model_spec

__all__ = ["SPEC", "TrainJob", "accumulation_for", "model_spec", "train_body"]
