"""yolov2/metrics/search_figures.py: the search's figures build headless and show what they claim."""

from __future__ import annotations

import io
import math

from PIL import Image

from yolov2.metrics.figures import figure_png
from yolov2.metrics.search_figures import params_figure, trial_curves_figure

NAN = math.nan


def test_trial_curves_figure_dashes_stopped_trials_and_marks_their_end():
    curves = {
        "trial_000": [0.1, 0.2, 0.3, 0.35],
        "trial_001": [NAN, 0.05],  # stopped early after 2 epochs, validated once
        "trial_002": [NAN, NAN],  # never validated
    }
    stopped = {"trial_000": False, "trial_001": True, "trial_002": True}
    fig = trial_curves_figure(curves, stopped, "map50_voc07", max_epochs=4)
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
    assert set(lines) == set(curves)
    assert lines["trial_000"].get_linestyle() == "-"
    assert lines["trial_001"].get_linestyle() == "--"
    assert lines["trial_000"].get_xdata().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert lines["trial_001"].get_xdata().tolist() == [2.0]  # the NaN epoch is skipped
    assert lines["trial_002"].get_xdata().tolist() == []
    ends = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(ends) == 1 and ends[0].get_xdata().tolist() == [2.0]  # the × at trial_001's last point
    assert [int(t) for t in ax.get_xticks()] == [1, 2, 3, 4]
    assert "2 of 3" in ax.get_title()
    assert "map50_voc07" in ax.get_title()
    assert ax.get_legend() is not None
    png = figure_png(fig)
    assert png.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_trial_curves_figure_with_many_trials_puts_the_legend_outside():
    curves = {f"trial_{i:03d}": [0.01 * i, 0.02 * i] for i in range(40)}
    fig = trial_curves_figure(curves, {name: False for name in curves}, "m", max_epochs=100)
    (ax,) = fig.axes
    assert ax.get_legend() is not None
    assert "0 of 40" in ax.get_title()
    assert len(ax.get_xticks()) <= 15
    assert figure_png(fig, dpi=40).startswith(b"\x89PNG")


def test_params_figure_panels_scales_categories_and_best():
    params = {
        "optim.lr": [1e-4, 1e-3, 1e-2, 3e-3],
        "train.batch_size": [8, 16, 8, 32],
        "optim.name": ["sgd", "adamw", "adamw", None],  # trial 3 lacks it
        "model.anchors": [[[1, 2]], [[3, 4]], [[1, 2]], [[3, 4]]],
    }
    best_metric = [0.2, 0.5, 0.3, NAN]  # trial 3 has no metric
    log_scale = {"optim.lr": True, "train.batch_size": False, "optim.name": False, "model.anchors": False}
    fig = params_figure(params, best_metric, log_scale, "map50_voc07")
    assert len(fig.axes) == len(params)
    by_title = {ax.get_title(): ax for ax in fig.axes}
    assert set(by_title) == set(params)
    assert by_title["optim.lr"].get_xscale() == "log"
    assert by_title["train.batch_size"].get_xscale() == "linear"
    points = by_title["optim.lr"].collections[0].get_offsets()
    assert len(points) == 3  # the NaN metric is skipped
    stars = by_title["optim.lr"].collections[1].get_offsets()
    assert stars.tolist() == [[1e-3, 0.5]]  # the best trial highlighted
    names = [t.get_text() for t in by_title["optim.name"].get_xticklabels()]
    assert names == ["adamw", "sgd"]
    anchors = [t.get_text() for t in by_title["model.anchors"].get_xticklabels()]
    assert anchors == ["[[1, 2]]", "[[3, 4]]"]
    assert figure_png(fig).startswith(b"\x89PNG")


def test_params_figure_with_no_metric_at_all():
    fig = params_figure({"optim.lr": [0.1, 0.01]}, [NAN, NAN], {"optim.lr": True}, "m")
    assert len(fig.axes) == 1
    assert figure_png(fig, dpi=40).startswith(b"\x89PNG")


def test_search_figures_do_not_import_pyplot():
    import subprocess
    import sys

    code = (
        "import sys, math; from yolov2.metrics import search_figures as s; "
        "s.trial_curves_figure({'a': [0.1, 0.2]}, {'a': True}, 'm', 3).savefig('/dev/null', format='png'); "
        "s.params_figure({'x': [1, 2]}, [0.1, math.nan], {'x': True}, 'm').savefig('/dev/null', format='png'); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
