"""The `tune` stage: hyperparameter search over the train stage with Ray Tune, ASHA early stopping, every trial
a child MLflow run.

The search space (``tune.space``, pipelines/tune/space.py) is sampled before Ray starts anything, seeded:
the same config gives the same trials. Each trial is the train stage itself (:mod:`pipelines.tune.trial`):
the same worker function, data and validation, on ``tune.num_workers`` workers, reporting the val split's VOC07
mAP@0.5 every epoch; ASHA (``grace_period``, ``reduction_factor``, ``max_t = tune.max_epochs``) stops the
trials that trail at each rung. The anchors for every k the space can sample come from the anchors stage's
k table. Trials run concurrently as far as the cluster's CPUs (GPUs) allow.

Outputs: ``trials.parquet`` (config, metric per epoch, best metric, epochs run, wall time, node, outcome),
``best_config.yaml`` (what ``train.from_tune: true`` applies), ``trial_curves.png`` and ``trial_params.png``,
all also in MLflow. A rerun after the driver was killed restores the search (``Tuner.restore``): finished
trials are not run again and unfinished ones resume from their last checkpoint.

Run alone: ``python -m pipelines.tune --config configs/demo.yaml`` (``full.py`` runs it when ``tune.enabled`` or
``train.from_tune`` is true, or with ``--stages tune``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd
import ray
import ray.tune
import yaml
from ray.tune.schedulers import ASHAScheduler

from pipelines import anchors, ray_runtime, shard
from pipelines.config import PipelineConfig
from pipelines.dag import StageContext, StageError, StageSpec
from pipelines.pretrain import stage as pretrain_stage
from pipelines.train.checkpoints import BEST_BY
from pipelines.train.job import accumulation_for
from pipelines.tune import runs
from pipelines.tune.progress import SearchProgress
from pipelines.tune.records import TrialRecord, best_record, trials_table
from pipelines.tune.space import Dimension, parse_space, sample_trials
from pipelines.tune.trial import TRIAL_DRIVER_RESOURCES, SearchJob, run_trial, trial_name, trial_settings
from yolov2.engine.trainer import steps_per_epoch
from yolov2.errors import ConfigError
from yolov2.metrics.figures import figure_png
from yolov2.metrics.search_figures import params_figure, trial_curves_figure

log = logging.getLogger(__name__)
TRIALS_FILE, BEST_CONFIG_FILE = "trials.parquet", "best_config.yaml"
CURVES_FIGURE, PARAMS_FIGURE = "trial_curves.png", "trial_params.png"
ANCHORS_BY_K_FILE = "anchors_by_k.json"  # in MLflow: the anchors of every k the space can sample
TRIAL_RUNS_FILE = "trial_runs.json"  # trial index -> MLflow run id, kept for a restored search
SEARCH_NAME = "search"  # Ray Tune's experiment folder under <output>/ray
STOPPED_TRIAL_GRACE_S = 1


def tune_body(ctx: StageContext) -> dict[str, Any]:
    """Sample the trials, run the search (or restore it), publish its outputs; the manifest."""
    cfg = ctx.cfg
    dims = parse_space(cfg.tune.space, cfg, "tune.space")
    anchors_by_k = _anchors_by_k(ctx.upstream["anchors"].manifest, dims)
    trials = sample_trials(dims, cfg.tune.num_trials, cfg.tune.seed)
    base = trial_settings(cfg)
    if cfg.train.init_from == "pretrain":  # every trial starts from the pretrain stage's backbone, as train would
        base = pretrain_stage.pretrained_config(base, ctx.workspace, ctx.upstream["pretrain"])
    max_epochs = base.train.loop.epochs
    run_ids = _trial_runs(ctx, trials)
    job = SearchJob(
        cfg=base,
        workspace_uri=ctx.workspace.uri,
        output_dir=ctx.output_dir,
        shard=ctx.upstream["shard"],
        anchors=ctx.upstream["anchors"].manifest["anchors"],
        anchors_by_k=anchors_by_k,
        tracking_uri=_tracking_uri(ctx),
        logging_config=ray_runtime.train_logging_config(),
    )
    param_space = {
        "trial": ray.tune.grid_search(
            [{"index": i, "params": params, "run_id": run_ids[i]} for i, params in enumerate(trials)]
        )
    }
    trainable = ray.tune.with_resources(ray.tune.with_parameters(run_trial, job=job), TRIAL_DRIVER_RESOURCES)
    storage = ctx.workspace.uri_of(ctx.output_dir, "ray")
    experiment = f"{storage}/{SEARCH_NAME}"
    restored = ray.tune.Tuner.can_restore(experiment)
    # A trial ASHA stops is ended gracefully, which waits for its train run's next report (an epoch, minutes on
    # real data) while its workers keep the CPUs; past this many seconds (and Tune's own floor of 10) Tune kills
    # the trial actor, and its train run's controller and workers go with it. Tune reads it when the search starts.
    os.environ.setdefault("TUNE_FORCE_TRIAL_CLEANUP_S", str(STOPPED_TRIAL_GRACE_S))
    if not ray_runtime.is_verbose():  # Tune's newer console output prints its experiment box even at verbose=0
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    concurrency = max_concurrent_trials(base, len(trials), ray.cluster_resources())
    log.info(
        "tune: %d trials of up to %d epochs, %d at a time, ASHA grace %d, reduction %d%s",
        len(trials),
        max_epochs,
        concurrency,
        cfg.tune.grace_period,
        cfg.tune.reduction_factor,
        " (restoring the interrupted search)" if restored else "",
    )
    if restored:
        tuner = ray.tune.Tuner.restore(
            experiment, trainable, resume_unfinished=True, resume_errored=True, param_space=param_space
        )
    else:
        epochs = expected_epochs(base, ctx.upstream["shard"].manifest["splits"]["train"]["images"])
        tuner = new_tuner(trainable, param_space, base, storage, concurrency, len(trials), epochs)
    grid = tuner.fit()
    records = [trial_record(result, max_epochs) for result in grid]
    records.sort(key=lambda r: r.index)
    return _publish(ctx, dims, records, grid, anchors_by_k, max_epochs, restored)


def new_tuner(
    trainable: Any,
    param_space: dict[str, Any],
    base: PipelineConfig,
    storage: str,
    concurrency: int,
    num_trials: int,
    expected: int,
) -> ray.tune.Tuner:
    """The search: ASHA on the val metric every epoch (``time_attr="epoch"``, ``max_t`` the trial's epochs), the
    trials named and foldered by index, Tune's own console tables off (:class:`SearchProgress` prints the line,
    counting ``expected`` epochs per trial)."""
    tune, max_epochs = base.tune, base.train.loop.epochs
    return ray.tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=ray.tune.TuneConfig(
            scheduler=ASHAScheduler(
                time_attr="epoch",
                metric=BEST_BY,
                mode="max",
                max_t=max_epochs,
                grace_period=min(tune.grace_period, max_epochs),
                reduction_factor=tune.reduction_factor,
            ),
            max_concurrent_trials=concurrency,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=ray.tune.RunConfig(
            name=SEARCH_NAME,
            storage_path=storage,
            verbose=2 if ray_runtime.is_verbose() else 0,
            callbacks=[SearchProgress(num_trials, expected)],
        ),
    )


def _publish(
    ctx: StageContext,
    dims: Sequence[Dimension],
    records: list[TrialRecord],
    grid: Any,
    anchors_by_k: dict[int, list[list[float]]],
    max_epochs: int,
    restored: bool,
) -> dict[str, Any]:
    """trials.parquet, best_config.yaml and the two figures, in the output and in MLflow; the trial runs closed."""
    if runs_enabled(ctx):
        ctx.track("trial runs' outcomes", runs.finish_trial_runs, _tracking_uri(ctx), records)
    table = trials_table(records)
    ctx.workspace.write_parquet(table, ctx.out(TRIALS_FILE))
    best = best_record(records)
    if best is None:
        errors = "; ".join(f"{trial_name(r.index)}: {r.error}" for r in records if r.error)
        raise StageError(
            f"tune: no trial reported a val {BEST_BY} ({errors or 'no val split?'}); see {ctx.out(TRIALS_FILE)}"
        )
    ray_best = grid.get_best_result(metric=BEST_BY, mode="max", scope="all")
    best_params = ray_best.config["trial"]["params"]
    best_k = best_params.get("anchors.k")
    best_anchors = anchors_by_k[best_k] if best_k is not None else ctx.upstream["anchors"].manifest["anchors"]
    best_yaml = best_config_yaml(best_params, best)
    ctx.workspace.write_bytes(best_yaml.encode(), ctx.out(BEST_CONFIG_FILE))
    curves = trial_curves_figure(
        {trial_name(r.index): r.metric_by_epoch for r in records},
        {trial_name(r.index): r.status == "stopped_early" for r in records},
        BEST_BY,
        max_epochs,
    )
    params = params_figure(
        {d.key: [r.params.get(d.key) for r in records] for d in dims},
        [r.best_metric for r in records],
        {d.key: d.log_scale for d in dims},
        BEST_BY,
    )
    for name, figure in ((CURVES_FIGURE, curves), (PARAMS_FIGURE, params)):
        ctx.workspace.write_bytes(figure_png(figure), ctx.out(name))
        ctx.log_figure(figure, name)
    for name in (TRIALS_FILE, BEST_CONFIG_FILE):
        ctx.log_artifact_bytes(ctx.workspace.read_bytes(ctx.out(name)), name)
    by_k = {str(k): v for k, v in sorted(anchors_by_k.items())}
    ctx.log_artifact_bytes(json.dumps(by_k, indent=1).encode(), ANCHORS_BY_K_FILE)
    stopped = sum(r.status == "stopped_early" for r in records)
    failed = sum(r.status == "failed" for r in records)
    ctx.log_metrics({f"best_{BEST_BY}": best.best_metric, "trials_stopped_early": stopped, "trials_failed": failed})
    log.info(
        "tune: best %s %.4f (%s: %s); %d of %d trials stopped early by ASHA, %d failed",
        BEST_BY,
        best.best_metric,
        trial_name(best.index),
        ", ".join(f"{k}={v}" for k, v in best_params.items()),
        stopped,
        len(records),
        failed,
    )
    return {
        "best_config": best_params,
        "best_anchors": best_anchors,
        "best_trial": {"index": best.index, "trial_id": best.trial_id, BEST_BY: best.best_metric},
        "trials": len(records),
        "stopped_early": stopped,
        "failed": failed,
        "max_epochs": max_epochs,
        "restored": restored,
        "anchors_by_k": by_k,
        "files": {"trials": TRIALS_FILE, "best_config": BEST_CONFIG_FILE, "figures": [CURVES_FIGURE, PARAMS_FIGURE]},
    }


def trial_record(result: Any, max_epochs: int) -> TrialRecord:
    """A trial's :class:`TrialRecord` from its Ray Tune result: the metric after each epoch it ran (the last
    report of an epoch wins, as a resumed trial repeats the epochs after its checkpoint) and its outcome."""
    trial = result.config["trial"]
    last = result.metrics or {}
    frame = result.metrics_dataframe
    by_epoch: dict[int, float] = {}
    if frame is not None and "epoch" in frame:
        metric = frame[BEST_BY] if BEST_BY in frame else pd.Series([math.nan] * len(frame))
        for epoch, value in zip(frame["epoch"], metric):
            by_epoch[int(epoch)] = float(value) if pd.notna(value) else math.nan
    curve = [by_epoch.get(e, math.nan) for e in range(1, max(by_epoch, default=0) + 1)]
    if result.error:
        status = "failed"
    elif last.get("training_done"):
        status = "finished"
    else:
        status = "stopped_early"
    return TrialRecord(
        trial_id=str(last.get("trial_id", "")),
        index=int(trial["index"]),
        params=dict(trial["params"]),
        metric_by_epoch=curve,
        wall_seconds=float(last.get("time_total_s", 0.0)),
        node=str(last.get("node_id", "")),
        workers=int(last.get("world_size", 0)),
        status=status,
        error=f"{type(result.error).__name__}: {result.error}" if result.error else None,
        run_id=trial["run_id"],
    )


def best_config_yaml(params: dict[str, Any], best: TrialRecord) -> str:
    """The best trial's values as config sections, with a comment saying where they come from and how to use them."""
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in params.items():
        section, key = dotted.split(".", 1)
        nested.setdefault(section, {})[key] = value
    header = (
        f"# The tune stage's best trial: {trial_name(best.index)} (Ray Tune trial {best.trial_id}), val {BEST_BY} "
        f"{best.best_metric:.4f} after {best.epochs_run} epoch(s).\n"
        "# train.from_tune: true trains with these values (or copy them into your config).\n"
    )
    return header + yaml.safe_dump(nested, sort_keys=False)


def max_concurrent_trials(base: PipelineConfig, num_trials: int, cluster: dict[str, float]) -> int:
    """``tune.max_concurrent_trials``, else as many trials as the cluster holds at once: each needs
    ``num_workers`` workers of ``cpus_per_worker`` CPUs (one GPU each with ``use_gpu``)."""
    if base.tune.max_concurrent_trials:
        return base.tune.max_concurrent_trials
    t = base.train
    resource, per_trial = ("GPU", t.num_workers) if t.use_gpu else ("CPU", t.num_workers * t.cpus_per_worker)
    return max(1, min(num_trials, int(cluster.get(resource, 0) // max(per_trial, 1))))


def expected_epochs(base: PipelineConfig, train_images: int) -> int:
    """The epochs a trial runs unless stopped: ``train.epochs``, or fewer when ``train.max_steps`` ends it first
    (for the progress line's total; the loaders' exact split may differ by a step)."""
    t = base.train
    if not t.loop.max_steps:
        return t.loop.epochs
    accumulation = accumulation_for(t.effective_batch, t.batch_size, t.num_workers)
    micro_batches = math.ceil(train_images / (t.batch_size * t.num_workers))
    per_epoch = steps_per_epoch(micro_batches, accumulation)
    return max(1, min(t.loop.epochs, math.ceil(t.loop.max_steps / per_epoch)))


def runs_enabled(ctx: StageContext) -> bool:
    return _tracking_uri(ctx) is not None


def _tracking_uri(ctx: StageContext) -> str | None:
    if not ctx.tracking_enabled:
        return None
    import mlflow  # lazily: about 2 s to import

    return mlflow.get_tracking_uri() if mlflow.active_run() else None


def _trial_runs(ctx: StageContext, trials: list[dict[str, Any]]) -> list[str | None]:
    """The trials' MLflow child runs: created now, or, for a restored search, the first attempt's, moved under
    this attempt's stage run. None for each when tracking is off or the server cannot take them."""
    import mlflow  # lazily: about 2 s to import

    uri = _tracking_uri(ctx)
    if uri is None:
        return [None] * len(trials)
    parent = mlflow.active_run().info.run_id
    if ctx.workspace.exists(ctx.out(TRIAL_RUNS_FILE)):
        run_ids = ctx.workspace.read_json(ctx.out(TRIAL_RUNS_FILE))
        ctx.track("trial runs (restored)", runs.adopt_trial_runs, uri, parent, [r for r in run_ids if r])
        return run_ids
    created: list[list[str]] = []
    fp = ctx.output_dir.rsplit("/", 1)[-1]
    ctx.track("trial runs", lambda: created.append(runs.create_trial_runs(uri, parent, trials, fp)))
    run_ids = created[0] if created else [None] * len(trials)
    ctx.workspace.write_json(run_ids, ctx.out(TRIAL_RUNS_FILE))
    return run_ids


def _anchors_by_k(manifest: dict[str, Any], dims: Sequence[Dimension]) -> dict[int, list[list[float]]]:
    """The anchors stage's clustered anchors for every k the space can sample; a ConfigError names a k it lacks."""
    available = {int(k): v for k, v in manifest.get("anchors_by_k", {}).items()}
    wanted = set()
    for dim in dims:
        if dim.key == "anchors.k":
            wanted = set(dim.args) if dim.sampler == "choice" else set(range(dim.args[0], dim.args[1]))
    missing = sorted(wanted - set(available))
    if missing:
        raise ConfigError(
            f"tune.space.anchors.k can sample k={missing}, but the anchors stage clustered only "
            f"k={sorted(available)} (k up to the number of distinct training box shapes); narrow the range"
        )
    for k in sorted(wanted):
        log.info("tune: anchors for k=%d: %s", k, json.dumps(available[k]))
    return {k: available[k] for k in wanted}


def _trial_name(trial: Any) -> str:
    return trial_name(trial.config["trial"]["index"])


def _runs_if(cfg: PipelineConfig) -> bool:
    return cfg.tune.enabled or cfg.train.from_tune


def _from_pretrain(cfg: PipelineConfig) -> bool:
    return cfg.train.init_from == "pretrain"


SPEC = StageSpec(
    name="tune",
    upstream=(shard.SPEC, anchors.SPEC),
    upstream_if=((pretrain_stage.SPEC, _from_pretrain),),
    config_keys=("tune", "model", "loss", "train", "anchors", "evaluate"),
    version=1,
    body=tune_body,
    summary="hyperparameter search over the train stage with Ray Tune: seeded samples, ASHA on val mAP, "
    "a child MLflow run per trial, best_config.yaml",
    runs_if=_runs_if,
    resumes=True,
)
