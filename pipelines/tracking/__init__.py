"""MLflow for the stages (the library never imports mlflow): the store, runs, what goes into them, and
training metrics that never wait on the server.

- :mod:`~pipelines.tracking.server`: which store, does it answer, fail-fast HTTP settings, ``setup_mlflow`` (the
  experiment marked as model training), the experiment's page in the UI
- :mod:`~pipelines.tracking.runs`: guarded runs (a dead server holds nothing up), stale runs, environment tags
- :mod:`~pipelines.tracking.params`: params with secrets masked, metrics, artifacts, figures, the final model
- :mod:`~pipelines.tracking.sender`: :class:`MetricSender`, values buffered while the server is down
- :mod:`~pipelines.tracking.rank_zero`: Ray Train rank 0's logger and the driver's delivery report

Callers use the names re-exported here: ``from pipelines import tracking; tracking.setup_mlflow(...)``.

``mlflow`` is imported inside the functions that use it, never at module level: importing it costs
seconds, and Ray workers and ``--help`` that never log should not pay that.
"""

from pipelines.tracking.params import (
    log_artifact_bytes,
    log_figure,
    log_final_model,
    log_metrics,
    log_params,
    mask_secrets,
    safe_params,
)
from pipelines.tracking.rank_zero import (
    DELIVERY_REPORT,
    UNSENT_METRICS,
    RankZeroLogger,
    console,
    report_delivery,
    worker_mlflow_env,
)
from pipelines.tracking.runs import TrackingGuard, end_stale_stage_runs, environment_tags, guarded_run
from pipelines.tracking.sender import Delivery, MetricSender
from pipelines.tracking.server import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    experiment_ui_url,
    fail_fast_mlflow_env,
    mark_model_training,
    mlflow_requests_without_retries,
    server_reachable,
    setup_mlflow,
    tracking_uri_for,
)

__all__ = [
    "DELIVERY_REPORT",
    "EXPERIMENT_KIND_TAG",
    "MODEL_TRAINING_KIND",
    "UNSENT_METRICS",
    "Delivery",
    "MetricSender",
    "RankZeroLogger",
    "TrackingGuard",
    "console",
    "end_stale_stage_runs",
    "environment_tags",
    "experiment_ui_url",
    "fail_fast_mlflow_env",
    "guarded_run",
    "log_artifact_bytes",
    "log_figure",
    "log_final_model",
    "log_metrics",
    "log_params",
    "mask_secrets",
    "mark_model_training",
    "mlflow_requests_without_retries",
    "report_delivery",
    "safe_params",
    "server_reachable",
    "setup_mlflow",
    "tracking_uri_for",
    "worker_mlflow_env",
]
