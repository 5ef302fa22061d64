"""Matplotlib figures of a hyperparameter search: every trial's validation curve, and each searched param
against the trial's best metric.

Same conventions as :mod:`yolov2.metrics.figures`: ``matplotlib.figure.Figure`` directly, never ``pyplot``
(no global state, headless, safe in Ray workers); render with :func:`yolov2.metrics.figures.figure_png`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

MANY_TRIALS = 12  # above this the curves' legend moves outside the axes, in columns of small type


def trial_curves_figure(
    curves: Mapping[str, Sequence[float]], stopped: Mapping[str, bool], metric_name: str, max_epochs: int
) -> Figure:
    """The metric against epoch (1-based) for every trial, labelled by trial name. Trials stopped early (ASHA)
    are dashed with an × at their last validated point, so the pruning is visible at a glance; epochs without
    validation (NaN or None) are skipped and the line joins the validated ones."""
    n_stopped = sum(bool(stopped.get(name, False)) for name in curves)
    many = len(curves) > MANY_TRIALS
    fig = Figure(figsize=(9.5 if many else 7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, values in curves.items():
        y = np.array([math.nan if v is None else v for v in values], np.float64)
        epochs = np.arange(1, len(y) + 1, dtype=np.float64)
        shown = np.isfinite(y)
        is_stopped = bool(stopped.get(name, False))
        (line,) = ax.plot(
            epochs[shown], y[shown], ls="--" if is_stopped else "-", marker="o", ms=2.5, lw=1.1, label=name
        )
        if is_stopped and shown.any():
            ax.plot(epochs[shown][-1], y[shown][-1], marker="x", ms=8, mew=2, color=line.get_color(), ls="none")
    ax.set_xlim(0.5, max(max_epochs, 1) + 0.5)
    ax.set_xticks(_integer_ticks(max(max_epochs, 1)))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric_name)
    ax.grid(alpha=0.3)
    ax.set_title(f"{metric_name} by epoch: {n_stopped} of {len(curves)} trials stopped early (dashed, ×)", fontsize=10)
    if curves:
        if many:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=6, ncol=math.ceil(len(curves) / 30))
        else:
            ax.legend(fontsize=7, loc="best")
    return fig


def params_figure(
    params: Mapping[str, Sequence[Any]],
    best_metric: Sequence[float],
    log_scale: Mapping[str, bool],
    metric_name: str,
) -> Figure:
    """One small scatter panel per param: its value in each trial (x) against the trial's best metric (y),
    to see which values the good trials share. Log x where ``log_scale[param]`` (learning rates and decays
    span decades); non-numeric values (strings, lists) become categories; trials without a metric (NaN) or
    without the param (None) are skipped; the best trial is a star in every panel."""
    metric = np.array([math.nan if v is None else v for v in best_metric], np.float64)
    finite = np.isfinite(metric)
    best = int(np.argmax(np.where(finite, metric, -np.inf))) if finite.any() else None
    n = max(1, len(params))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols, 2.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (key, values) in zip(axes.flat, params.items()):
        keep = [i for i, v in enumerate(values) if i < len(metric) and finite[i] and v is not None]
        numeric = all(_is_number(values[i]) for i in keep)
        if numeric:
            x = np.array([float(values[i]) for i in keep], np.float64)
        else:
            categories = sorted({str(values[i]) for i in keep})
            position = {c: p for p, c in enumerate(categories)}
            x = np.array([position[str(values[i])] for i in keep], np.float64)
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right", fontsize=6)
            ax.set_xlim(-0.5, len(categories) - 0.5)
        y = metric[keep]
        ax.scatter(x, y, s=18, alpha=0.75, color="tab:blue")
        if best is not None and best in keep:
            j = keep.index(best)
            ax.scatter(x[j : j + 1], y[j : j + 1], s=140, marker="*", color="tab:orange", edgecolors="black",
                       linewidths=0.6, zorder=3)  # fmt: skip
        if numeric and log_scale.get(key, False):
            ax.set_xscale("log" if (x > 0).all() else "symlog")  # symlog: a zero (e.g. no decay) still shows
            ax.xaxis.set_minor_formatter(NullFormatter())  # a range under a decade labels every minor tick
        ax.set_title(key, fontsize=9)
        ax.set_ylabel(metric_name, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params) :]:
        fig.delaxes(ax)  # not just hidden: fig.axes then holds exactly one panel per param
    fig.suptitle(f"Best {metric_name} per trial against each searched param (star: the best trial)", fontsize=10)
    return fig


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _integer_ticks(max_epochs: int, most: int = 15) -> list[int]:
    """Whole epochs, thinned to at most ``most`` ticks for long runs."""
    step = max(1, math.ceil(max_epochs / most))
    return list(range(1, max_epochs + 1, step))
