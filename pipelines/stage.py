"""What every stage shares: fingerprints, manifests, skip-if-done, and one MLflow run per stage.

A stage writes into ``<workspace>/<stage>/<fingerprint>/`` and writes ``manifest.json`` there last,
atomically. The fingerprint hashes the stage's own config sections and its upstream fingerprints,
so it is known from the config alone, before anything runs: a stage whose manifest exists is
skipped ("cached"), and changing one option reruns exactly that stage and what depends on it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from yolov2.config import PipelineConfig, flatten, to_dict

from pipelines import tracking
from pipelines.workspace import Workspace

log = logging.getLogger(__name__)

# The DAG: each stage's upstream stages, in run order.
UPSTREAM: dict[str, list[str]] = {
    "prepare": [],
    "shard": ["prepare"],
    "anchors": ["shard"],
    "train": ["shard", "anchors"],
    "evaluate": ["shard", "train"],
}
STAGES = list(UPSTREAM)

# The config sections (dotted paths) each stage's output depends on. Bump a stage's version when its
# code changes what it writes, so old outputs are not reused.
CONFIG_KEYS: dict[str, list[str]] = {
    "prepare": ["data.kind", "data.root", "data.download", "data.synthetic"],
    "shard": ["data.splits", "data.class_names", "data.strict", "data.max_image_pixels", "shard"],
    "anchors": ["anchors", "train.input_size"],
    "train": ["model", "loss", "train"],
    "evaluate": ["evaluate"],
}
VERSIONS: dict[str, int] = {"prepare": 1, "shard": 1, "anchors": 1, "train": 1, "evaluate": 1}

MANIFEST = "manifest.json"
LOCK_WAIT_SECONDS = 6 * 3600.0  # how long a second run waits for a stage output another run is writing


class StageError(RuntimeError):
    """A stage cannot run (for example its upstream output is missing)."""


def _select(cfg_dict: dict, dotted: str) -> Any:
    node: Any = cfg_dict
    for key in dotted.split("."):
        node = node[key]
    return node


def stage_config(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    """The part of the config that stage's output depends on."""
    data = to_dict(cfg)
    return {key: _select(data, key) for key in CONFIG_KEYS[stage]}


def fingerprint(cfg: PipelineConfig, stage: str) -> str:
    """Hash of the stage's config, code version and (recursively) its upstream fingerprints."""
    payload = {
        "stage": stage,
        "version": VERSIONS[stage],
        "config": stage_config(cfg, stage),
        "upstream": {up: fingerprint(cfg, up) for up in UPSTREAM[stage]},
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def downstream_of(stages: list[str]) -> set[str]:
    """The given stages and every stage that depends on them."""
    out = set(stages)
    changed = True
    while changed:
        changed = False
        for stage, ups in UPSTREAM.items():
            if stage not in out and out.intersection(ups):
                out.add(stage)
                changed = True
    return out


@dataclass
class StageResult:
    """What a finished (or cached) stage hands downstream."""

    stage: str
    fingerprint: str
    output_dir: str  # relative to the workspace root
    manifest: dict[str, Any]
    cached: bool
    seconds: float
    run_id: str | None


@dataclass
class StageContext:
    """Given to a stage body: where to write, the config, and its upstream results."""

    stage: str
    cfg: PipelineConfig
    workspace: Workspace
    output_dir: str
    upstream: dict[str, StageResult] = field(default_factory=dict)
    tracking_enabled: bool = True
    tracker: tracking.TrackingGuard | None = None  # set while the stage's MLflow run is open

    def out(self, *parts: str) -> str:
        """A path relative to the workspace root, inside this stage's output folder."""
        return "/".join([self.output_dir, *parts])

    def track(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """An MLflow call of the stage, through its guard (skipped, and named, while the server is down)."""
        if not self.tracking_enabled:
            return
        if self.tracker is None:
            fn(*args, **kwargs)
        else:
            self.tracker.call(what, fn, *args, **kwargs)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.track(f"metrics {', '.join(sorted(metrics))}", tracking.log_metrics, metrics, step)

    def log_params(self, params: dict[str, Any]) -> None:
        self.track("params", tracking.log_params, params)

    def log_artifact_bytes(self, data: bytes, name: str, artifact_path: str | None = None) -> None:
        self.track(f"artifact {name}", tracking.log_artifact_bytes, data, name, artifact_path)

    def log_figure(self, figure: Any, name: str) -> None:
        self.track(f"figure {name}", tracking.log_figure, figure, name)


def load_result(cfg: PipelineConfig, workspace: Workspace, stage: str) -> StageResult | None:
    """The stage's finished output for this config, or None when it has not completed."""
    fp = fingerprint(cfg, stage)
    output_dir = f"{stage}/{fp}"
    if not workspace.exists(output_dir, MANIFEST):
        return None
    manifest = workspace.read_json(output_dir, MANIFEST)
    return StageResult(stage, fp, output_dir, manifest, cached=True, seconds=0.0, run_id=manifest.get("mlflow_run_id"))


def require_upstream(cfg: PipelineConfig, workspace: Workspace, stage: str) -> dict[str, StageResult]:
    """Upstream results for a stage run on its own; a clear error names what to run first."""
    results = {}
    for up in UPSTREAM[stage]:
        result = load_result(cfg, workspace, up)
        if result is None:
            raise StageError(
                f"stage '{stage}' needs the output of '{up}' for this config, which is not in "
                f"{workspace.uri}. Run it first: python pipelines/{up}.py --config <same config> "
                f"(or python pipelines/full.py --stages {up},{stage})"
            )
        results[up] = result
    return results


def run_stage(
    stage: str,
    cfg: PipelineConfig,
    workspace: Workspace,
    body: Callable[[StageContext], dict[str, Any]],
    *,
    upstream: dict[str, StageResult] | None = None,
    force: bool = False,
    tracking_enabled: bool = True,
    keep_partial_output: bool = False,
    lock_wait: float = LOCK_WAIT_SECONDS,
) -> StageResult:
    """Run ``body`` unless its output exists; write the manifest last; one MLflow run around it.

    ``body`` returns the manifest content (JSON-able). An MLflow run must already be active when
    this is called from ``full.py`` (the parent); the stage's run is nested under it. Leftovers of an
    interrupted attempt are deleted first, unless ``keep_partial_output`` (training's ``--resume``).
    """
    fp = fingerprint(cfg, stage)
    output_dir = f"{stage}/{fp}"
    if not force:
        cached = load_result(cfg, workspace, stage)
        if cached is not None:
            log.info("stage %s: cached (%s)", stage, output_dir)
            return cached
    if upstream is None:
        upstream = require_upstream(cfg, workspace, stage)
    with stage_lock(workspace, stage, fp, lock_wait):
        if not force:  # another run may have finished this output while we waited for the lock
            cached = load_result(cfg, workspace, stage)
            if cached is not None:
                log.info("stage %s: finished by another run meanwhile (%s)", stage, output_dir)
                return cached
        return _run_unlocked(stage, cfg, workspace, body, fp, output_dir, upstream, tracking_enabled,
                             keep_partial_output)


@contextmanager
def stage_lock(workspace: Workspace, stage: str, fp: str, wait_seconds: float) -> Iterator[None]:
    """One writer per stage output: a second run on the same workspace waits (or fails after ``wait_seconds``).

    An ``flock`` on ``<workspace>/locks/<stage>-<fingerprint>.lock``: the OS releases it when the holder
    dies, so a killed run never leaves a stale lock. Object-store workspaces have no such lock (documented).
    """
    if not workspace.is_local:
        yield
        return
    folder = workspace.local_path("locks")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stage}-{fp}.lock"
    with open(path, "a+") as handle:
        deadline = time.monotonic() + wait_seconds
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StageError(
                        f"stage {stage}: its output {stage}/{fp} is being written by another run on this workspace "
                        f"(lock {path}); gave up after {wait_seconds:.0f}s"
                    ) from None
                if not announced:
                    log.warning("stage %s: another run is writing %s/%s; waiting for it", stage, stage, fp)
                    announced = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_unlocked(stage: str, cfg: PipelineConfig, workspace: Workspace, body: Callable[[StageContext], dict[str, Any]],
                  fp: str, output_dir: str, upstream: dict[str, StageResult], tracking_enabled: bool,
                  keep_partial_output: bool) -> StageResult:
    if not keep_partial_output:
        workspace.delete_dir(output_dir)  # a forced or interrupted earlier attempt starts clean
    workspace.makedirs(output_dir)
    ctx = StageContext(stage, cfg, workspace, output_dir, upstream, tracking_enabled)
    started = time.time()
    run_id = None
    if tracking_enabled:
        import mlflow

        if workspace.is_local:  # we hold this output's lock, so a run of it still RUNNING is a dead one's
            tracking.end_stale_stage_runs(cfg.mlflow.experiment, stage, fp, workspace.uri_of(output_dir))
        active = mlflow.active_run()
        with tracking.guarded_run(stage, nested=active is not None) as guard:
            run_id, ctx.tracker = guard.run_id, guard
            ctx.track("tags", mlflow.set_tags, {"stage": stage, "fingerprint": fp,
                                                "workspace": workspace.uri_of(output_dir)})
            ctx.log_params(flatten(stage_config(cfg, stage)))
            manifest = body(ctx)
            seconds = time.time() - started
            ctx.log_metrics({"stage_seconds": seconds})
        if guard.skipped:
            log.warning("stage %s: its output is complete, but the MLflow server was down for %d logging call(s), "
                        "listed in its manifest (mlflow_not_logged); its run may still show RUNNING there",
                        stage, len(guard.skipped))
            manifest = {**manifest, "mlflow_not_logged": guard.skipped}
    else:
        manifest = body(ctx)
        seconds = time.time() - started

    manifest = {
        **manifest,
        "stage": stage,
        "fingerprint": fp,
        "upstream": {name: r.fingerprint for name, r in upstream.items()},
        "mlflow_run_id": run_id,
        "seconds": round(seconds, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    workspace.write_json(manifest, output_dir, MANIFEST)
    log.info("stage %s: done in %.1fs (%s)", stage, seconds, output_dir)
    return StageResult(stage, fp, output_dir, manifest, cached=False, seconds=seconds, run_id=run_id)
