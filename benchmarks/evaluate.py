"""COCO mAP on a COCO-sized case: our category-parallel metric (2 workers) against single-process
pycocotools and faster-coco-eval, measured in the same run; plus the VOC metric on the same case.

Prints one JSON object. The case is generated with a fixed seed: 5,000 images of 300..640 pixels,
Poisson(7) ground-truth boxes each over 80 categories, and 20..100 detections per image: noisy
copies of the ground truth (10 % with a wrong class) plus random false positives; scores rounded
to 3 decimals so that ties occur as in real score files.

What is timed (wall clock and CPU, everything in memory, no JSON parsing):

* pycocotools / faster-coco-eval ("baselines"): from the ground-truth dict and the results list to
  the 12 stats: ``COCO()`` + index, ``loadRes``, ``evaluate``, ``accumulate``, ``summarize``. They
  run in a fresh subprocess that imports nothing but NumPy and the library (no torch: a big heap
  makes Python's garbage collector slow down their object-heavy loading), which is their best case;
  their inputs are deep-copied before each clock starts, since loading mutates them.
* ours: from the records and the detection table to the stats, in this process (which imports
  torch through ``yolov2``): conversion to arrays, a fresh ``ProcessPoolExecutor(workers)``, the
  category chunks evaluated in it with faster-coco-eval, assembly and summary.
* VOC: ``voc_evaluate`` (VOC2010+ AP at IoU 0.5) on the same records and detections, one process.

Timings are medians of ``--repeats`` runs (pycocotools: one run). On a shared machine wall-clock
times depend on what else runs; CPU seconds do not: for ours with workers the CPU figure is the
critical path (this process plus the slowest chunk in its worker), the wall time it would take with
the cores to itself. ``identical``: max |difference| of the 12 stats (ours vs faster-coco-eval is
exact; faster-coco-eval vs pycocotools differs by float rounding, ~1e-16). The JSON states the CPU's kind
(``cpu_capability``, ``native_bf16``) and the worker processes ours ran with (``threads``).

    python benchmarks/evaluate.py [--images 5000] [--workers 2] [--repeats 3] [--skip-pycocotools]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import NO_MODEL, machine_facts  # noqa: E402  (no torch: the baseline subprocesses import this file)

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def make_case(
    num_images: int = 5000, num_classes: int = 80, mean_boxes: float = 7.0, max_dets: int = 100, seed: int = 0
):
    """Generated records (float32 boxes, as records store them) and a detection table around them."""
    from yolov2.data.records import ImageRecord
    from yolov2.metrics.detections import DetectionTable

    rng = np.random.default_rng(seed)
    records = []
    ids, labels, scores, boxes = [], [], [], []
    for i in range(num_images):
        w, h = (int(v) for v in rng.integers(300, 641, 2))
        k = int(rng.poisson(mean_boxes))
        bw, bh = rng.uniform(4, 0.6 * w, k), rng.uniform(4, 0.6 * h, k)
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        gt = np.stack([x, y, x + bw, y + bh], 1).astype(np.float32)
        lab = rng.integers(0, num_classes, k)
        image_id = str(100000 + i)
        records.append(
            ImageRecord(image_id, "val", f"{image_id}.jpg", w, h, gt, lab, np.zeros(k, bool), np.zeros(k, bool))
        )

        n = int(rng.integers(20, max_dets + 1))
        n_true = min(n, int(rng.integers(0, 4 * k + 1))) if k else 0
        src = rng.integers(0, max(k, 1), n_true)
        b = gt[src].astype(np.float64)
        size = np.concatenate([b[:, 2:] - b[:, :2]] * 2, axis=1)
        b = b + rng.normal(0.0, 0.08, (n_true, 4)) * size
        lab_true = np.where(rng.random(n_true) < 0.1, rng.integers(0, num_classes, n_true), lab[src])
        fw, fh = rng.uniform(4, 0.5 * w, n - n_true), rng.uniform(4, 0.5 * h, n - n_true)
        fx, fy = rng.uniform(0, w - fw), rng.uniform(0, h - fh)
        b = np.concatenate([b, np.stack([fx, fy, fx + fw, fy + fh], 1)])
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1.0)
        s = np.concatenate([rng.uniform(0.3, 1.0, n_true), rng.uniform(0.0, 0.7, n - n_true)])
        ids += [image_id] * n
        labels.append(np.concatenate([lab_true, rng.integers(0, num_classes, n - n_true)]))
        scores.append(np.round(s, 3))
        boxes.append(b)
    dets = DetectionTable.from_arrays(ids, np.concatenate(labels), np.concatenate(scores), np.concatenate(boxes))
    return records, dets


def to_coco_json(records, dets, num_classes: int) -> tuple[dict, list]:
    """The same case as a pycocotools ground-truth dict and results list (what the baselines load)."""
    images, anns = [], []
    for r in records:
        images.append({"id": int(r.image_id), "width": r.width, "height": r.height, "file_name": r.path})
        for b, lab in zip(r.boxes.astype(np.float64).tolist(), r.labels.tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": int(r.image_id), "category_id": lab + 1,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
    cats = [{"id": c + 1, "name": f"class{c}"} for c in range(num_classes)]
    xywh = np.concatenate([dets.boxes[:, :2], dets.boxes[:, 2:] - dets.boxes[:, :2]], axis=1)
    results = [
        {"image_id": int(i), "category_id": int(c) + 1, "bbox": b, "score": s}
        for i, c, b, s in zip(dets.image_id.tolist(), dets.label.tolist(), xywh.tolist(), dets.score.tolist())
    ]
    return {"images": images, "annotations": anns, "categories": cats}, results


# --- baselines (run in a subprocess without yolov2/torch) -------------------------------------------


def run_pycocotools(gt: dict, results: list) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12], np.float64)


def run_faster(gt: dict, results: list) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(gt)
    coco_dt = coco_gt.loadRes(results)
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.asarray(ev.stats[:12], np.float64)


def baseline_worker(name: str, data: Path, repeats: int) -> None:
    """Subprocess mode: time one baseline on the case stored in ``data``; print one JSON line."""
    import faster_coco_eval  # noqa: F401  (imports happen before any clock starts)
    import pycocotools.cocoeval  # noqa: F401

    case = json.loads(data.read_text())
    fn = run_pycocotools if name == "pycocotools" else run_faster
    walls, cpus, stats = [], [], None
    for _ in range(repeats):
        gt, results = copy.deepcopy(case["gt"]), copy.deepcopy(case["results"])
        wall, cpu = time.perf_counter(), time.process_time()
        stats = fn(gt, results)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        del gt, results
    print(json.dumps({"wall": walls, "cpu": cpus, "stats": stats.tolist()}))


def time_baseline(name: str, data: Path, repeats: int) -> dict:
    command = [sys.executable, __file__, "--baseline-worker", name, "--data", str(data), "--repeats", str(repeats)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- ours ----------------------------------------------------------------------------------------------


def _timed_chunk(*args):
    """evaluate_category_chunk plus the CPU seconds it used in its worker."""
    from yolov2.metrics.coco import evaluate_category_chunk

    started = time.process_time()
    result = evaluate_category_chunk(*args)
    return result, time.process_time() - started


class _ChunkCpu:
    """A map_fn that runs the chunks in ``pool`` and records each chunk's worker CPU time."""

    def __init__(self, pool: ProcessPoolExecutor):
        self.pool = pool
        self.cpu: list[float] = []

    def __call__(self, fn, *iterables):
        out = []
        for result, cpu in self.pool.map(_timed_chunk, *iterables):
            self.cpu.append(cpu)
            out.append(result)
        return out


def run_ours(records, dets, names: list[str], workers: int) -> tuple[np.ndarray, float, float, float]:
    """(stats, wall seconds, CPU seconds of the critical path, CPU seconds of this process)."""
    from yolov2.metrics.coco import coco_evaluate

    wall, cpu = time.perf_counter(), time.process_time()
    worker_cpu = 0.0
    if workers <= 1:
        result = coco_evaluate(records, dets, names, backend="faster_coco_eval")
    else:
        with ProcessPoolExecutor(workers) as pool:
            recorder = _ChunkCpu(pool)
            result = coco_evaluate(
                records, dets, names, backend="faster_coco_eval", num_chunks=workers, map_fn=recorder
            )
        worker_cpu = max(recorder.cpu)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = np.array([result.stats[k] for k in STAT_NAMES], np.float64)
    return stats, wall, cpu + worker_cpu, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-pycocotools", action="store_true", help="leave out the slow reference")
    parser.add_argument("--baseline-worker", choices=["pycocotools", "faster_coco_eval"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        baseline_worker(args.baseline_worker, args.data, args.repeats)
        return

    from yolov2.metrics.voc import voc_evaluate

    load_at_start = os.getloadavg()[0]
    records, dets = make_case(args.images, args.classes, seed=args.seed)
    names = [f"class{c}" for c in range(args.classes)]
    run_ours(records[:50], dets.take(np.isin(dets.image_id, [r.image_id for r in records[:50]])), names, 1)  # imports

    ours_runs = [run_ours(records, dets, names, args.workers) for _ in range(args.repeats)]
    single_runs = [run_ours(records, dets, names, 1) for _ in range(args.repeats)]
    voc_runs = []
    for _ in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        voc_evaluate(records, dets, names)
        voc_runs.append((time.perf_counter() - wall, time.process_time() - cpu))

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "case.json"
        gt, results = to_coco_json(records, dets, args.classes)
        data.write_text(json.dumps({"gt": gt, "results": results}))
        del gt, results
        fast = time_baseline("faster_coco_eval", data, args.repeats)
        pyc = None if args.skip_pycocotools else time_baseline("pycocotools", data, 1)

    med = statistics.median
    ours_key = f"ours_{args.workers}_workers"
    wall = {
        ours_key: med(r[1] for r in ours_runs),
        "ours_1_process": med(r[1] for r in single_runs),
        "faster_coco_eval_single": med(fast["wall"]),
        "voc_metric_single": med(v[0] for v in voc_runs),
    }
    cpu = {
        ours_key + "_critical_path": med(r[2] for r in ours_runs),
        ours_key + "_this_process_only": med(r[3] for r in ours_runs),
        "ours_1_process": med(r[2] for r in single_runs),
        "faster_coco_eval_single": med(fast["cpu"]),
        "voc_metric_single": med(v[1] for v in voc_runs),
    }
    ours_stats, fast_stats = ours_runs[0][0], np.array(fast["stats"])
    out: dict = {
        "benchmark": "coco_map",
        "case": {
            "images": len(records),
            "gt_boxes": int(sum(r.num_boxes for r in records)),
            "detections": len(dets),
            "categories": args.classes,
            "seed": args.seed,
        },  # fmt: skip
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1min_at_start": load_at_start,
        },
        "repeats": args.repeats,
        "wall_seconds_median": wall,
        "cpu_seconds_median": cpu,
        "speedup_vs_faster_coco_eval": {
            "wall": wall["faster_coco_eval_single"] / wall[ours_key],
            "cpu_critical_path": cpu["faster_coco_eval_single"] / cpu[ours_key + "_critical_path"],
        },
        "identical": {
            "ours_workers_vs_faster_max_abs_diff": float(np.abs(ours_stats - fast_stats).max()),
            "ours_1_process_vs_faster_max_abs_diff": float(np.abs(single_runs[0][0] - fast_stats).max()),
        },
        "all_runs_wall_seconds": {
            "ours_workers": [r[1] for r in ours_runs],
            "ours_1_process": [r[1] for r in single_runs],
            "faster_coco_eval": fast["wall"],
            "voc": [v[0] for v in voc_runs],
        },  # fmt: skip
    }
    if pyc is not None:
        wall["pycocotools_single"], cpu["pycocotools_single"] = pyc["wall"][0], pyc["cpu"][0]
        out["speedup_vs_pycocotools"] = {
            "wall": pyc["wall"][0] / wall[ours_key],
            "cpu_critical_path": pyc["cpu"][0] / cpu[ours_key + "_critical_path"],
        }
        out["identical"]["ours_workers_vs_pycocotools_max_abs_diff"] = float(
            np.abs(ours_stats - np.array(pyc["stats"])).max()
        )
        out["identical"]["faster_vs_pycocotools_max_abs_diff"] = float(
            np.abs(fast_stats - np.array(pyc["stats"])).max()
        )
    out["stats"] = dict(zip(STAT_NAMES, ours_stats.tolist()))
    out["machine"]["load_avg_1min_at_end"] = os.getloadavg()[0]
    out.update(machine_facts(args.workers, NO_MODEL, "worker processes of ours (the baselines: one process)"))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
