"""COCO mAP on a COCO-sized case: our category-parallel metric (2 workers) against the single-call
peers pycocotools, faster-coco-eval and hotcoco, measured in the same run; plus the VOC metric on the
same case.

Prints one JSON object (and, on stderr, one line naming the fastest single-call peer and our ratio
against it). The case is generated with a fixed seed: 5,000 images of 300..640 pixels, Poisson(7)
ground-truth boxes each over 80 categories, and 20..100 detections per image: noisy copies of the
ground truth (10 % with a wrong class) plus random false positives; scores rounded to 3 decimals so
that ties occur as in real score files.

What is timed (wall clock and CPU, everything in memory, no JSON parsing):

* the peers ("baselines"): from the ground-truth dict and the results list to the 12 stats, as their
  users call them: ``COCO()`` + index, ``loadRes``, ``evaluate``, ``accumulate``, ``summarize``. They
  run in a fresh subprocess that imports nothing but NumPy and the libraries (no torch: a big heap
  makes Python's garbage collector slow down their object-heavy loading), which is their best case;
  their inputs are deep-copied before each clock starts, since loading mutates them. pycocotools and
  faster-coco-eval compute on one thread; hotcoco keeps a thread pool (Rust rayon, one thread per
  core unless ``RAYON_NUM_THREADS`` says otherwise) for its parallel parts, so its single call may
  use several cores: its CPU seconds over its wall seconds say how many it did.
  ``hotcoco_single_from_columns`` is hotcoco fed columns (``COCO.from_arrays``, ``load_res`` of an
  array, built before the clock) as our hotcoco backend feeds it: reported, not counted as a peer
  (its users hold dicts and JSON).
* ours, for each backend in ``--backends``: from the records and the detection table to the stats,
  in this process (which imports torch through ``yolov2``): conversion to arrays, a fresh
  ``ProcessPoolExecutor(workers)``, the category chunks evaluated in it, assembly and summary; and
  the same in one process. The pooled runs come first: a process forked after this one has run
  hotcoco cannot run hotcoco (yolov2/metrics/coco.py), so this process runs it only afterwards.
* VOC: ``voc_evaluate`` (VOC2010+ AP at IoU 0.5) on the same records and detections, one process.

Timings are medians of ``--repeats`` runs (pycocotools: one run). On a shared machine wall-clock
times depend on what else runs; CPU seconds do not: for ours with workers the ``critical_path`` CPU
figure is this process plus the slowest chunk in its worker, the wall time it would take with the
cores to itself; ``total`` adds every chunk (the work done, comparable with hotcoco's CPU seconds,
which count all its threads). ``fastest_peer`` is whichever of faster-coco-eval and hotcoco has the
lower wall time, with each of our backends' wall-time ratio against it. ``identical``: max
|difference| of the 12 stats (hotcoco and our pycocotools/hotcoco backends equal pycocotools exactly;
faster-coco-eval may differ from it by float rounding, ~1e-16). The JSON states the CPU
(``cpu_model``, ``cpus``, ``cpu_capability``, ``native_bf16``) and the worker processes ours ran with
(``threads``).

    python benchmarks/evaluate.py [--images 5000] [--workers 2] [--repeats 3] [--skip-pycocotools]
                                  [--backends faster_coco_eval,hotcoco]
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


def run_hotcoco(gt: dict, results: list) -> np.ndarray:
    from hotcoco import COCO, COCOeval

    coco_gt = COCO(gt)
    return _hotcoco_stats(COCOeval(coco_gt, coco_gt.loadRes(results), "bbox"))


def hotcoco_columns(gt: dict, results: list) -> tuple:
    """The case as the columns ``COCO.from_arrays`` and an ``(N, 7)`` ``load_res`` array take (untimed)."""
    anns = gt["annotations"]
    gt_columns = (
        gt["images"], gt["categories"], np.array([a["image_id"] for a in anns], np.int64),
        np.array([a["category_id"] for a in anns], np.int64),
        np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4),
        np.array([a["id"] for a in anns], np.int64), np.array([a["area"] for a in anns], np.float64),
        np.array([a["iscrowd"] for a in anns], np.int64),
    )  # fmt: skip
    rows = np.array([[r["image_id"], *r["bbox"], r["score"], r["category_id"]] for r in results], np.float64)
    return gt_columns, rows.reshape(-1, 7)


def run_hotcoco_columns(gt_columns: tuple, rows: np.ndarray) -> np.ndarray:
    from hotcoco import COCO, COCOeval

    images, categories, image_ids, category_ids, boxes, ids, area, iscrowd = gt_columns
    coco_gt = COCO.from_arrays(images, categories, image_ids, category_ids, boxes, ids=ids, area=area, iscrowd=iscrowd)
    return _hotcoco_stats(COCOeval(coco_gt, coco_gt.load_res(rows), "bbox"))


def _hotcoco_stats(ev) -> np.ndarray:
    """Evaluate, accumulate and summarise (quietly) a hotcoco COCOeval: its 12 stats."""
    ev.evaluate()
    ev.accumulate()
    with contextlib.redirect_stdout(io.StringIO()):
        ev.summarize()
    return np.asarray(ev.stats[:12], np.float64)


BASELINES = {
    "pycocotools": run_pycocotools,
    "faster_coco_eval": run_faster,
    "hotcoco": run_hotcoco,
    "hotcoco_columns": run_hotcoco_columns,
}


def baseline_worker(name: str, data: Path, repeats: int) -> None:
    """Subprocess mode: time one baseline on the case stored in ``data``; print one JSON line."""
    import faster_coco_eval  # noqa: F401  (imports happen before any clock starts)
    import hotcoco  # noqa: F401
    import pycocotools.cocoeval  # noqa: F401

    case = json.loads(data.read_text())
    fn = BASELINES[name]
    walls, cpus, stats = [], [], None
    for _ in range(repeats):
        gt, results = copy.deepcopy(case["gt"]), copy.deepcopy(case["results"])
        inputs = hotcoco_columns(gt, results) if name == "hotcoco_columns" else (gt, results)
        wall, cpu = time.perf_counter(), time.process_time()
        stats = fn(*inputs)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        del gt, results, inputs
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


def run_ours(
    records, dets, names: list[str], workers: int, backend: str
) -> tuple[np.ndarray, float, float, float, float]:
    """(stats, wall seconds, CPU seconds of the critical path, of this process only, and in total)."""
    from yolov2.metrics.coco import coco_evaluate

    wall, cpu = time.perf_counter(), time.process_time()
    chunk_cpu = [0.0]
    if workers <= 1:
        result = coco_evaluate(records, dets, names, backend=backend)
    else:
        with ProcessPoolExecutor(workers) as pool:
            recorder = _ChunkCpu(pool)
            result = coco_evaluate(records, dets, names, backend=backend, num_chunks=workers, map_fn=recorder)
        chunk_cpu = recorder.cpu
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = np.array([result.stats[k] for k in STAT_NAMES], np.float64)
    return stats, wall, cpu + max(chunk_cpu), cpu, cpu + sum(chunk_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", default="faster_coco_eval,hotcoco", help="our backends to time, comma-separated")
    parser.add_argument("--skip-pycocotools", action="store_true", help="leave out the slow reference")
    parser.add_argument("--baseline-worker", choices=sorted(BASELINES), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        baseline_worker(args.baseline_worker, args.data, args.repeats)
        return

    import hotcoco  # noqa: F401  (imported, not run: the pooled runs fork this process)

    from yolov2.cli.env import cpu_model
    from yolov2.metrics.coco import BACKENDS
    from yolov2.metrics.voc import voc_evaluate

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := set(backends) - set(BACKENDS):
        parser.error(f"unknown backends {sorted(unknown)} (choose from {list(BACKENDS)})")
    load_at_start = os.getloadavg()[0]
    records, dets = make_case(args.images, args.classes, seed=args.seed)
    names = [f"class{c}" for c in range(args.classes)]
    few = dets.take(np.isin(dets.image_id, [r.image_id for r in records[:50]]))
    run_ours(records[:50], few, names, 1, "faster_coco_eval")  # imports (hotcoco is run only after the pools)

    ours_runs = {b: [run_ours(records, dets, names, args.workers, b) for _ in range(args.repeats)] for b in backends}
    single_runs = {b: [run_ours(records, dets, names, 1, b) for _ in range(args.repeats)] for b in backends}
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
        peers = {name: time_baseline(name, data, args.repeats) for name in ("faster_coco_eval", "hotcoco")}
        from_columns = time_baseline("hotcoco_columns", data, args.repeats)
        pyc = None if args.skip_pycocotools else time_baseline("pycocotools", data, 1)

    med = statistics.median
    ours = f"ours_{args.workers}_workers"
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for b in backends:
        wall[f"{ours}_{b}"] = med(r[1] for r in ours_runs[b])
        cpu[f"{ours}_{b}_critical_path"] = med(r[2] for r in ours_runs[b])
        cpu[f"{ours}_{b}_this_process_only"] = med(r[3] for r in ours_runs[b])
        cpu[f"{ours}_{b}_total"] = med(r[4] for r in ours_runs[b])
        wall[f"ours_1_process_{b}"] = med(r[1] for r in single_runs[b])
        cpu[f"ours_1_process_{b}"] = med(r[2] for r in single_runs[b])
    for name, peer in peers.items():
        wall[f"{name}_single"], cpu[f"{name}_single"] = med(peer["wall"]), med(peer["cpu"])
    wall["hotcoco_single_from_columns"], cpu["hotcoco_single_from_columns"] = (
        med(from_columns["wall"]), med(from_columns["cpu"]),
    )  # fmt: skip
    wall["voc_metric_single"], cpu["voc_metric_single"] = med(v[0] for v in voc_runs), med(v[1] for v in voc_runs)
    if pyc is not None:
        wall["pycocotools_single"], cpu["pycocotools_single"] = pyc["wall"][0], pyc["cpu"][0]

    # Speed-ups of each of our backends: wall; CPU against the critical path for the one-thread peers,
    # against our total work for hotcoco (whose CPU seconds sum its threads).
    speedup: dict[str, dict] = {}
    for b in backends:
        speedup[b] = {
            "vs_faster_coco_eval": {
                "wall": wall["faster_coco_eval_single"] / wall[f"{ours}_{b}"],
                "cpu_critical_path": cpu["faster_coco_eval_single"] / cpu[f"{ours}_{b}_critical_path"],
            },
            "vs_hotcoco": {
                "wall": wall["hotcoco_single"] / wall[f"{ours}_{b}"],
                "cpu_total": cpu["hotcoco_single"] / cpu[f"{ours}_{b}_total"],
            },
            "vs_hotcoco_from_columns": {"wall": wall["hotcoco_single_from_columns"] / wall[f"{ours}_{b}"]},
        }
        if pyc is not None:
            speedup[b]["vs_pycocotools"] = {
                "wall": wall["pycocotools_single"] / wall[f"{ours}_{b}"],
                "cpu_critical_path": cpu["pycocotools_single"] / cpu[f"{ours}_{b}_critical_path"],
            }
    fastest = min(peers, key=lambda name: wall[f"{name}_single"])
    ratios = {b: wall[f"{fastest}_single"] / wall[f"{ours}_{b}"] for b in backends}
    best = max(ratios, key=lambda b: ratios[b])
    fastest_peer = {
        "name": fastest,
        "wall_seconds": wall[f"{fastest}_single"],
        "ours_wall_ratio": ratios,
        "best_ours_backend": best,
        "best_ratio": ratios[best],
        "target": 1.3,
    }

    stats = {b: ours_runs[b][0][0] for b in backends}
    peer_stats = {name: np.array(peer["stats"]) for name, peer in peers.items()}
    peer_stats["hotcoco_from_columns"] = np.array(from_columns["stats"])
    identical: dict[str, float] = {}
    for b in backends:
        identical[f"ours_workers_{b}_vs_1_process_max_abs_diff"] = float(np.abs(stats[b] - single_runs[b][0][0]).max())
        for name in peers:
            identical[f"ours_workers_{b}_vs_{name}_max_abs_diff"] = float(np.abs(stats[b] - peer_stats[name]).max())
    if pyc is not None:
        ref = np.array(pyc["stats"])
        for b in backends:
            identical[f"ours_workers_{b}_vs_pycocotools_max_abs_diff"] = float(np.abs(stats[b] - ref).max())
        for name, values in peer_stats.items():
            identical[f"{name}_vs_pycocotools_max_abs_diff"] = float(np.abs(values - ref).max())

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
            "cpu_model": cpu_model(),
            "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "load_avg_1min_at_start": load_at_start,
        },
        "repeats": args.repeats,
        "backends": backends,
        "peer_threads": {
            "pycocotools": 1,
            "faster_coco_eval": 1,
            "hotcoco": f"a pool of {os.environ.get('RAYON_NUM_THREADS') or os.cpu_count()} (CPU / wall: how many ran)",
        },
        "wall_seconds_median": wall,
        "cpu_seconds_median": cpu,
        "fastest_peer": fastest_peer,
        "speedup": speedup,
        "identical": identical,
        "all_runs_wall_seconds": {
            **{f"ours_workers_{b}": [r[1] for r in ours_runs[b]] for b in backends},
            **{f"ours_1_process_{b}": [r[1] for r in single_runs[b]] for b in backends},
            **{name: peer["wall"] for name, peer in peers.items()},
            "hotcoco_from_columns": from_columns["wall"],
            "voc": [v[0] for v in voc_runs],
        },  # fmt: skip
        "stats": dict(zip(STAT_NAMES, stats[backends[0]].tolist())),
    }
    out["machine"]["load_avg_1min_at_end"] = os.getloadavg()[0]
    out.update(machine_facts(args.workers, NO_MODEL, "worker processes of ours (the peers: one process)"))
    print(
        f"fastest single-call peer: {fastest} {wall[f'{fastest}_single']:.2f} s; ours with {args.workers} workers: "
        + ", ".join(f"{b} {wall[f'{ours}_{b}']:.2f} s ({ratios[b]:.2f}x)" for b in backends),
        file=sys.stderr,
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
