"""The anchors stage on real Ray, against the single-process library run and plain-loop references.

References: box shapes read from ``train-index.parquet`` with a Python loop over its rows; mean IoU
of boxes with anchors computed by a loop; clustering by the sequential, single-process
``kmeans_anchors`` / ``iou_table`` with the same seed (the stage runs restarts concurrently over Ray
tasks, and must give the very same floats).
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import anchors as stage
from pipelines import prepare, shard
from pipelines.config import load_config
from pipelines.dag import run_stage
from pipelines.workspace import Workspace
from yolov2 import anchors as A
from yolov2.errors import ConfigError
from yolov2.progress import Progress

TIMING_FIELDS = {"seconds", "clustering_seconds"}
GENERATED = ["data.synthetic.num_train=30", "data.synthetic.num_val=2", "data.synthetic.num_test=2"]


def _run(ws_root, overrides: list[str], *, force: bool = False, tracking: bool = False):
    cfg = load_config(None, [f"workspace={ws_root}", *overrides])
    ws = Workspace.open(cfg.workspace)
    prepared = run_stage(prepare.SPEC, cfg, ws, tracking_enabled=False)
    sharded = run_stage(shard.SPEC, cfg, ws, upstream={"prepare": prepared}, tracking_enabled=False)
    result = run_stage(stage.SPEC, cfg, ws, upstream={"shard": sharded}, force=force, tracking_enabled=tracking)
    return cfg, ws, sharded, result


def _loop_shapes(index_path, include_difficult: bool) -> np.ndarray:
    """Normalised (w, h) of every non-crowd box, row by row, box by box."""
    out = []
    for row in pq.read_table(index_path).to_pylist():
        for box in row["boxes"]:
            if box["iscrowd"] or (box["difficult"] and not include_difficult):
                continue
            out.append(((box["x2"] - box["x1"]) / row["width"], (box["y2"] - box["y1"]) / row["height"]))
    return np.array(out, dtype=np.float64)


def _loop_mean_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    total = 0.0
    for w, h in wh.tolist():
        best = 0.0
        for aw, ah in np.asarray(anchors).tolist():
            inter = min(w, aw) * min(h, ah)
            best = max(best, inter / (w * h + aw * ah - inter))
        total += best
    return total / len(wh)


def _doc(ws: Workspace, result) -> dict:
    return json.loads(ws.local_path(result.output_dir, "anchors.json").read_text())


def _check_stage_equals_single_process(cfg, ws, sharded, result) -> dict:
    a = cfg.anchors
    doc = _doc(ws, result)
    wh = _loop_shapes(ws.local_path(sharded.output_dir, "train-index.parquet"), a.include_difficult)
    assert doc["num_boxes"] == len(wh) == result.manifest["num_boxes"]

    bs = doc["block_size"]
    expected = A.kmeans_anchors(wh, a.k, a.seed, a.n_init, a.max_iter, a.update, block_size=bs)
    np.testing.assert_array_equal(np.array(doc["anchors_normalised"]), expected.anchors)  # bit for bit
    assert doc["mean_iou"] == expected.mean_iou
    assert doc["iterations"] == expected.iterations and doc["restart"] == expected.restart
    assert doc["counts"] == expected.counts.tolist()

    ks = [row["k"] for row in doc["iou_table"]]
    assert ks == list(range(1, 11))
    table = A.iou_table(wh, ks, a.seed, a.n_init, a.max_iter, a.update, mapper=A.LocalMapper(wh, block_size=bs))
    assert {row["k"]: row["mean_iou"] for row in doc["iou_table"]} == table
    assert table[a.k] == doc["mean_iou"]
    assert all(x < y for x, y in zip(ks, ks[1:])) and table[10] > table[1]

    # the library's default block size sums in another order: same clustering, to rounding
    default = A.kmeans_anchors(wh, a.k, a.seed, a.n_init, a.max_iter, a.update)
    np.testing.assert_allclose(np.array(doc["anchors_normalised"]), default.anchors, rtol=1e-9)

    grid = np.array(doc["anchors"])
    assert grid.shape == (a.k, 2)
    np.testing.assert_allclose(grid, np.array(doc["anchors_normalised"]) * cfg.train.input_size / 32, rtol=1e-12)
    areas = grid[:, 0] * grid[:, 1]
    assert np.all(np.diff(areas) >= 0)
    assert abs(doc["mean_iou"] - _loop_mean_iou(wh, np.array(doc["anchors_normalised"]))) < 1e-12
    assert doc["k"] == a.k and doc["input_size"] == cfg.train.input_size and not doc["pinned"]
    pasted = [float(v) for v in doc["darknet"].removeprefix("anchors=").replace(" ", "").split(",")]
    np.testing.assert_allclose(np.array(pasted).reshape(-1, 2), grid, rtol=1e-5)

    m = result.manifest
    assert m["anchors"] == doc["anchors"] and m["mean_iou"] == doc["mean_iou"] and m["k"] == a.k
    assert m["input_size"] == cfg.train.input_size and m["files"] == {"anchors": "anchors.json", "plot": "anchors.png"}
    png = ws.local_path(result.output_dir, "anchors.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.size[0] > 400 and image.size[1] > 200
    return doc


def test_generated_equals_single_process_cached_and_forced(ray_local, tmp_path, monkeypatch, capsys):
    overrides = [*GENERATED, "anchors.partitions=3", "anchors.n_init=2", "train.input_size=416"]
    monkeypatch.setattr(stage, "Progress", functools.partial(Progress, interval=0))  # a line per finished run
    cfg, ws, sharded, result = _run(tmp_path / "ws", overrides)
    doc = _check_stage_equals_single_process(cfg, ws, sharded, result)
    assert doc["partitions"] == 3  # the map really ran over several partitions
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[anchors]")]
    assert lines[0] == "[anchors] k-means 0/20 runs (0%) elapsed 0:00:00"  # k = 1..10, two restarts each
    assert any(
        re.fullmatch(
            r"\[anchors\] k-means \d+/20 runs \(\d+%\) [\d.]+ runs/s, elapsed \d+:\d\d:\d\d, "
            r"ETA 0:\d\d:\d\d",
            line,
        )
        for line in lines
    ), lines
    assert lines[-1].startswith("[anchors] k-means 20/20 runs (100%)")

    _, _, _, cached = _run(tmp_path / "ws", overrides)
    assert cached.cached and cached.fingerprint == result.fingerprint
    _, _, _, forced = _run(tmp_path / "ws", overrides, force=True)
    assert not forced.cached
    again = _doc(ws, forced)
    assert {k: v for k, v in again.items() if k not in TIMING_FIELDS} == {
        k: v for k, v in doc.items() if k not in TIMING_FIELDS
    }


def test_voc100_equals_single_process(ray_local, tmp_path, shared_data):
    overrides = [
        "data.kind=voc",
        f"data.root={shared_data / 'voc100'}",
        "data.splits={train: [test]}",
        "anchors.include_difficult=false",
    ]
    cfg, ws, sharded, result = _run(tmp_path / "ws", overrides)
    doc = _check_stage_equals_single_process(cfg, ws, sharded, result)
    assert doc["partitions"] == cfg.anchors.partitions == 4
    with_difficult = _loop_shapes(ws.local_path(sharded.output_dir, "train-index.parquet"), True)
    assert len(with_difficult) > doc["num_boxes"]  # voc100 has difficult boxes, and they were left out


def test_restarts_run_concurrently_and_equal_sequential(ray_local, monkeypatch):
    wh = np.random.default_rng(3).lognormal(-2.0, 0.7, (1500, 2)).clip(0.005, 1.0)
    parts = stage.RayPartitions.put(wh, 3, block_size=256)
    spans: list[tuple[float, float, int]] = []
    real_lloyd = A.lloyd

    def timed_lloyd(*args, **kwargs):
        t0 = time.perf_counter()
        out = real_lloyd(*args, **kwargs)
        spans.append((t0, time.perf_counter(), threading.get_ident()))
        return out

    monkeypatch.setattr(A, "lloyd", timed_lloyd)
    got = stage.parallel_kmeans(wh, parts, [4, 6], seed=7, n_init=3)
    monkeypatch.setattr(A, "lloyd", real_lloyd)
    assert len(spans) == 6 and len({s[2] for s in spans}) > 1
    assert max(s[0] for s in spans) < min(s[1] for s in spans)  # all six Lloyd loops were running at once

    for k in (4, 6):
        expected = A.kmeans_anchors(wh, k, seed=7, n_init=3, block_size=256)
        np.testing.assert_array_equal(got[k].anchors, expected.anchors)
        assert got[k].mean_iou == expected.mean_iou and got[k].history == expected.history
        assert got[k].restart == expected.restart
    # the mapper alone also drives the library's own (sequential) driver
    via_mapper = A.kmeans_anchors(wh, 6, seed=7, n_init=3, mapper=stage.RayMapper(parts))
    np.testing.assert_array_equal(via_mapper.anchors, got[6].anchors)


def test_empty_cluster_reseed_and_median_update_over_ray(ray_local, monkeypatch):
    """Shapes on which a cluster empties during Lloyd (found by search: seed 684), so the farthest-box
    tasks run; and the median update, whose values travel back from the tasks."""
    rng = np.random.default_rng(684)
    wh = np.exp(rng.uniform(np.log(0.005), 0.0, (int(rng.integers(10, 40)), 2)))
    parts = stage.RayPartitions.put(wh, 2, block_size=8)
    assert len(parts.bounds) == 2
    calls = []
    real_farthest = stage.RayMapper.farthest

    def counted(self, centroids, count):
        calls.append(count)
        return real_farthest(self, centroids, count)

    monkeypatch.setattr(stage.RayMapper, "farthest", counted)
    for update in ("mean", "median"):
        got = stage.parallel_kmeans(wh, parts, [6], seed=684, n_init=1, update=update)[6]
        expected = A.kmeans_anchors(wh, 6, seed=684, n_init=1, update=update, block_size=8)
        np.testing.assert_array_equal(got.anchors, expected.anchors)
        assert got.history == expected.history and got.mean_iou == expected.mean_iou
        if update == "mean":
            assert calls, "no cluster emptied: the re-seed path was not exercised"


def test_pinned_anchors_skip_clustering(ray_local, tmp_path, monkeypatch):
    def no_clustering(*args, **kwargs):
        raise AssertionError("clustering ran although anchors are pinned")

    monkeypatch.setattr(stage, "parallel_kmeans", no_clustering)
    pinned = [[1.3221, 1.73145], [5.05587, 8.09892], [3.19275, 4.00944]]
    cfg, ws, sharded, result = _run(tmp_path / "ws", [*GENERATED, f"anchors.pinned={pinned}"])
    doc = _doc(ws, result)
    assert doc["pinned"] and result.manifest["pinned"]
    assert doc["anchors"] == pinned == result.manifest["anchors"]  # as given, order kept
    assert doc["k"] == 3 and doc["iou_table"] == [] and doc["iterations"] == 0
    wh = _loop_shapes(ws.local_path(sharded.output_dir, "train-index.parquet"), True)
    normalised = np.array(pinned) * 32 / cfg.train.input_size
    np.testing.assert_allclose(doc["anchors_normalised"], normalised, rtol=1e-12)
    assert abs(doc["mean_iou"] - _loop_mean_iou(wh, normalised)) < 1e-12
    assert ws.local_path(result.output_dir, "anchors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(ConfigError, match="anchors.pinned"):
        _run(tmp_path / "ws", [*GENERATED, "anchors.pinned=[[1.0, -2.0]]"])


def test_k_above_distinct_shapes_is_a_clear_error(ray_local, tmp_path):
    with pytest.raises(ConfigError, match=r"anchors.k=200 .*distinct"):
        _run(tmp_path / "ws", [*GENERATED, "anchors.k=200"])


def test_mlflow_run_has_metrics_and_plot(ray_local, tmp_path):
    import mlflow

    from pipelines import tracking

    ws = Workspace.open(tmp_path / "ws")
    tracking.setup_mlflow(None, "test", ws)
    _, _, _, result = _run(tmp_path / "ws", [*GENERATED, "anchors.n_init=1"], tracking=True)
    run = mlflow.get_run(result.run_id)
    doc = _doc(ws, result)
    assert run.data.metrics["mean_iou"] == pytest.approx(doc["mean_iou"])
    assert run.data.metrics["iterations"] == doc["iterations"]
    assert run.data.metrics["num_boxes"] == doc["num_boxes"]
    assert run.data.params["anchors.k"] == "5"
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "mean_iou_by_k")
    assert sorted(m.step for m in history) == list(range(1, 11))
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id)}
    assert {"anchors.png", "anchors.json"} <= artifacts
    local = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="anchors.png", dst_path=str(tmp_path / "dl")
    )
    assert Path(local).read_bytes() == ws.local_path(result.output_dir, "anchors.png").read_bytes()
