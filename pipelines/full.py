"""The whole pipeline: prepare -> shard -> anchors -> train -> evaluate, each stage cached by fingerprint.

    python pipelines/full.py --config configs/demo.yaml
    python pipelines/full.py --config configs/voc.yaml --stages shard,anchors
    python pipelines/full.py --config configs/demo.yaml --force anchors   # anchors and everything after it

Joins a running Ray cluster when there is one (as under `ray submit` / `ray job submit`), else starts
a local one. One parent MLflow run per invocation, one nested run per stage that actually runs; a
cached stage is linked (tag) to the run that produced it. Ends by writing `summary.json` at the
workspace root and printing where the results are.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import time
from typing import Any

from yolov2.config import flatten, to_dict
from yolov2.errors import YoloV2Error

from pipelines import cli_common, ray_runtime, tracking
from pipelines.stage import STAGES, UPSTREAM, StageError, StageResult, downstream_of, load_result
from pipelines.workspace import WorkspaceWriteError

log = logging.getLogger("pipelines.full")

# Stages that exist so far, in DAG order (later issues add anchors, train, evaluate).
AVAILABLE = [s for s in STAGES if importlib.util.find_spec(f"pipelines.{s}") is not None]


def parse_stage_list(text: str | None, option: str) -> list[str]:
    if not text:
        return []
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise SystemExit(f"{option}: unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_common.add_stage_arguments(parser, single_stage=False)
    parser.add_argument("--stages", default=None,
                        help=f"comma-separated stages to run (default: all available: {','.join(AVAILABLE)}); "
                             "their upstream outputs must exist or be runnable")
    parser.add_argument("--force", default=None, metavar="STAGES",
                        help="comma-separated stages to rerun even if cached; everything downstream reruns too")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted train stage from its last checkpoint instead of step 0")
    args = parser.parse_args(argv)
    cli_common.setup_logging(args.log_level)

    selected = parse_stage_list(args.stages, "--stages") or AVAILABLE
    forced = downstream_of(parse_stage_list(args.force, "--force"))
    try:
        cfg, workspace = cli_common.load_from_args(args)
        ray_runtime.connect(cfg.ray.address, cfg.ray.num_cpus)
    except YoloV2Error as e:
        log.error("%s", e)
        return 2
    use_mlflow = not args.no_mlflow
    summary: dict[str, Any] = {"config": args.config, "workspace": workspace.uri, "stages": {}}
    results: dict[str, StageResult] = {}
    started = time.time()
    exit_code = 0
    guard: tracking.TrackingGuard | None = None  # the parent run's, when MLflow is on

    def run_all() -> None:
        nonlocal exit_code
        for stage in AVAILABLE:
            if stage not in selected:
                cached = load_result(cfg, workspace, stage)
                if cached is not None:
                    results[stage] = cached
                continue
            module = importlib.import_module(f"pipelines.{stage}")
            upstream = {}
            for up in UPSTREAM[stage]:
                if up not in results:
                    raise StageError(f"stage {stage} needs {up}, which was not run and has no cached output; "
                                     f"add it to --stages")
                upstream[up] = results[up]
            t0 = time.time()
            try:
                extra = {"resume": True} if stage == "train" and args.resume else {}
                result = module.run(cfg, workspace, upstream=upstream, force=stage in forced,
                                    tracking_enabled=use_mlflow, **extra)
            except Exception as e:
                summary["stages"][stage] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                            "seconds": round(time.time() - t0, 2)}
                log.error("stage %s failed: %s", stage, e)
                exit_code = 1
                return
            results[stage] = result
            summary["stages"][stage] = {
                "status": "cached" if result.cached else "done",
                "seconds": round(result.seconds, 2),
                "output": workspace.uri_of(result.output_dir),
                "mlflow_run_id": result.run_id,
            }
            if guard is not None and result.cached and result.run_id:
                import mlflow

                guard.call(f"tag stage.{stage}.cached_run_id", mlflow.set_tag, f"stage.{stage}.cached_run_id",
                           result.run_id)
            print(f"[{stage}] {summary['stages'][stage]['status']} ({result.seconds:.1f}s) -> "
                  f"{workspace.uri_of(result.output_dir)}", flush=True)

    try:
        if use_mlflow:
            import mlflow

            uri = tracking.setup_mlflow(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, workspace,
                                        cfg.mlflow.fallback_to_local)
            summary["mlflow_tracking_uri"] = tracking.mask_secrets(uri)
            with tracking.guarded_run("pipeline") as guard:
                summary["mlflow_parent_run_id"] = guard.run_id
                guard.call("tags", mlflow.set_tags, tracking.environment_tags())
                guard.call("params", tracking.log_params, flatten(to_dict(cfg)))
                run_all()
                guard.call("metrics", tracking.log_metrics, final_metrics(results))
            if guard.skipped:
                summary["mlflow_not_logged"] = guard.skipped
        else:
            run_all()
    except (YoloV2Error, StageError) as e:
        log.error("%s", e)
        exit_code = 2

    summary["metrics"] = final_metrics(results)
    summary["seconds"] = round(time.time() - started, 2)
    try:
        workspace.write_json(summary, "summary.json")
    except WorkspaceWriteError as e:  # e.g. the disk filled up: say so rather than end on a traceback
        log.error("%s", e)
        exit_code = exit_code or 1
    print_summary(summary, workspace)
    return exit_code


def final_metrics(results: dict[str, StageResult]) -> dict[str, float]:
    """The headline numbers: evaluation metrics when evaluate ran, else what earlier stages measured."""
    if "evaluate" in results:
        return {k: v for k, v in results["evaluate"].manifest.get("metrics", {}).items() if isinstance(v, (int, float))}
    if "anchors" in results:
        return {"anchors_mean_iou": results["anchors"].manifest.get("mean_iou", 0.0)}
    return {}


def print_summary(summary: dict[str, Any], workspace) -> None:
    print("\n=== yolov2-pipeline summary ===")
    for stage, info in summary["stages"].items():
        print(f"  {stage:9s} {info['status']:7s} {info.get('seconds', 0):8.1f}s  {info.get('output', info.get('error', ''))}")
    for key, value in summary.get("metrics", {}).items():
        print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
    print(f"  summary: {workspace.uri_of('summary.json')}")
    uri = summary.get("mlflow_tracking_uri")
    if uri:
        print(f"  MLflow UI: .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")


if __name__ == "__main__":
    raise SystemExit(main())
