"""COCO box metrics with pycocotools' definitions, computed in memory and split by category.

Numbers are pycocotools ``COCOeval(iouType="bbox")``'s: AP@[.5:.95], AP50, AP75, AP small/medium/large,
AR with 1/10/100 detections, AR small/medium/large, and per-class AP. Three backends compute them:
``"pycocotools"`` (the reference), ``"faster_coco_eval"`` (its C++ re-implementation, the default
when installed) and ``"hotcoco"`` (a Rust one, fed columns instead of one dict per box); all give the
same numbers (tests/metrics: hotcoco's are bit-identical to pycocotools', faster-coco-eval's within
~1e-16).

hotcoco runs on a Rust (rayon) thread pool, one thread per core, started by its first evaluation;
like any such pool it does not survive ``fork``: a process forked from one that has run hotcoco
would hang on its first evaluation. That case raises :class:`RuntimeError` here instead; worker
pools for the hotcoco backend should start with ``"forkserver"`` or ``"spawn"`` (Ray workers do),
or be forked before this process evaluates with hotcoco itself.

Conversion from records, in memory (no JSON on disk):

* image ids: the records' ``image_id`` when every one is a decimal integer (COCO files, so image
  order and tie-breaking equal a pycocotools run on the original file), otherwise 1..N in record order;
* category id = label + 1; annotation ids 1..G (id 0 would read as "unmatched" inside COCOeval);
* ``bbox = [x1, y1, x2 - x1, y2 - y1]`` from the 0-based continuous records (COCO's own convention);
* ``area = w * h`` of the box. Real COCO files carry the *segmentation* area, which decides the
  small/medium/large bins; records do not keep it, so APs/APm/APl (and ARs/m/l) can differ from a run
  on the original file. AP, AP50, AP75 and AR1/10/100 do not depend on it.
* ``iscrowd`` is kept (crowd boxes are ignored and absorb matches, as in pycocotools); ``difficult``
  has no COCO meaning and is not used.

Parallel evaluation. pycocotools evaluates every category on its own (matching, accumulation and the
per-category precision arrays never mix categories), so the categories can be split into chunks,
each chunk evaluated by :func:`evaluate_category_chunk` in a separate worker (it receives plain
NumPy arrays, not COCO objects), the ``precision[T, R, K, A, M]`` / ``recall[T, K, A, M]`` arrays put
back along the category axis in the original order, and :func:`summarize_coco` run once. Within a
chunk the relative order of images and detections is the full run's, so ties break the same way
and the result is identical to a single-process run of the same backend. ``map_fn`` is any
``map``-like callable (builtin ``map``, ``ProcessPoolExecutor.map``, a Ray-task map).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from yolov2.data.records import ImageRecord
from yolov2.errors import ConfigError, DatasetError
from yolov2.metrics.detections import DetectionTable, GroundTruthArrays, resolve_detections

Backend = Literal["faster_coco_eval", "hotcoco", "pycocotools"]
BACKENDS: tuple[str, ...] = ("faster_coco_eval", "hotcoco", "pycocotools")

# pycocotools' Params.setDetParams, reproduced so summaries need no COCOeval object.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS: tuple[int, ...] = (1, 10, 100)
AREA_LABELS: tuple[str, ...] = ("all", "small", "medium", "large")
STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


# The process that started hotcoco's thread pool (None: not yet); a forked child inherits the value.
_hotcoco_pid: int | None = None


def default_backend() -> str:
    """``"faster_coco_eval"`` when it is installed, else ``"pycocotools"``."""
    return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"


@dataclass(frozen=True)
class CocoGroundTruth:
    """Ground truth as COCO columns (what a worker receives instead of a COCO object).

    image_ids (int64[I]) with widths, heights (int64[I]); per box: ann_id, image, category (int64[G]),
    bbox (float64[G, 4]) COCO ``[x, y, w, h]`` absolute pixels, area (float64[G]), iscrowd (bool[G]).
    """

    image_ids: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    ann_id: np.ndarray
    image: np.ndarray
    category: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    iscrowd: np.ndarray

    def select(self, category_ids: np.ndarray) -> CocoGroundTruth:
        """Only the boxes of ``category_ids`` (images are kept: they are small)."""
        keep = np.isin(self.category, category_ids)
        return CocoGroundTruth(
            self.image_ids, self.widths, self.heights, self.ann_id[keep], self.image[keep],
            self.category[keep], self.bbox[keep], self.area[keep], self.iscrowd[keep],
        )  # fmt: skip


@dataclass(frozen=True)
class CocoDetections:
    """Detections as COCO result columns: image, category (int64[D]), bbox (float64[D, 4]) ``[x, y, w, h]``,
    score (float64[D]), in the original row order."""

    image: np.ndarray
    category: np.ndarray
    bbox: np.ndarray
    score: np.ndarray

    def select(self, category_ids: np.ndarray) -> CocoDetections:
        keep = np.isin(self.category, category_ids)
        return CocoDetections(self.image[keep], self.category[keep], self.bbox[keep], self.score[keep])


@dataclass(frozen=True)
class CocoChunkResult:
    """What one worker sends back: its category ids (sorted) and pycocotools' accumulated arrays.

    precision, scores (float64[T, R, K, A, M]) and recall (float64[T, K, A, M]) with T IoU thresholds,
    R recall thresholds, K = len(category_ids), A area ranges, M max-detection settings; -1 where absent.
    """

    category_ids: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray


def coco_image_ids(records: Sequence[ImageRecord]) -> np.ndarray:
    """COCO integer ids for the records (int64[N]): their own ids when all are distinct decimal integers."""
    ids = [r.image_id for r in records]
    if ids and all(i.isascii() and i.isdigit() for i in ids):
        values = np.array([int(i) for i in ids], np.int64)
        if len(np.unique(values)) == len(values):
            return values
    return np.arange(1, len(records) + 1, dtype=np.int64)


def to_coco_arrays(
    records: Sequence[ImageRecord], detections: DetectionTable, num_classes: int
) -> tuple[CocoGroundTruth, CocoDetections]:
    """Records and detections (xyxy, 0-based continuous) -> COCO columns (module docstring for the rules).

    Raises :class:`~yolov2.errors.DatasetError` for detections on unknown images or classes.
    """
    det_record = resolve_detections(detections, records, num_classes)
    image_ids = coco_image_ids(records)
    gt = GroundTruthArrays.from_records(records)
    gt_xywh = _xyxy_to_xywh(gt.boxes)
    ground_truth = CocoGroundTruth(
        image_ids=image_ids,
        widths=np.array([r.width for r in records], np.int64),
        heights=np.array([r.height for r in records], np.int64),
        ann_id=np.arange(1, len(gt.label) + 1, dtype=np.int64),
        image=image_ids[gt.image],
        category=gt.label + 1,
        bbox=gt_xywh,
        area=gt_xywh[:, 2] * gt_xywh[:, 3],
        iscrowd=gt.iscrowd.copy(),
    )
    dets = CocoDetections(
        image=image_ids[det_record],
        category=detections.label.astype(np.int64) + 1,
        bbox=_xyxy_to_xywh(detections.boxes),
        score=detections.score.astype(np.float64),
    )
    return ground_truth, dets


def evaluate_category_chunk(
    gt: CocoGroundTruth, dets: CocoDetections, category_ids: Sequence[int] | np.ndarray, backend: str
) -> CocoChunkResult:
    """Run one backend's evaluate + accumulate on the categories ``category_ids`` only.

    A pure function of plain arrays, so it runs unchanged in a process pool or a Ray task. Boxes of
    other categories are dropped here; only images holding a box or detection of these categories are
    evaluated (the others contribute nothing to these categories in pycocotools either).

    pycocotools and faster-coco-eval need one Python dict per box (hotcoco takes the columns); the
    cyclic garbage collector is paused meanwhile (none of these objects form cycles), which makes
    building them several times faster in a process with a large heap (torch imported: each
    collection walks every live object).
    """
    _check_backend(backend)
    with _gc_paused():
        return _evaluate_category_chunk(gt, dets, np.unique(np.asarray(category_ids, np.int64)), backend)


def _evaluate_category_chunk(
    gt: CocoGroundTruth, dets: CocoDetections, cats: np.ndarray, backend: str
) -> CocoChunkResult:
    gt, dets = gt.select(cats), dets.select(cats)
    by_id = np.argsort(gt.image_ids, kind="stable")
    used = np.union1d(gt.image, dets.image)
    image_pos = by_id[np.searchsorted(gt.image_ids, used, sorter=by_id)]
    images = [
        {"id": int(i), "width": int(w), "height": int(h)}
        for i, w, h in zip(used.tolist(), gt.widths[image_pos].tolist(), gt.heights[image_pos].tolist())
    ]
    categories = [{"id": int(c), "name": str(c)} for c in cats.tolist()]
    if backend == "hotcoco":
        result = _run_hotcoco(images, categories, gt, dets)
    else:
        gt_dataset, dt_dataset = _coco_datasets(images, categories, gt, dets)
        if backend == "pycocotools":
            result = _run_pycocotools(gt_dataset, dt_dataset)
        else:
            result = _run_faster_coco_eval(gt_dataset, dt_dataset)
    precision, recall, scores = (np.asarray(result[k], np.float64) for k in ("precision", "recall", "scores"))
    expected = (len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(cats), len(AREA_LABELS), len(MAX_DETS))
    if precision.shape != expected:
        raise RuntimeError(f"{backend} returned precision of shape {precision.shape}, expected {expected}")
    return CocoChunkResult(cats, precision, recall, scores)


def _coco_datasets(
    images: list[dict], categories: list[dict], gt: CocoGroundTruth, dets: CocoDetections
) -> tuple[dict, dict]:
    """Ground-truth and result datasets as the dict-based backends load them (one dict per box)."""
    gt_anns = [
        {"id": a, "image_id": i, "category_id": c, "bbox": b, "area": ar, "iscrowd": int(cr)}
        for a, i, c, b, ar, cr in zip(
            gt.ann_id.tolist(), gt.image.tolist(), gt.category.tolist(), gt.bbox.tolist(),
            gt.area.tolist(), gt.iscrowd.tolist(),
        )
    ]  # fmt: skip
    # What COCO.loadRes does to bbox results: id = position + 1, area = w * h, iscrowd = 0.
    dt_area = (dets.bbox[:, 2] * dets.bbox[:, 3]).tolist()
    dt_anns = [
        {"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "score": s, "area": ar, "iscrowd": 0}
        for n, (i, c, b, s, ar) in enumerate(
            zip(dets.image.tolist(), dets.category.tolist(), dets.bbox.tolist(), dets.score.tolist(), dt_area)
        )
    ]
    gt_dataset = {"images": images, "annotations": gt_anns, "categories": categories}
    dt_dataset = {"images": images, "annotations": dt_anns, "categories": categories}
    return gt_dataset, dt_dataset


def balanced_category_chunks(work: np.ndarray, category_ids: np.ndarray, num_chunks: int) -> list[np.ndarray]:
    """Split ``category_ids`` into at most ``num_chunks`` groups of similar total ``work``.

    work (float[K]) estimates each category's cost (boxes + detections). Largest first, each to the
    lightest group (LPT); every group is returned sorted and non-empty.
    """
    num_chunks = max(1, min(int(num_chunks), len(category_ids)))
    loads = np.zeros(num_chunks)
    groups: list[list[int]] = [[] for _ in range(num_chunks)]
    for k in np.argsort(-np.asarray(work, np.float64), kind="stable"):
        g = int(np.argmin(loads))
        groups[g].append(int(category_ids[k]))
        loads[g] += work[k]
    return [np.array(sorted(g), np.int64) for g in groups if g]


def summarize_coco(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """pycocotools ``COCOeval.summarize`` for boxes, on accumulated arrays: the 12 standard stats.

    precision (float64[T, R, K, A, M]), recall (float64[T, K, A, M]) with pycocotools' default
    thresholds, area ranges and max detections. Each stat is the mean of the entries > -1 (absent
    categories are -1), or -1 when there are none, with the same NumPy operations as pycocotools.
    """

    def stat(ap: bool, iou_thr: float | None = None, area: str = "all", max_dets: int = 100) -> float:
        a = AREA_LABELS.index(area)
        m = MAX_DETS.index(max_dets)
        s = precision if ap else recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == IOU_THRESHOLDS)[0]]
        s = s[:, :, :, a, m] if ap else s[:, :, a, m]
        return float(np.mean(s[s > -1])) if len(s[s > -1]) else -1.0

    values = [
        stat(True),
        stat(True, iou_thr=0.5),
        stat(True, iou_thr=0.75),
        stat(True, area="small"),
        stat(True, area="medium"),
        stat(True, area="large"),
        stat(False, max_dets=1),
        stat(False, max_dets=10),
        stat(False, max_dets=100),
        stat(False, area="small"),
        stat(False, area="medium"),
        stat(False, area="large"),
    ]
    return dict(zip(STAT_NAMES, values))


def per_class_ap(precision: np.ndarray, iou_thr: float | None = None) -> np.ndarray:
    """AP of each category (float64[K], NaN without ground truth) at area "all", 100 detections.

    The mean over IoU thresholds (or only ``iou_thr``) and recall thresholds of the entries > -1:
    the per-class number detectron2 and others report next to ``summarize``.
    """
    p = precision[:, :, :, 0, -1]
    if iou_thr is not None:
        p = p[np.where(iou_thr == IOU_THRESHOLDS)[0]]
    out = np.full(p.shape[2], np.nan)
    for k in range(p.shape[2]):
        v = p[:, :, k]
        if (v > -1).any():
            out[k] = float(np.mean(v[v > -1]))
    return out


@dataclass(frozen=True)
class CocoResult:
    """COCO stats (:data:`STAT_NAMES`) and per-class AP, plus the accumulated arrays for curves.

    per_class_ap, per_class_ap50 (float64[C], NaN without ground truth); precision (float64[T, R, C, A, M]),
    recall (float64[T, C, A, M]) as pycocotools' ``eval`` holds them, categories in label order.
    """

    class_names: tuple[str, ...]
    stats: dict[str, float]
    per_class_ap: np.ndarray
    per_class_ap50: np.ndarray
    precision: np.ndarray = field(repr=False)
    recall: np.ndarray = field(repr=False)
    backend: str = "faster_coco_eval"
    num_chunks: int = 1

    @property
    def mAP(self) -> float:
        return self.stats["AP"]

    def to_dict(self) -> dict:
        """JSON-able summary: the 12 stats and one row per class (AP null when undefined)."""
        return {
            "metric": "coco",
            "backend": self.backend,
            "stats": dict(self.stats),
            "mAP": self.stats["AP"],
            "per_class": [
                {"class": name, "ap": _json_float(self.per_class_ap[c]), "ap50": _json_float(self.per_class_ap50[c])}
                for c, name in enumerate(self.class_names)
            ],
        }


def coco_evaluate(
    records: Sequence[ImageRecord],
    detections: DetectionTable,
    class_names: Sequence[str],
    backend: str | None = None,
    num_chunks: int = 1,
    map_fn: Callable[..., Iterable[Any]] = map,
) -> CocoResult:
    """COCO metrics of ``detections`` against ``records`` (converted as the module docstring says).

    See :func:`coco_evaluate_arrays` for ``backend``, ``num_chunks`` and ``map_fn``.
    """
    gt, dets = to_coco_arrays(records, detections, len(class_names))
    category_ids = np.arange(1, len(class_names) + 1, dtype=np.int64)
    return coco_evaluate_arrays(gt, dets, class_names, category_ids, backend, num_chunks, map_fn)


def coco_evaluate_arrays(
    gt: CocoGroundTruth,
    dets: CocoDetections,
    class_names: Sequence[str],
    category_ids: Sequence[int] | np.ndarray,
    backend: str | None = None,
    num_chunks: int = 1,
    map_fn: Callable[..., Iterable[Any]] = map,
) -> CocoResult:
    """COCO metrics from COCO columns; ``category_ids[i]`` is the id of ``class_names[i]``.

    ``num_chunks=1`` runs the backend once, in this process. With more, the categories are split into
    ``num_chunks`` groups of similar work and ``map_fn(evaluate_category_chunk, gts, dets, chunks,
    backends)`` runs them (pass ``ProcessPoolExecutor(n).map`` or a Ray-task map for parallelism);
    each call receives only its categories' arrays. ``backend`` None picks :func:`default_backend`.
    Detections on an image or category that the ground truth lacks raise :class:`DatasetError`.
    """
    backend = backend or default_backend()
    _check_backend(backend)
    ids = np.asarray(category_ids, np.int64)
    if len(ids) != len(class_names) or len(np.unique(ids)) != len(ids):
        raise ConfigError(f"category_ids {ids.tolist()} must be distinct, one per class name ({len(class_names)})")
    _check_coco_detections(gt, dets, ids)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if num_chunks <= 1 or len(ids) <= 1:
        results = [evaluate_category_chunk(gt, dets, sorted_ids, backend)]
    else:
        pos_gt = np.searchsorted(sorted_ids, gt.category)
        pos_dt = np.searchsorted(sorted_ids, dets.category)
        work = np.bincount(pos_gt, minlength=len(ids)) + np.bincount(pos_dt, minlength=len(ids))
        chunks = balanced_category_chunks(work.astype(np.float64), sorted_ids, num_chunks)
        results = list(
            map_fn(
                evaluate_category_chunk,
                [gt.select(c) for c in chunks],
                [dets.select(c) for c in chunks],
                chunks,
                [backend] * len(chunks),
            )
        )
    precision, recall = _assemble(results, sorted_ids)
    # Summaries use pycocotools' (sorted id) category order; per-class rows follow class_names.
    back = np.argsort(order)
    return CocoResult(
        class_names=tuple(class_names),
        stats=summarize_coco(precision, recall),
        per_class_ap=per_class_ap(precision)[back],
        per_class_ap50=per_class_ap(precision, iou_thr=0.5)[back],
        precision=precision[:, :, back],
        recall=recall[:, back],
        backend=backend,
        num_chunks=len(results),
    )


def _check_coco_detections(gt: CocoGroundTruth, dets: CocoDetections, category_ids: np.ndarray) -> None:
    unknown_images = np.setdiff1d(dets.image, gt.image_ids)
    if len(unknown_images):
        raise DatasetError(
            f"detections: {len(unknown_images)} image id(s) not in the ground truth, e.g. {unknown_images[:5].tolist()}"
        )
    unknown_cats = np.setdiff1d(np.union1d(dets.category, gt.category), category_ids)
    if len(unknown_cats):
        raise DatasetError(
            f"unknown category id(s) {unknown_cats[:5].tolist()} (categories are {category_ids.tolist()})"
        )
    if not (np.isfinite(dets.score).all() and np.isfinite(dets.bbox).all()):
        raise DatasetError("detections: a non-finite score or bbox value")


def _assemble(results: Sequence[CocoChunkResult], category_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chunk arrays -> full arrays with categories in ``category_ids`` order; every id exactly once."""
    T, R, A, M = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_LABELS), len(MAX_DETS)
    K = len(category_ids)
    precision = np.full((T, R, K, A, M), np.nan)
    recall = np.full((T, K, A, M), np.nan)
    seen = np.zeros(K, bool)
    for res in results:
        pos = np.searchsorted(category_ids, res.category_ids)
        if (pos >= K).any() or (category_ids[np.minimum(pos, K - 1)] != res.category_ids).any() or seen[pos].any():
            raise RuntimeError(f"chunk results overlap or hold unknown categories: {res.category_ids.tolist()}")
        seen[pos] = True
        precision[:, :, pos] = res.precision
        recall[:, pos] = res.recall
    if not seen.all():
        raise RuntimeError(f"no chunk result for categories {category_ids[~seen].tolist()}")
    return precision, recall


def _run_pycocotools(gt_dataset: dict, dt_dataset: dict) -> dict:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset, coco_dt.dataset = gt_dataset, dt_dataset
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
    return ev.eval


def _run_hotcoco(images: list[dict], categories: list[dict], gt: CocoGroundTruth, dets: CocoDetections) -> dict:
    """hotcoco from columns: no dict per box (``COCO.from_arrays``, ``load_res`` of an ``(N, 7)`` array).

    ``load_res`` does what pycocotools' ``loadRes`` does (id = position + 1, area = w * h, iscrowd 0);
    ids pass through float64, exact below 2**53.
    """
    from hotcoco import COCO, COCOeval

    global _hotcoco_pid
    if _hotcoco_pid is not None and _hotcoco_pid != os.getpid():
        raise RuntimeError(
            f"hotcoco ran in process {_hotcoco_pid}, which then forked this one: its thread pool does not survive "
            "fork and this evaluation would hang; start the workers with 'forkserver' or 'spawn' (or use Ray)"
        )
    _hotcoco_pid = os.getpid()
    coco_gt = COCO.from_arrays(
        images, categories, gt.image, gt.category, gt.bbox, ids=gt.ann_id, area=gt.area, iscrowd=gt.iscrowd
    )
    rows = np.column_stack([dets.image, dets.bbox, dets.score, dets.category]).astype(np.float64).reshape(-1, 7)
    coco_dt = coco_gt.load_res(rows)
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    result = ev.eval  # a property that converts on every access: read it once
    if result is None:
        raise RuntimeError("hotcoco: no accumulated results after accumulate()")
    return result


def _run_faster_coco_eval(gt_dataset: dict, dt_dataset: dict) -> dict:
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt, coco_dt = COCO(gt_dataset), COCO(dt_dataset)
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=_silent)
    ev.evaluate()
    ev.accumulate()
    return ev.eval


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (process-wide) and restore its previous state."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _silent(*_args: Any, **_kwargs: Any) -> None:
    return None


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"COCO backend must be one of {list(BACKENDS)}, got {backend!r}")


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def _json_float(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
