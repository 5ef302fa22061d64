"""The stage DAG: each stage declared once (:class:`StageSpec`), its fingerprint, and how one stage runs.

A stage writes into ``<workspace>/<stage>/<fingerprint>/`` and writes ``manifest.json`` there last,
atomically. The fingerprint hashes the stage's own config sections, its version and its upstream
fingerprints, so it is known from the config alone, before anything runs: a stage whose manifest exists
is skipped ("cached"), and changing one option reruns exactly that stage and what depends on it.
The registry of stages, in run order, is ``pipelines/stages.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines import tracking
from pipelines.config import PipelineConfig, flatten, to_dict
from pipelines.faults import NO_FAULTS, FaultPlan
from pipelines.locks import LOCK_WAIT_SECONDS, StageError, stage_lock
from pipelines.workspace import Workspace

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StageFlag:
    """A boolean command-line flag ``--<name with dashes>`` of a stage, passed to its body as a keyword."""

    name: str
    help: str
    keeps_partial_output: bool = False  # when set, an interrupted attempt's output is kept (resume)

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class StageSpec:
    """Everything about a stage, in one place: its name, what it depends on, and the code that runs it.

    Bump ``version`` when the body's code changes what it writes, so old outputs are not reused.
    """

    name: str
    upstream: tuple[StageSpec, ...]  # the stages whose outputs the body reads
    config_keys: tuple[str, ...]  # dotted config paths the output depends on
    version: int
    body: Callable[..., dict[str, Any]]  # body(ctx: StageContext, **flags: bool) -> manifest content (JSON-able)
    flags: tuple[StageFlag, ...] = ()
    summary: str = ""  # one line for --help
    # stages the body reads only under some configs (train reads tune's best config with train.from_tune)
    upstream_if: tuple[tuple[StageSpec, Callable[[PipelineConfig], bool]], ...] = ()
    # None: part of every full run; else full.py runs it only when this says so (or --stages names it)
    runs_if: Callable[[PipelineConfig], bool] | None = None
    # True: a rerun continues an interrupted attempt's output (the tune stage restores its search) instead of
    # deleting it; --force still starts clean
    resumes: bool = False

    def command(self) -> str:
        """How to run this stage alone (for error messages)."""
        return f"python -m pipelines.{self.name}"

    def upstream_for(self, cfg: PipelineConfig) -> tuple[StageSpec, ...]:
        """The stages whose outputs the body reads under this config."""
        return self.upstream + tuple(spec for spec, needed in self.upstream_if if needed(cfg))

    def runs_by_default(self, cfg: PipelineConfig) -> bool:
        return self.runs_if is None or self.runs_if(cfg)


def _select(cfg_dict: dict, dotted: str) -> Any:
    node: Any = cfg_dict
    for key in dotted.split("."):
        node = node[key]
    return node


def stage_config(cfg: PipelineConfig, spec: StageSpec) -> dict[str, Any]:
    """The part of the config that the stage's output depends on."""
    data = to_dict(cfg)
    return {key: _select(data, key) for key in spec.config_keys}


def fingerprint(cfg: PipelineConfig, spec: StageSpec) -> str:
    """Hash of the stage's config, code version and (recursively) its upstream fingerprints."""
    payload = {
        "stage": spec.name,
        "version": spec.version,
        "config": stage_config(cfg, spec),
        "upstream": {up.name: fingerprint(cfg, up) for up in spec.upstream_for(cfg)},
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def downstream_of(registry: Iterable[StageSpec], names: Iterable[str], cfg: PipelineConfig) -> set[str]:
    """The named stages and every stage of ``registry`` that depends on them under ``cfg``, directly or not."""
    out = set(names)
    changed = True
    while changed:
        changed = False
        for spec in registry:
            if spec.name not in out and out.intersection(up.name for up in spec.upstream_for(cfg)):
                out.add(spec.name)
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
    """Given to a stage body: where to write, the config, its upstream results and the faults to inject."""

    stage: str
    cfg: PipelineConfig
    workspace: Workspace
    output_dir: str
    upstream: dict[str, StageResult] = field(default_factory=dict)
    tracking_enabled: bool = True
    faults: FaultPlan = NO_FAULTS  # none, except in the fault tests and benchmarks/reliability.py
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


def load_result(cfg: PipelineConfig, workspace: Workspace, spec: StageSpec) -> StageResult | None:
    """The stage's finished output for this config, or None when it has not completed."""
    fp = fingerprint(cfg, spec)
    output_dir = f"{spec.name}/{fp}"
    if not workspace.exists(output_dir, MANIFEST):
        return None
    manifest = workspace.read_json(output_dir, MANIFEST)
    return StageResult(
        spec.name, fp, output_dir, manifest, cached=True, seconds=0.0, run_id=manifest.get("mlflow_run_id")
    )


def require_upstream(cfg: PipelineConfig, workspace: Workspace, spec: StageSpec) -> dict[str, StageResult]:
    """Upstream results for a stage run on its own; a clear error names what to run first."""
    results = {}
    for up in spec.upstream_for(cfg):
        result = load_result(cfg, workspace, up)
        if result is None:
            raise StageError(
                f"stage '{spec.name}' needs the output of '{up.name}' for this config, which is not in "
                f"{workspace.uri}. Run it first: {up.command()} --config <same config> "
                f"(or python -m pipelines.full --stages {up.name},{spec.name})"
            )
        results[up.name] = result
    return results


def run_stage(
    spec: StageSpec,
    cfg: PipelineConfig,
    workspace: Workspace,
    *,
    upstream: dict[str, StageResult] | None = None,
    force: bool = False,
    tracking_enabled: bool = True,
    flags: Mapping[str, bool] | None = None,
    faults: FaultPlan = NO_FAULTS,
    lock_wait: float = LOCK_WAIT_SECONDS,
) -> StageResult:
    """Run the stage's body unless its output exists; write the manifest last; one MLflow run around it.

    An MLflow run must already be active when this is called from ``full.py`` (the parent); the stage's
    run is nested under it. ``upstream`` defaults to the cached outputs of the spec's upstream stages.
    ``flags`` are the stage's declared flags (unset ones are False). Leftovers of an interrupted attempt
    are deleted first, unless a set flag ``keeps_partial_output`` (training's ``--resume``).
    """
    flag_values = _flag_values(spec, flags or {})
    fp = fingerprint(cfg, spec)
    output_dir = f"{spec.name}/{fp}"
    if not force:
        cached = load_result(cfg, workspace, spec)
        if cached is not None:
            log.info("stage %s: cached (%s)", spec.name, output_dir)
            return cached
    if upstream is None:
        upstream = require_upstream(cfg, workspace, spec)
    with stage_lock(workspace, spec.name, fp, lock_wait):
        if not force:  # another run may have finished this output while we waited for the lock
            cached = load_result(cfg, workspace, spec)
            if cached is not None:
                log.info("stage %s: finished by another run meanwhile (%s)", spec.name, output_dir)
                return cached
        keep_partial = any(flag.keeps_partial_output and flag_values[flag.name] for flag in spec.flags)
        if not (keep_partial or (spec.resumes and not force)):
            workspace.delete_dir(output_dir)  # a forced or interrupted earlier attempt starts clean
        workspace.makedirs(output_dir)
        ctx = StageContext(spec.name, cfg, workspace, output_dir, upstream, tracking_enabled, faults)
        return _run_body(spec, ctx, fp, flag_values)


def _flag_values(spec: StageSpec, flags: Mapping[str, bool]) -> dict[str, bool]:
    """Every flag the stage declares, False unless set; a flag it does not declare is an error."""
    declared = {flag.name for flag in spec.flags}
    unknown = sorted(set(flags) - declared)
    if unknown:
        raise StageError(
            f"stage {spec.name} has no flag {', '.join(unknown)} (its flags: {', '.join(sorted(declared)) or 'none'})"
        )
    return {name: bool(flags.get(name, False)) for name in sorted(declared)}


def _run_body(spec: StageSpec, ctx: StageContext, fp: str, flags: dict[str, bool]) -> StageResult:
    """The body inside the stage's MLflow run (when tracking), then the manifest, written last."""
    workspace, output_dir = ctx.workspace, ctx.output_dir
    started = time.time()
    run_id = None
    if ctx.tracking_enabled:
        import mlflow  # lazily: about 2 s to import, paid only by runs that track

        if workspace.is_local:  # we hold this output's lock, so a run of it still RUNNING is a dead one's
            tracking.end_stale_stage_runs(ctx.cfg.mlflow.experiment, spec.name, fp, workspace.uri_of(output_dir))
        active = mlflow.active_run()
        with tracking.guarded_run(spec.name, nested=active is not None) as guard:
            run_id, ctx.tracker = guard.run_id, guard
            ctx.track(
                "tags",
                mlflow.set_tags,
                {"stage": spec.name, "fingerprint": fp, "workspace": workspace.uri_of(output_dir)},
            )
            ctx.log_params(flatten(stage_config(ctx.cfg, spec)))
            manifest = spec.body(ctx, **flags)
            seconds = time.time() - started
            ctx.log_metrics({"stage_seconds": seconds})
        if guard.skipped:
            log.warning(
                "stage %s: its output is complete, but the MLflow server was down for %d logging call(s), "
                "listed in its manifest (mlflow_not_logged); its run may still show RUNNING there",
                spec.name,
                len(guard.skipped),
            )
            manifest = {**manifest, "mlflow_not_logged": guard.skipped}
    else:
        manifest = spec.body(ctx, **flags)
        seconds = time.time() - started

    manifest = {
        **manifest,
        "stage": spec.name,
        "fingerprint": fp,
        "upstream": {name: result.fingerprint for name, result in ctx.upstream.items()},
        "mlflow_run_id": run_id,
        "seconds": round(seconds, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    workspace.write_json(manifest, output_dir, MANIFEST)
    log.info("stage %s: done in %.1fs (%s)", spec.name, seconds, output_dir)
    return StageResult(spec.name, fp, output_dir, manifest, cached=False, seconds=seconds, run_id=run_id)
