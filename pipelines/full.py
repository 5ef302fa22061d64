"""The whole pipeline: prepare -> shard -> anchors -> [pretrain] -> [tune] -> train -> evaluate, each stage cached
by fingerprint.

    python pipelines/full.py --config configs/demo.yaml
    python pipelines/full.py --config configs/voc.yaml --stages shard,anchors
    python pipelines/full.py --config configs/demo.yaml --force anchors   # anchors and everything after it
    python pipelines/full.py --config configs/demo.yaml --set tune.enabled=true --set train.from_tune=true
    python pipelines/full.py --config configs/demo.yaml --set train.init_from=pretrain

Joins a running Ray cluster when there is one (as under `ray submit` / `ray job submit`), else starts
a local one; Ray's own console lines show with --verbose only. One parent MLflow run per invocation, one
nested run per stage that actually runs; a cached stage is linked (tag) to the run that produced it; the
parent ends FAILED when a stage failed. Ends by writing `summary.json` at the workspace root and printing
where the results are, with a link to the experiment in the MLflow UI.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Any

from pipelines import cli_common, ray_runtime, tracking
from pipelines.config import PipelineConfig, flatten, to_dict
from pipelines.dag import StageError, StageFlag, StageResult, StageSpec, downstream_of, load_result, run_stage
from pipelines.faults import FaultPlan
from pipelines.stages import STAGE_NAMES, STAGES
from pipelines.workspace import Workspace, WorkspaceWriteError
from yolov2.errors import YoloV2Error

log = logging.getLogger("pipelines.full")


@dataclass(frozen=True)
class Invocation:
    """What one ``full.py`` command asks for, resolved: which stages run, with which options."""

    cfg: PipelineConfig
    workspace: Workspace
    selected: tuple[str, ...]  # stages to run; the others are only reused when cached
    forced: frozenset[str]  # stages to rerun even when cached
    flags: dict[str, bool]  # every stage flag of the registry, by name
    tracking_enabled: bool
    faults: FaultPlan


def registry_flags(registry: tuple[StageSpec, ...] = STAGES) -> dict[str, tuple[StageFlag, list[str]]]:
    """Each distinct stage flag of the registry (by name) and the stages that declare it."""
    flags: dict[str, tuple[StageFlag, list[str]]] = {}
    for spec in registry:
        for flag in spec.flags:
            flags.setdefault(flag.name, (flag, []))[1].append(spec.name)
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_common.add_stage_arguments(parser, single_stage=False)
    parser.add_argument(
        "--stages",
        default=None,
        help=f"comma-separated stages to run, of {','.join(STAGE_NAMES)} (default: all but pretrain and "
        "tune, which run when pretrain.enabled or train.init_from: pretrain, tune.enabled or train.from_tune is "
        "true); their upstream outputs must exist or be runnable",
    )
    parser.add_argument(
        "--force",
        default=None,
        metavar="STAGES",
        help="comma-separated stages to rerun even if cached; everything downstream reruns too",
    )
    for name, (flag, stage_names) in registry_flags().items():
        parser.add_argument(
            flag.option, dest=name, action="store_true", help=f"{flag.help} (stage {', '.join(stage_names)})"
        )
    return parser


def parse_stage_list(text: str | None, option: str) -> list[str]:
    if not text:
        return []
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise SystemExit(f"{option}: unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGE_NAMES)}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli_common.setup_logging(args.log_level)
    named = parse_stage_list(args.stages, "--stages")
    forced_names = parse_stage_list(args.force, "--force")
    try:
        cfg, workspace = cli_common.load_from_args(args)
        ray_runtime.connect(cfg.ray.address, cfg.ray.num_cpus, verbose=args.verbose)
    except YoloV2Error as e:
        log.error("%s", e)
        return 2
    selected = tuple(named) or tuple(spec.name for spec in STAGES if spec.runs_by_default(cfg))
    forced = frozenset(downstream_of(STAGES, forced_names, cfg))
    invocation = Invocation(
        cfg,
        workspace,
        selected,
        forced,
        {name: getattr(args, name) for name in registry_flags()},
        tracking_enabled=not args.no_mlflow,
        faults=FaultPlan.from_env(),
    )
    summary: dict[str, Any] = {"config": args.config, "workspace": workspace.uri, "stages": {}}
    results: dict[str, StageResult] = {}
    started = time.time()
    try:
        if invocation.tracking_enabled:
            exit_code = run_tracked(invocation, summary, results)
        else:
            exit_code = run_selected(invocation, summary, results)
    except (YoloV2Error, StageError) as e:
        log.error("%s", e)
        exit_code = 2
    summary_exit_code = write_summary(summary, results, started, workspace)
    return exit_code or summary_exit_code


def run_tracked(invocation: Invocation, summary: dict[str, Any], results: dict[str, StageResult]) -> int:
    """:func:`run_selected` inside the pipeline's parent MLflow run (config, environment, final metrics)."""
    import mlflow  # lazily: about 2 s to import, paid only by runs that track

    cfg = invocation.cfg
    uri = tracking.setup_mlflow(
        cfg.mlflow.tracking_uri, cfg.mlflow.experiment, invocation.workspace, cfg.mlflow.fallback_to_local
    )
    summary["mlflow_tracking_uri"] = tracking.mask_secrets(uri)
    with tracking.guarded_run("pipeline") as parent:
        summary["mlflow_parent_run_id"] = parent.run_id
        summary["mlflow_ui"] = tracking.experiment_ui_url(uri, mlflow.active_run().info.experiment_id)
        parent.call("tags", mlflow.set_tags, tracking.environment_tags())
        parent.call("params", tracking.log_params, flatten(to_dict(cfg)))
        exit_code = run_selected(invocation, summary, results, parent)
        parent.call("metrics", tracking.log_metrics, final_metrics(results))
        if exit_code:
            mark_failed(parent, summary)
    if parent.skipped:
        summary["mlflow_not_logged"] = parent.skipped
    return exit_code


def mark_failed(parent: tracking.TrackingGuard, summary: dict[str, Any]) -> None:
    """The parent run ends FAILED, like its failed stage's run, tagged with which stage failed and why: a
    pipeline that stopped half-way must not read FINISHED in the MLflow UI."""
    import mlflow  # lazily, as in run_tracked (already imported there by now)

    failed = {name: info for name, info in summary["stages"].items() if info["status"] == "failed"}
    if failed:
        tags = {"failed_stage": ",".join(failed), "error": "; ".join(info["error"] for info in failed.values())}
        parent.call("tags failed_stage, error", mlflow.set_tags, {k: v[:5000] for k, v in tags.items()})
    parent.fail()


def run_selected(
    invocation: Invocation,
    summary: dict[str, Any],
    results: dict[str, StageResult],
    parent: tracking.TrackingGuard | None = None,
) -> int:
    """Every stage in registry order: the selected ones run (or are cached), the others are reused when their
    output exists. Fills ``results`` and ``summary["stages"]``; 1 at the first stage that fails, else 0.
    Raises StageError when a selected stage's upstream neither ran nor is cached."""
    cfg, workspace = invocation.cfg, invocation.workspace
    for spec in STAGES:
        if spec.name not in invocation.selected:
            cached = load_result(cfg, workspace, spec)
            if cached is not None:
                results[spec.name] = cached
            continue
        upstream = upstream_results(spec, results, cfg)
        started = time.time()
        try:
            result = run_stage(
                spec,
                cfg,
                workspace,
                upstream=upstream,
                force=spec.name in invocation.forced,
                tracking_enabled=invocation.tracking_enabled,
                flags={flag.name: invocation.flags[flag.name] for flag in spec.flags},
                faults=invocation.faults,
            )
        except Exception as e:
            summary["stages"][spec.name] = {
                "status": "failed",
                "error": f"{type(e).__name__}: {e}",
                "seconds": round(time.time() - started, 2),
            }
            log.error("stage %s failed: %s", spec.name, e)
            return 1
        results[spec.name] = result
        summary["stages"][spec.name] = stage_summary(result, workspace)
        if parent is not None and result.cached and result.run_id:
            link_cached_run(parent, spec.name, result.run_id)
        print(
            f"[{spec.name}] {summary['stages'][spec.name]['status']} ({result.seconds:.1f}s) -> "
            f"{workspace.uri_of(result.output_dir)}",
            flush=True,
        )
    return 0


def upstream_results(spec: StageSpec, results: dict[str, StageResult], cfg: PipelineConfig) -> dict[str, StageResult]:
    """The results of the stage's upstream stages from this invocation (run or cached)."""
    upstream = spec.upstream_for(cfg)
    missing = [up.name for up in upstream if up.name not in results]
    if missing:
        raise StageError(
            f"stage {spec.name} needs {missing[0]}, which was not run and has no cached output; add it to --stages"
        )
    return {up.name: results[up.name] for up in upstream}


def stage_summary(result: StageResult, workspace: Workspace) -> dict[str, Any]:
    return {
        "status": "cached" if result.cached else "done",
        "seconds": round(result.seconds, 2),
        "output": workspace.uri_of(result.output_dir),
        "mlflow_run_id": result.run_id,
    }


def link_cached_run(parent: tracking.TrackingGuard, stage: str, run_id: str) -> None:
    """Tag the parent run with the run that produced a cached stage's output."""
    import mlflow  # lazily, as in run_tracked (already imported there by now)

    parent.call(f"tag stage.{stage}.cached_run_id", mlflow.set_tag, f"stage.{stage}.cached_run_id", run_id)


def write_summary(
    summary: dict[str, Any], results: dict[str, StageResult], started: float, workspace: Workspace
) -> int:
    """Finish ``summary.json`` (final metrics, seconds), write it and print the summary; 0, or 1 when it could
    not be written."""
    summary["metrics"] = final_metrics(results)
    summary["seconds"] = round(time.time() - started, 2)
    exit_code = 0
    try:
        workspace.write_json(summary, "summary.json")
    except WorkspaceWriteError as e:  # e.g. the disk filled up: say so rather than end on a traceback
        log.error("%s", e)
        exit_code = 1
    print_summary(summary, workspace)
    return exit_code


def final_metrics(results: dict[str, StageResult]) -> dict[str, float]:
    """The headline numbers: evaluation metrics when evaluate ran, else what earlier stages measured."""
    if "evaluate" in results:
        return {k: v for k, v in results["evaluate"].manifest.get("metrics", {}).items() if isinstance(v, (int, float))}
    if "tune" in results and "best_trial" in results["tune"].manifest:
        best = results["tune"].manifest["best_trial"]
        return {f"tune_best_{key}": value for key, value in best.items() if isinstance(value, float)}
    if "pretrain" in results and "train" not in results:
        phases = results["pretrain"].manifest["phases"]
        return {f"pretrain_{phase}_{key}": v for phase, metrics in phases.items() for key, v in metrics.items()}
    if "anchors" in results:
        return {"anchors_mean_iou": results["anchors"].manifest.get("mean_iou", 0.0)}
    return {}


def print_summary(summary: dict[str, Any], workspace: Workspace) -> None:
    print("\n=== yolov2-pipeline summary ===")
    for stage, info in summary["stages"].items():
        where = info.get("output", info.get("error", ""))
        print(f"  {stage:9s} {info['status']:7s} {info.get('seconds', 0):8.1f}s  {where}")
    for key, value in summary.get("metrics", {}).items():
        print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
    print(f"  summary: {workspace.uri_of('summary.json')}")
    uri = summary.get("mlflow_tracking_uri")
    if uri and not uri.startswith(("http://", "https://")):
        print(f"  MLflow UI: .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    if summary.get("mlflow_ui"):
        print(f"  MLflow experiment: {summary['mlflow_ui']}")


if __name__ == "__main__":
    raise SystemExit(main())
