"""``python -m pipelines.train --config ... [--resume]``: the train stage alone."""

from pipelines.cli_common import stage_main
from pipelines.train.driver import SPEC

raise SystemExit(stage_main(SPEC))
