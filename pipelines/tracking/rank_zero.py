"""Training metrics from Ray Train's rank 0 to the stage's MLflow run, never stopping training, and the
driver's account of what reached the server.

``mlflow`` is imported in :class:`RankZeroLogger` only when it logs (rank 0 with tracking on): the other
ranks and untracked runs do not pay its 2 s import.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from pipelines.tracking.sender import MetricSender
from pipelines.tracking.server import fail_fast_mlflow_env, server_reachable
from pipelines.workspace import Workspace

log = logging.getLogger(__name__)
DELIVERY_REPORT = "mlflow_delivery.json"  # rank 0's account of the metrics it sent to MLflow
UNSENT_METRICS = "mlflow_unsent_metrics.jsonl"  # metric values MLflow never took (server down to the end)


def console(line: str) -> None:
    """To the process's real stdout: Ray Train patches print() to log *and* echo each line (shown twice)."""
    print(line, file=sys.__stdout__, flush=True)


def worker_mlflow_env() -> dict[str, str]:
    """Environment for the train workers: MLflow requests fail at once instead of retrying for minutes.

    Rank 0's MetricSender retries on its own (every second, values kept in memory), so a dead server
    costs nothing; inside MLflow's retries the values would wait behind a back-off of up to minutes.
    Settings the user made in the environment are kept.
    """
    return {k: os.environ.get(k, v) for k, v in fail_fast_mlflow_env(10).items()}


class RankZeroLogger:
    """Metrics to MLflow (rank 0 only) and a live console line; MLflow failures never stop training.

    Values go through a :class:`MetricSender`: buffered while the server is unreachable, sent when it
    answers again. At the end the sender gets ``flush_timeout`` seconds; values still unsent are written
    to ``<output>/mlflow_unsent_metrics.jsonl``, and ``mlflow_delivery.json`` says what happened (the
    driver reports it in the stage's log and manifest, :func:`report_delivery`).
    """

    def __init__(
        self,
        tracking_uri: str | None,
        run_id: str | None,
        rank: int,
        total_steps: int,
        workspace: Workspace | None = None,
        output_dir: str | None = None,
        flush_timeout: float = 120.0,
        console_lines: bool = True,
        label: str = "train",
    ) -> None:
        self.enabled = rank == 0
        self.label = label  # the console lines' prefix: the stage
        self.console_lines = console_lines  # False: MLflow only (a tune trial, whose progress is the search's)
        self.sender = None
        self.log_params: Callable[[dict[str, Any]], None] | None = None
        self.started = time.time()
        self.total_steps = total_steps
        self.workspace, self.output_dir, self.flush_timeout = workspace, output_dir, flush_timeout
        if self.enabled and tracking_uri and run_id:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri)
            self.log_params = lambda params: client.log_batch(
                run_id, params=[Param(k, str(v)) for k, v in params.items()]
            )
            self.sender = MetricSender(
                send=lambda chunk: client.log_batch(run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in chunk]),
                reachable=lambda: server_reachable(tracking_uri, timeout=2.0),
            )

    def precision(self, precision, hardware, warnings: list[str]) -> None:
        """Say once what precision and layout training runs in and why; record it as MLflow params."""
        if not self.enabled:
            return
        if self.console_lines:
            console(f"[{self.label}] precision: {precision.describe()} on {hardware.describe()} ({precision.reason})")
        for warning in warnings:
            console(f"[{self.label}] warning: {warning}")
        if self.log_params is not None:
            params = {
                "precision.amp": precision.amp,
                "precision.channels_last": precision.channels_last,
                "precision.hardware": hardware.describe(),
            }
            try:
                self.log_params(params)
            except Exception as e:  # an unreachable server must not stop training
                log.warning("could not log the precision params to MLflow (%s): %s", e, params)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        if "epoch" in metrics and self.console_lines:  # the end of an epoch; per-step progress is TrainProgress's
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "step")
            console(f"[{self.label}] end of epoch {int(metrics['epoch'])}: {shown} ({time.time() - self.started:.0f}s)")
        if self.sender is not None:
            self.sender.add({k.replace("/", "_"): v for k, v in metrics.items()}, step)

    def close(self, step: int) -> None:
        if self.sender is None:
            return
        unsent = self.sender.close(self.flush_timeout)
        report = self.sender.delivery.to_dict()
        if unsent and self.workspace is not None and self.output_dir:
            lines = "".join(
                json.dumps({"key": k, "value": v, "timestamp": t, "step": s}) + "\n" for k, v, t, s in unsent
            )
            self.workspace.write_bytes(lines.encode(), self.output_dir, UNSENT_METRICS)
            report["unsent_file"] = self.workspace.uri_of(self.output_dir, UNSENT_METRICS)
            log.warning(
                "MLflow still unreachable after %.0fs: %d metric values kept in %s",
                self.flush_timeout,
                len(unsent),
                report["unsent_file"],
            )
        if self.workspace is not None and self.output_dir:
            self.workspace.write_json(report, self.output_dir, DELIVERY_REPORT)


def report_delivery(workspace: Workspace, output_dir: str) -> dict[str, Any] | None:
    """Rank 0's account of its MLflow metrics, said in the stage's log (an outage is worth a warning)."""
    if not workspace.exists(output_dir, DELIVERY_REPORT):
        return None
    report = workspace.read_json(output_dir, DELIVERY_REPORT)
    if report.get("unsent"):
        log.warning(
            "train: MLflow was unreachable at the end; %d metric values were not sent and are kept in %s",
            report["unsent"],
            report.get("unsent_file"),
        )
    elif report.get("outages"):
        log.warning(
            "train: MLflow was unreachable %d time(s) during training; the %d metric values logged "
            "meanwhile were buffered and sent afterwards (%d sent in all, none lost)",
            report["outages"],
            report["sent_late"],
            report["sent"],
        )
    else:
        log.info("train: %d metric values sent to MLflow", report["sent"])
    return report
