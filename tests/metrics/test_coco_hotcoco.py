"""The hotcoco backend against pycocotools (the reference), on the cases where evaluators tend to differ.

hotcoco claims bit-identical numbers to pycocotools; it is offered as a backend only because these
tests hold it to that: its 12 stats within 1e-12 of pycocotools' (and in fact equal) on the real
sample, crowd boxes, ``maxDets`` edges, images without ground truth and images without detections;
run directly (``COCO(dict)``, ``loadRes``) and through our category chunks.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from metrics.test_coco import as_coco_json
from yolov2.data.records import ImageRecord
from yolov2.metrics import coco
from yolov2.metrics.coco import STAT_NAMES, coco_evaluate, coco_evaluate_arrays
from yolov2.metrics.detections import DetectionTable
from yolov2.metrics.formats import read_coco_results_arrays, read_ground_truth

hotcoco = pytest.importorskip("hotcoco")

ATOL = 1e-12


def pycocotools_run(gt_json: dict | Path, results: list | Path) -> tuple[np.ndarray, np.ndarray]:
    """(stats[12], precision) of pycocotools, loaded as its users load it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt_json, dict):
            gt = COCO()
            gt.dataset = json.loads(json.dumps(gt_json))  # loading mutates its input
            gt.createIndex()
        else:
            gt = COCO(str(gt_json))
        dt = gt.loadRes(json.loads(json.dumps(results)) if isinstance(results, list) else str(results))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, np.float64), ev.eval["precision"]


def hotcoco_run(gt_json: dict | Path, results: list | Path) -> tuple[np.ndarray, np.ndarray]:
    """(stats[12], precision) of hotcoco used directly, the same way."""
    gt = hotcoco.COCO(json.loads(json.dumps(gt_json)) if isinstance(gt_json, dict) else str(gt_json))
    dt = gt.loadRes(json.loads(json.dumps(results)) if isinstance(results, list) else str(results))
    ev = hotcoco.COCOeval(gt, dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    with contextlib.redirect_stdout(io.StringIO()):
        ev.summarize()
    return np.asarray(ev.stats[:12], np.float64), np.asarray(ev.eval["precision"])


def stats_of(result) -> np.ndarray:
    return np.array([result.stats[k] for k in STAT_NAMES])


def edge_case(
    seed: int,
    num_images: int = 50,
    num_classes: int = 4,
    crowd: float = 0.0,
    no_gt: float = 0.0,
    no_dets: float = 0.0,
    det_counts: tuple[int, ...] = (0, 15),
    score_decimals: int = 2,
) -> tuple[list[ImageRecord], DetectionTable, list[str]]:
    """Random boxes of all three area bins (some exactly on the 32**2 and 96**2 edges).

    crowd, no_gt, no_dets: fractions of crowd boxes, images without ground truth, images without
    detections. det_counts: ``(low, high)`` detections per image drawn uniformly, or more values to
    choose one count from. Detections are noisy copies of the image's boxes (crowd ones included, so
    crowd regions absorb matches) with some wrong classes, plus false positives; coarse scores tie.
    """
    rng = np.random.default_rng(seed)
    records, ids, labels, scores, boxes = [], [], [], [], []
    for i in range(num_images):
        k = 0 if rng.random() < no_gt else int(rng.integers(1, 9))
        xy = np.floor(rng.uniform(0, 250, (k, 2)))
        wh = rng.choice([rng.uniform(2, 150), 32.0, 96.0, rng.uniform(2, 31)], (k, 2))
        b = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        lab = rng.integers(0, num_classes, k)
        iscrowd = rng.random(k) < crowd
        image_id = str(i + 1)
        records.append(ImageRecord(image_id, "t", "", 400, 400, b, lab, np.zeros(k, bool), iscrowd))
        if rng.random() < no_dets:
            continue
        if len(det_counts) == 2:
            n = int(rng.integers(det_counts[0], det_counts[1] + 1))
        else:
            n = int(rng.choice(det_counts))
        n_true = int(rng.integers(0, n + 1)) if k else 0
        src = rng.integers(0, max(k, 1), n_true)
        d_true = b[src].astype(np.float64) + rng.normal(0, 4, (n_true, 4))
        fp_xy = rng.uniform(0, 250, (n - n_true, 2))
        d = np.concatenate([d_true, np.concatenate([fp_xy, fp_xy + rng.uniform(2, 150, (n - n_true, 2))], 1)])
        d = np.concatenate([np.minimum(d[:, :2], d[:, 2:]), np.maximum(d[:, :2], d[:, 2:]) + 1.0], 1)
        true_lab = np.where(rng.random(n_true) < 0.85, lab[src], rng.integers(0, num_classes, n_true))
        ids += [image_id] * n
        labels.append(np.concatenate([true_lab, rng.integers(0, num_classes, n - n_true)]))
        scores.append(np.round(rng.random(n), score_decimals))
        boxes.append(d)
    dets = DetectionTable.from_arrays(
        ids, np.concatenate(labels or [np.zeros(0, np.int64)]), np.concatenate(scores or [np.zeros(0)]),
        np.concatenate(boxes or [np.zeros((0, 4))]),
    )  # fmt: skip
    return records, dets, [f"c{c}" for c in range(num_classes)]


CASES = {
    "crowd_boxes": {"crowd": 0.35},
    "max_dets_edges_one_class": {"num_classes": 1, "det_counts": (1, 10, 100, 101, 150, 250), "score_decimals": 1},
    "max_dets_over_100": {"num_classes": 2, "num_images": 30, "det_counts": (120, 300)},
    "images_without_ground_truth": {"no_gt": 0.4},
    "images_without_detections": {"no_dets": 0.4},
    "all_edges_together": {"crowd": 0.2, "no_gt": 0.25, "no_dets": 0.25, "det_counts": (0, 1, 10, 100, 101, 130)},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_edge_cases_equal_pycocotools(name: str):
    records, dets, names = edge_case(list(CASES).index(name), **CASES[name])
    gt_json, results = as_coco_json(records, dets, names)
    ref, ref_precision = pycocotools_run(gt_json, results)
    assert ((ref > 0) & (ref < 1)).sum() >= 6  # a meaningful case, not all -1, 0 or 1
    direct, direct_precision = hotcoco_run(gt_json, results)
    np.testing.assert_allclose(direct, ref, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(direct, ref)  # bit-identical, as claimed
    np.testing.assert_array_equal(direct_precision, ref_precision)
    for chunks in (1, 3):
        ours = coco_evaluate(records, dets, names, backend="hotcoco", num_chunks=chunks)
        np.testing.assert_allclose(stats_of(ours), ref, rtol=0, atol=ATOL)
        np.testing.assert_array_equal(stats_of(ours), ref)
        reference = coco_evaluate(records, dets, names, backend="pycocotools", num_chunks=chunks)
        np.testing.assert_array_equal(ours.precision, reference.precision)
        np.testing.assert_array_equal(ours.recall, reference.recall)


def test_edge_cases_really_hold_their_edges():
    """The generator makes what the cases are named after (guards against a silently easy case)."""
    records, dets, _ = edge_case(1, **CASES["all_edges_together"])
    per_image = {r.image_id: int((dets.image_id == r.image_id).sum()) for r in records}
    counts = set(per_image.values())
    assert {0, 1, 10, 100}.issubset(counts) and max(counts) > 100
    assert any(r.num_boxes == 0 and per_image[r.image_id] > 0 for r in records)  # false positives only
    assert any(r.num_boxes > 0 and per_image[r.image_id] == 0 for r in records)  # missed entirely
    assert any(r.iscrowd.any() for r in records)


def test_sample_file_equals_pycocotools(shared_data: Path):
    case = shared_data / "metric_cases" / "coco_val2014_sample"
    gt_file, dt_file = case / "instances_sample.json", case / "detections.json"
    ref, ref_precision = pycocotools_run(gt_file, dt_file)
    direct, direct_precision = hotcoco_run(gt_file, dt_file)
    np.testing.assert_array_equal(direct, ref)
    np.testing.assert_array_equal(direct_precision, ref_precision)
    gt = read_ground_truth(gt_file)
    dets = read_coco_results_arrays(dt_file, gt)
    for chunks in (1, 3, 80):
        ours = coco_evaluate_arrays(gt.coco, dets, gt.class_names, gt.category_ids, "hotcoco", num_chunks=chunks)
        np.testing.assert_allclose(stats_of(ours), ref, rtol=0, atol=ATOL)
        np.testing.assert_array_equal(stats_of(ours), ref)
        np.testing.assert_array_equal(ours.precision, ref_precision)


def test_empty_detections_and_empty_categories():
    """No detections at all, and a class with neither boxes nor detections: -1 where pycocotools has -1."""
    records, _, names = edge_case(5, num_images=10, num_classes=3)
    none = DetectionTable.from_arrays([], [], [], np.zeros((0, 4)))
    for dets in (none, DetectionTable.from_arrays(["1"], [0], [0.5], [[0, 0, 10, 10]])):
        ref = coco_evaluate(records, dets, names + ["unused"], backend="pycocotools")
        ours = coco_evaluate(records, dets, names + ["unused"], backend="hotcoco", num_chunks=2)
        np.testing.assert_array_equal(stats_of(ours), stats_of(ref))
        np.testing.assert_array_equal(ours.precision, ref.precision)
        assert np.isnan(ours.per_class_ap[-1])


def test_chunks_in_a_process_pool_are_identical():
    """This process has run hotcoco (its thread pool is up), so the workers must not be forked from it."""
    records, dets, names = edge_case(7, num_images=40, crowd=0.2)
    single = coco_evaluate(records, dets, names, backend="hotcoco")
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as pool:
        pooled = coco_evaluate(records, dets, names, backend="hotcoco", num_chunks=2, map_fn=pool.map)
    assert pooled.num_chunks == 2 and pooled.backend == "hotcoco"
    np.testing.assert_array_equal(stats_of(pooled), stats_of(single))
    np.testing.assert_array_equal(pooled.precision, single.precision)


def test_a_child_forked_after_hotcoco_ran_raises_instead_of_hanging(monkeypatch: pytest.MonkeyPatch):
    """In a forked child the inherited pid differs from its own (simulated: a real one would hang unguarded)."""
    records, dets, names = edge_case(8, num_images=5)
    monkeypatch.setattr(coco, "_hotcoco_pid", os.getpid() + 1)
    with pytest.raises(RuntimeError, match="forkserver"):
        coco_evaluate(records, dets, names, backend="hotcoco")
    monkeypatch.setattr(coco, "_hotcoco_pid", None)
    assert coco_evaluate(records, dets, names, backend="hotcoco").backend == "hotcoco"
    assert coco._hotcoco_pid == os.getpid()
