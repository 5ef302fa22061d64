"""Command-line plumbing shared by every stage script and ``full.py``."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Callable

from yolov2.config import PipelineConfig, load_config
from yolov2.engine.precision import detect_hardware, slow_path_warnings
from yolov2.errors import YoloV2Error

from pipelines import ray_runtime, tracking
from pipelines.stage import StageError, StageResult
from pipelines.workspace import Workspace

DEFAULT_CONFIG = "configs/demo.yaml"
log = logging.getLogger(__name__)


def add_stage_arguments(parser: argparse.ArgumentParser, single_stage: bool = True) -> None:
    """The options every stage script and full.py share (full.py adds its own --force and --stages)."""
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"YAML config file (default: {DEFAULT_CONFIG}); see yolov2/config.py for every key")
    parser.add_argument("--workspace", default=None,
                        help="workspace root: a local folder or a pyarrow.fs URI such as s3://bucket/prefix "
                             "(default: the config's `workspace`, normally ./workspace)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set train.epochs=3 (repeatable; values are YAML)")
    if single_stage:
        parser.add_argument("--force", action="store_true",
                            help="rerun even when this config's output already exists (cached)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="console log level (default: INFO)")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def load_from_args(args: argparse.Namespace) -> tuple[PipelineConfig, Workspace]:
    """The config with its overrides, checked (slow precision choices warned about) before Ray starts."""
    cfg = load_config(args.config, args.overrides)
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


def stage_main(stage: str, run: Callable[..., StageResult], doc: str | None, argv: list[str] | None = None) -> int:
    """The ``__main__`` of a stage script: its ``--help`` is the module docstring, then one stage run."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stage_arguments(parser)
    return run_single_stage(stage, run, parser.parse_args(argv))


def run_single_stage(stage: str, run: Callable[..., StageResult], args: argparse.Namespace) -> int:
    """Load config, join Ray, set up MLflow, run one stage, print its manifest; exit code."""
    setup_logging(args.log_level)
    try:
        cfg, workspace = load_from_args(args)
        ray_runtime.connect(cfg.ray.address, cfg.ray.num_cpus)
        if not args.no_mlflow:
            tracking.setup_mlflow(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, workspace,
                                        cfg.mlflow.fallback_to_local)
        result = run(cfg, workspace, force=args.force, tracking_enabled=not args.no_mlflow)
    except (YoloV2Error, StageError) as e:
        logging.getLogger(stage).error("%s", e)
        return 2
    status = "cached" if result.cached else f"done in {result.seconds:.1f}s"
    print(f"{stage}: {status} -> {workspace.uri_of(result.output_dir)}")
    print(json.dumps(result.manifest, indent=2, default=str)[:4000])
    return 0
