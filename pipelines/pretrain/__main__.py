"""``python -m pipelines.pretrain --config ...``: the pretrain stage alone."""

from pipelines.cli_common import stage_main
from pipelines.pretrain.stage import SPEC

raise SystemExit(stage_main(SPEC))
