"""The tiny demo config (a few 96x96 generated images, a quarter-width model, two epochs) that tests run
`pipelines/full.py` with: every stage does real work in seconds."""

TINY = [
    "data.synthetic.num_train=16",
    "data.synthetic.num_val=4",
    "data.synthetic.num_test=4",
    "data.synthetic.image_size=[96, 96]",
    "shard.max_count=8",
    "anchors.n_init=1",
    "model.width_multiplier=0.25",
    "train.epochs=2",
    "train.batch_size=4",
    "train.effective_batch=8",
    "train.input_size=96",
    "train.multiscale_sizes=[64, 128, 32]",
    "train.log_every=1",
    "train.val_every=1",
    "train.register_name=null",
    "evaluate.input_size=96",
    "evaluate.batch_size=4",
]


def set_args(overrides: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]`` (full.py's command line)."""
    return [arg for item in overrides for arg in ("--set", item)]
