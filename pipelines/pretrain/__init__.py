"""The `pretrain` stage as a package: the driver (:mod:`~pipelines.pretrain.stage`, the stage and its ``SPEC``),
the classification data (:mod:`~pipelines.pretrain.dataset`) and one Ray Train worker
(:mod:`~pipelines.pretrain.worker`). Nothing is imported here. Run alone:
``python -m pipelines.pretrain --config configs/demo.yaml``.
"""
