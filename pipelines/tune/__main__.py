"""``python -m pipelines.tune --config ...``: the tune stage alone."""

from pipelines.cli_common import stage_main
from pipelines.tune.stage import SPEC

raise SystemExit(stage_main(SPEC))
