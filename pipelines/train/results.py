"""The per-epoch results table in the train stage's output and its MLflow run.

Rank 0 rewrites ``results.parquet`` and ``results.csv`` at the end of every epoch (atomic writes: a reader
sees the last complete version while training runs); the driver writes them once more from the final
checkpoint's rows and logs them, with ``results.png`` (the curves), as MLflow artifacts.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from pipelines.dag import StageContext
from pipelines.workspace import Workspace
from yolov2.engine.results import EpochResult, results_csv, results_table
from yolov2.metrics.figures import figure_png, results_figure

RESULTS_PARQUET, RESULTS_CSV, RESULTS_FIGURE = "results.parquet", "results.csv", "results.png"


def write_results(workspace: Workspace, output_dir: str, rows: Sequence[EpochResult]) -> pa.Table:
    """``results.parquet`` and ``results.csv`` of ``rows`` in ``output_dir``; returns the table."""
    table = results_table(rows)
    workspace.write_parquet(table, output_dir, RESULTS_PARQUET)
    workspace.write_bytes(results_csv(rows).encode(), output_dir, RESULTS_CSV)
    return table


def publish_results(ctx: StageContext, rows: Sequence[EpochResult]) -> None:
    """The final table and its figure in the stage's output, and the three files as MLflow artifacts."""
    table = write_results(ctx.workspace, ctx.output_dir, rows)
    figure = results_figure(table.to_pydict())
    ctx.workspace.write_bytes(figure_png(figure), ctx.output_dir, RESULTS_FIGURE)
    for name in (RESULTS_PARQUET, RESULTS_CSV):
        ctx.log_artifact_bytes(ctx.workspace.read_bytes(ctx.output_dir, name), name)
    ctx.log_figure(figure, RESULTS_FIGURE)
