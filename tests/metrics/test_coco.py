"""yolov2/metrics/coco.py against pycocotools and faster-coco-eval run directly (the references).

The references load JSON the way their users do (``COCO(file)``, ``loadRes``, evaluate, accumulate,
summarize); ours goes through records / arrays, category chunks and our own summary arithmetic.
"""

from __future__ import annotations

import contextlib
import io
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from yolov2.data.records import ImageRecord
from yolov2.errors import ConfigError, DatasetError
from yolov2.metrics.coco import (
    STAT_NAMES,
    balanced_category_chunks,
    coco_evaluate,
    coco_evaluate_arrays,
    evaluate_category_chunk,
    to_coco_arrays,
)
from yolov2.metrics.detections import DetectionTable
from yolov2.metrics.formats import read_coco_results_arrays, read_detections, read_ground_truth

faster_coco_eval = pytest.importorskip("faster_coco_eval")


def pycocotools_run(gt_json, results) -> tuple[np.ndarray, np.ndarray]:
    """(stats[12], precision) of pycocotools on a ground-truth dict/path and a results list/path."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt_json, dict):
            gt = COCO()
            gt.dataset = gt_json
            gt.createIndex()
        else:
            gt = COCO(str(gt_json))
        dt = gt.loadRes(results if isinstance(results, list) else str(results))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats), ev.eval["precision"]


def faster_run(gt_json, results) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(gt_json if isinstance(gt_json, dict) else str(gt_json))
    dt = gt.loadRes(results if isinstance(results, list) else str(results))
    ev = COCOeval_faster(gt, dt, "bbox", print_function=lambda *a: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.asarray(ev.stats[:12])


def stats_of(result) -> np.ndarray:
    return np.array([result.stats[k] for k in STAT_NAMES])


@pytest.fixture(scope="module")
def sample(shared_data: Path):
    case = shared_data / "metric_cases" / "coco_val2014_sample"
    gt = read_ground_truth(case / "instances_sample.json")
    return case, gt


def test_sample_file_values_give_exactly_pycocotools(sample):
    case, gt = sample
    ref_stats, ref_precision = pycocotools_run(case / "instances_sample.json", case / "detections.json")
    dets = read_coco_results_arrays(case / "detections.json", gt)
    assert len(dets.score) == 734 and len(gt.coco.category) == 830
    for chunks in (1, 3, 80):
        ours = coco_evaluate_arrays(gt.coco, dets, gt.class_names, gt.category_ids, "pycocotools", num_chunks=chunks)
        np.testing.assert_array_equal(stats_of(ours), ref_stats)
        np.testing.assert_array_equal(ours.precision, ref_precision)
    fast_ref = faster_run(case / "instances_sample.json", case / "detections.json")
    for chunks in (1, 3):
        ours = coco_evaluate_arrays(
            gt.coco, dets, gt.class_names, gt.category_ids, "faster_coco_eval", num_chunks=chunks
        )
        np.testing.assert_array_equal(stats_of(ours), fast_ref)
        np.testing.assert_allclose(stats_of(ours), ref_stats, rtol=0, atol=1e-12)  # the two backends agree


def test_records_path_equals_pycocotools_on_the_converted_file(sample):
    """Through records, boxes are float32 and the area is w * h (documented): pycocotools on a JSON
    with exactly those two changes gives exactly our numbers."""
    case, gt = sample
    dets = read_detections(case / "detections.json", gt)
    raw = json.loads((case / "instances_sample.json").read_text())
    for ann in raw["annotations"]:
        x, y, w, h = ann["bbox"]
        b = np.array([x, y, x + w, y + h], np.float32).astype(np.float64)
        ann["bbox"] = [b[0], b[1], b[2] - b[0], b[3] - b[1]]
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    results = json.loads((case / "detections.json").read_text())
    ref_stats, _ = pycocotools_run(raw, results)
    for backend in ("pycocotools", "faster_coco_eval"):
        single = coco_evaluate(gt.records, dets, gt.class_names, backend=backend)
        chunked = coco_evaluate(gt.records, dets, gt.class_names, backend=backend, num_chunks=4)
        np.testing.assert_array_equal(stats_of(single), stats_of(chunked))
        np.testing.assert_allclose(stats_of(single), ref_stats, rtol=0, atol=1e-12)
        if backend == "pycocotools":
            np.testing.assert_array_equal(stats_of(single), ref_stats)


def random_coco_case(seed: int, num_images: int = 60, num_classes: int = 6):
    rng = np.random.default_rng(seed)
    records, ids, labels, scores, boxes = [], [], [], [], []
    for i in range(num_images):
        k = int(rng.integers(0, 8))
        xy = rng.uniform(0, 200, (k, 2))
        wh = rng.uniform(2, 150, (k, 2))  # small, medium and large areas
        b = np.concatenate([xy, xy + wh], 1)
        lab = rng.integers(0, num_classes, k)
        records.append(ImageRecord(str(i + 1), "t", "", 400, 400, b, lab, np.zeros(k, bool), rng.random(k) < 0.1))
        n = int(rng.integers(0, 15))
        src = rng.integers(0, max(k, 1), n)
        d = b[src] + rng.normal(0, 6, (n, 4)) if k else rng.uniform(0, 200, (n, 4))
        d = np.concatenate([np.minimum(d[:, :2], d[:, 2:]), np.maximum(d[:, :2], d[:, 2:])], 1)
        ids += [str(i + 1)] * n
        labels.append(np.where(rng.random(n) < 0.85, lab[src] if k else 0, rng.integers(0, num_classes, n)))
        scores.append(np.round(rng.random(n), 2))
        boxes.append(d)
    dets = DetectionTable.from_arrays(ids, np.concatenate(labels), np.concatenate(scores), np.concatenate(boxes))
    return records, dets, [f"c{c}" for c in range(num_classes)]


def as_coco_json(records, dets, names):
    images, anns = [], []
    for r in records:
        images.append({"id": int(r.image_id), "width": r.width, "height": r.height})
        for b, lab, crowd in zip(r.boxes.astype(np.float64), r.labels, r.iscrowd):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": int(r.image_id), "category_id": int(lab) + 1,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": int(crowd)})  # fmt: skip
    results = [
        {"image_id": int(i), "category_id": int(c) + 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s}
        for i, c, b, s in zip(dets.image_id, dets.label.tolist(), dets.boxes.tolist(), dets.score.tolist())
    ]
    cats = [{"id": c + 1, "name": n} for c, n in enumerate(names)]
    return {"images": images, "annotations": anns, "categories": cats}, results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_cases_both_backends_chunked_and_single(seed: int):
    records, dets, names = random_coco_case(seed)
    gt_json, results = as_coco_json(records, dets, names)
    ref, _ = pycocotools_run(json.loads(json.dumps(gt_json)), json.loads(json.dumps(results)))
    fast = faster_run(json.loads(json.dumps(gt_json)), json.loads(json.dumps(results)))
    assert (ref > 0).sum() >= 10  # a meaningful case, not all -1 or 0
    for backend, backend_ref in (("pycocotools", ref), ("faster_coco_eval", fast)):
        single = coco_evaluate(records, dets, names, backend=backend)
        np.testing.assert_array_equal(stats_of(single), backend_ref)
        for chunks in (2, 5):
            chunked = coco_evaluate(records, dets, names, backend=backend, num_chunks=chunks)
            np.testing.assert_array_equal(stats_of(chunked), stats_of(single))
            np.testing.assert_array_equal(chunked.precision, single.precision)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12)


def test_chunks_in_a_process_pool_are_identical():
    records, dets, names = random_coco_case(7, num_images=40)
    single = coco_evaluate(records, dets, names, backend="faster_coco_eval")
    with ProcessPoolExecutor(2) as pool:
        pooled = coco_evaluate(records, dets, names, backend="faster_coco_eval", num_chunks=2, map_fn=pool.map)
    assert pooled.num_chunks == 2
    np.testing.assert_array_equal(stats_of(pooled), stats_of(single))
    np.testing.assert_array_equal(pooled.precision, single.precision)


def test_chunk_function_gets_only_arrays_and_filters_its_categories():
    records, dets, names = random_coco_case(3)
    gt, cd = to_coco_arrays(records, dets, len(names))
    whole = evaluate_category_chunk(gt, cd, np.arange(1, 7), "pycocotools")
    part = evaluate_category_chunk(gt, cd, [5, 2], "pycocotools")  # full arrays in, unsorted ids
    assert part.category_ids.tolist() == [2, 5]
    np.testing.assert_array_equal(part.precision, whole.precision[:, :, [1, 4]])
    np.testing.assert_array_equal(part.recall, whole.recall[:, [1, 4]])


def test_ground_truth_fed_back_as_detections_gives_ap_one(sample):
    _, gt = sample
    records = gt.records
    ids = [r.image_id for r in records for _ in range(r.num_boxes)]
    crowd = np.concatenate([r.iscrowd for r in records])
    dets = DetectionTable.from_arrays(
        ids, np.concatenate([r.labels for r in records]), np.linspace(1.0, 0.5, len(ids)),
        np.concatenate([r.boxes for r in records]),
    ).take(~crowd)  # fmt: skip
    for backend in ("pycocotools", "faster_coco_eval"):
        result = coco_evaluate(records, dets, gt.class_names, backend=backend)
        # pycocotools' precision is tp / (tp + fp + spacing(1)): 1 - 2e-16 for a perfect class
        for key in ("AP", "AP50", "AP75"):
            assert result.stats[key] == pytest.approx(1.0, abs=1e-12)
        assert result.stats["AR100"] == 1.0
        has_gt = ~np.isnan(result.per_class_ap)
        assert has_gt.sum() >= 40
        np.testing.assert_allclose(result.per_class_ap[has_gt], 1.0, rtol=0, atol=1e-12)


def test_false_positives_on_an_image_without_ground_truth_lower_precision():
    records = [
        ImageRecord("1", "t", "", 100, 100, [[0, 0, 40, 40]], [0], [False], [False]),
        ImageRecord("2", "t", "", 100, 100),
    ]
    tp = DetectionTable.from_arrays(["1"], [0], [0.9], [[0, 0, 40, 40]])
    assert coco_evaluate(records, tp, ["x"], backend="pycocotools").stats["AP"] == pytest.approx(1.0, abs=1e-12)
    with_fp = DetectionTable.concat([tp, DetectionTable.from_arrays(["2"], [0], [0.95], [[0, 0, 40, 40]])])
    result = coco_evaluate(records, with_fp, ["x"], backend="pycocotools")
    assert result.stats["AP"] == pytest.approx(0.5)  # precision 1/2 at every recall threshold
    assert result.stats["AR100"] == 1.0


def test_unknown_image_or_class_is_a_clear_error():
    records, dets, names = random_coco_case(0, num_images=5)
    with pytest.raises(DatasetError, match="'999'"):
        coco_evaluate(records, DetectionTable.from_arrays(["999"], [0], [0.5], [[0, 0, 5, 5]]), names)
    with pytest.raises(DatasetError, match=r"label\(s\) \[6\]"):
        coco_evaluate(records, DetectionTable.from_arrays(["1"], [6], [0.5], [[0, 0, 5, 5]]), names)
    gt, cd = to_coco_arrays(records, dets, len(names))
    with pytest.raises(DatasetError, match="category"):
        coco_evaluate_arrays(gt, cd, names[:-1], list(range(1, len(names))))
    with pytest.raises(ConfigError, match="backend"):
        coco_evaluate(records, dets, names, backend="detectron2")


def test_balanced_chunks_partition_the_categories():
    ids = np.arange(1, 81) * 3
    work = np.random.default_rng(0).integers(0, 1000, 80).astype(float)
    chunks = balanced_category_chunks(work, ids, 3)
    assert len(chunks) == 3
    assert sorted(np.concatenate(chunks).tolist()) == ids.tolist()
    assert all((np.diff(c) > 0).all() for c in chunks)
    loads = [work[np.searchsorted(ids, c)].sum() for c in chunks]
    assert max(loads) - min(loads) <= work.max()
    assert len(balanced_category_chunks(work[:2], ids[:2], 5)) == 2
