"""Command-line plumbing shared by every stage script and ``full.py``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pipelines import ray_runtime, tracking
from pipelines.config import PipelineConfig, load_config
from pipelines.dag import StageError, StageSpec, run_stage
from pipelines.faults import FaultPlan
from pipelines.tune.space import check_space
from pipelines.workspace import Workspace
from yolov2.engine.precision import detect_hardware, slow_path_warnings
from yolov2.errors import YoloV2Error

DEFAULT_CONFIG = "configs/demo.yaml"
log = logging.getLogger(__name__)


def add_stage_arguments(parser: argparse.ArgumentParser, single_stage: bool = True) -> None:
    """The options every stage script and full.py share (full.py adds its own --force and --stages)."""
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help=f"YAML config file (default: {DEFAULT_CONFIG}); see pipelines/config.py for every key",
    )
    parser.add_argument(
        "--workspace",
        default=None,
        help="workspace root: a local folder or a pyarrow.fs URI such as s3://bucket/prefix "
        "(default: the config's `workspace`, normally ./workspace)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.epochs=3 (repeatable; values are YAML)",
    )
    if single_stage:
        parser.add_argument(
            "--force", action="store_true", help="rerun even when this config's output already exists (cached)"
        )
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's own console lines: worker and worker-group start-up, Ray Train's line per reported "
        "result and rank, Ray Data's progress bars (default: only Ray's warnings and errors; Ray's log files "
        "under /tmp/ray/session_latest/logs keep everything either way)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="console log level (default: INFO)",
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def load_from_args(args: argparse.Namespace) -> tuple[PipelineConfig, Workspace]:
    """The config with its overrides, checked (its search space too; slow precision choices warned about)
    before Ray starts."""
    cfg = load_config(args.config, args.overrides)
    check_space(cfg, args.config or "<defaults>")
    if args.workspace:
        cfg.workspace = args.workspace
    for warning in precision_warnings(cfg):
        log.warning("%s", warning)
    return cfg, Workspace.open(cfg.workspace)


def precision_warnings(cfg: PipelineConfig) -> list[str]:
    """Explicit train/evaluate precision settings that are slow on this machine's CPU. GPU runs are checked
    by their workers, on the GPU they get (the driver may run on a CPU-only head node)."""
    hardware = detect_hardware("cpu")
    warnings = []
    if not cfg.train.use_gpu:
        warnings += slow_path_warnings(hardware, cfg.train.amp, cfg.train.channels_last, "train")
    if not cfg.evaluate.gpus_per_actor:
        warnings += slow_path_warnings(hardware, cfg.evaluate.amp, cfg.evaluate.channels_last, "evaluate")
    return warnings


def stage_main(spec: StageSpec, argv: list[str] | None = None) -> int:
    """The ``__main__`` of a stage script: load the config, join Ray, set up MLflow, run the one stage, print
    its manifest; the exit code. Its ``--help`` is the stage module's docstring, plus the stage's flags."""
    parser = argparse.ArgumentParser(description=_stage_doc(spec), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stage_arguments(parser)
    for flag in spec.flags:
        parser.add_argument(flag.option, dest=flag.name, action="store_true", help=flag.help)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        cfg, workspace = load_from_args(args)
        faults = FaultPlan.from_env()
        ray_runtime.connect(cfg.ray.address, cfg.ray.num_cpus, verbose=args.verbose)
        if not args.no_mlflow:
            tracking.setup_mlflow(
                cfg.mlflow.tracking_uri, cfg.mlflow.experiment, workspace, cfg.mlflow.fallback_to_local
            )
        result = run_stage(
            spec,
            cfg,
            workspace,
            force=args.force,
            tracking_enabled=not args.no_mlflow,
            flags={flag.name: getattr(args, flag.name) for flag in spec.flags},
            faults=faults,
        )
    except (YoloV2Error, StageError) as e:
        logging.getLogger(spec.name).error("%s", e)
        return 2
    status = "cached" if result.cached else f"done in {result.seconds:.1f}s"
    print(f"{spec.name}: {status} -> {workspace.uri_of(result.output_dir)}")
    print(json.dumps(result.manifest, indent=2, default=str)[:4000])
    return 0


def _stage_doc(spec: StageSpec) -> str:
    """The docstring of the module that defines the stage's body (``__main__`` when run as a script)."""
    module = sys.modules.get(spec.body.__module__)
    return (module.__doc__ if module is not None else None) or spec.summary
