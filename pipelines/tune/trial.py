"""One trial of the search: the train stage's own run (the same worker function, data path and validation)
with the trial's sampled values, reporting each epoch to Ray Tune.

Ray's pattern for Tune over Train V2: the Tune trial is a light driver that builds a ``TorchTrainer`` with
``TuneReportCallback``; its train run has a deterministic place (``trials/trial_<index>/ray/run``), so a
restored trial resumes its run from the last checkpoint instead of starting again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.dag import StageResult
from pipelines.train.launch import torch_trainer, train_datasets, train_job
from pipelines.tune.space import trial_config
from pipelines.workspace import Workspace

log = logging.getLogger(__name__)
TRIALS_DIR = "trials"
STARTS_FILE = "starts.jsonl"  # in a trial's folder: one line per start of its train run
# A trial is only the driver of its train run, whose workers hold the CPUs (GPUs); Tune's default of one CPU
# per trial would keep a CPU idle per concurrent trial. Ray refuses an empty request, so it asks for a little
# memory instead (Ray's own guide does the same with a tiny custom resource).
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 64 * 1024 * 1024}


def trial_name(index: int) -> str:
    return f"trial_{index:03d}"


@dataclass(frozen=True)
class SearchJob:
    """What every trial of a search shares (given to each through ``tune.with_parameters``)."""

    cfg: PipelineConfig  # :func:`trial_settings` of the stage's config
    workspace_uri: str
    output_dir: str  # the tune stage's; trial i writes into trials/trial_<i>/
    shard: StageResult
    anchors: list[list[float]]  # the anchors stage's, for trials that do not sample anchors.k
    anchors_by_k: dict[int, list[list[float]]]
    tracking_uri: str | None
    logging_config: Any  # Ray Train's console level, the stage's (a trial's process does not know --verbose)


def trial_settings(cfg: PipelineConfig) -> PipelineConfig:
    """The config every trial starts from: the train stage's, run as the search needs it.

    Validation and a checkpoint every epoch (ASHA judges each epoch; a stopped trial loses nothing), the tune
    section's workers, no model registration, and ``tune.max_epochs`` epochs. A trial shorter than the train
    run keeps the run's schedule in proportion: its ``steps``, ``burn_in`` and ``warmup`` scale with the length,
    so a trial's learning rate decays where the full run's would (absolute Darknet steps past a trial's end
    would leave every trial at its peak rate, and ASHA would favour large rates).
    """
    t, tune = cfg.train, cfg.tune
    epochs = tune.max_epochs or t.loop.epochs
    scale = epochs / t.loop.epochs
    loop = dataclasses.replace(
        t.loop,
        epochs=epochs,
        val_every=1,
        checkpoint_every=1,
        steps=[max(1, round(s * scale)) for s in t.loop.steps],
        burn_in=round(t.loop.burn_in * scale),
        warmup=round(t.loop.warmup * scale),
    )
    train = dataclasses.replace(
        t, loop=loop, num_workers=tune.num_workers or t.num_workers, register_name=None, from_tune=False
    )
    return dataclasses.replace(cfg, train=train)


def trial_anchors(job: SearchJob, params: dict[str, Any], k: int) -> list[list[float]]:
    """The anchors stage's anchors, or the clustered ones for the trial's sampled ``anchors.k``."""
    return job.anchors_by_k[k] if "anchors.k" in params else job.anchors


def run_trial(config: dict[str, Any], job: SearchJob) -> None:
    """Ray Tune's trainable: one train run with ``config["trial"]`` (index, sampled params, MLflow run id)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial = config["trial"]
    index, params, run_id = trial["index"], trial["params"], trial["run_id"]
    cfg = trial_config(job.cfg, params, f"trial {index}")
    workspace = Workspace(job.workspace_uri)
    output_dir = f"{job.output_dir}/{TRIALS_DIR}/{trial_name(index)}"
    trial_id = ray.tune.get_context().get_trial_id()
    record_start(workspace, output_dir, trial_id)
    if run_id and job.tracking_uri:
        mark_running(job.tracking_uri, run_id, trial_id)
    train = train_job(
        cfg,
        workspace,
        job.shard,
        trial_anchors(job, params, cfg.anchors.k),
        output_dir,
        tracking_uri=job.tracking_uri if run_id else None,
        run_id=run_id,
        console_lines=False,
    )
    trainer = torch_trainer(
        train,
        workspace.uri_of(output_dir, "ray"),
        train_datasets(train, workspace, job.shard),
        callbacks=[TuneReportCallback()],
        logging_config=job.logging_config,
    )
    result = trainer.fit()
    if result.error:
        raise result.error


def record_start(workspace: Workspace, output_dir: str, trial_id: str) -> None:
    """One line per start of the trial in ``starts.jsonl``: a restored search shows which trials ran again."""
    previous = workspace.read_bytes(output_dir, STARTS_FILE) if workspace.exists(output_dir, STARTS_FILE) else b""
    line = json.dumps({"trial_id": trial_id, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    workspace.write_bytes(previous + line.encode() + b"\n", output_dir, STARTS_FILE)


def mark_running(tracking_uri: str, run_id: str, trial_id: str) -> None:
    """The trial's child run shows RUNNING (it was created SCHEDULED), tagged with Tune's trial id."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri)
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "tune.trial_id", trial_id)
    except Exception as e:  # an unreachable server must not stop the trial
        log.warning("could not mark MLflow run %s as running: %s", run_id, e)
