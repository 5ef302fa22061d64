"""`yolov2 eval-dets`: evaluate any detector's output files against ground truth, with no model.

    yolov2 eval-dets --gt GT --dets DETS --metric voc07|voc12|coco [--iou 0.5] [--json]

GT is a VOC root (Annotations/, JPEGImages/) or a folder of VOC XML, a COCO instances JSON, or a
folder of text files ``<image_id>.txt`` with ``<class> <left> <top> <width> <height>`` lines
(``--box-format xyxy``: ``<class> <left> <top> <right> <bottom>``; a trailing word ``difficult``
marks a difficult box). DETS is a folder of ``<image_id>.txt`` files with ``<class> <score> <box>``
lines in the same box format, or a COCO results JSON (with a COCO JSON ground truth).

Text coordinates are VOC-style inclusive pixel indices by default (``--coords voc``: a box from
pixel 1 to 10 is 10 pixels wide, as in the VOC devkit and Padilla's Object-Detection-Metrics);
``--coords continuous`` reads them as continuous coordinates (10 - 1 = 9 wide).

Prints a per-class table and the mean; ``--json`` prints exactly one JSON object instead.
Example on the published sample (AP 24.57 % at IoU 0.3):

    yolov2 eval-dets --gt ../shared/data/metric_cases/padilla2018/groundtruths \\
        --dets ../shared/data/metric_cases/padilla2018/detections --metric voc12 --iou 0.3
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from yolov2.errors import ConfigError, YoloV2Error
from yolov2.metrics.coco import BACKENDS, CocoResult, coco_evaluate, coco_evaluate_arrays, default_backend
from yolov2.metrics.formats import GroundTruth, read_coco_results_arrays, read_detections, read_ground_truth
from yolov2.metrics.voc import VocResult, voc_evaluate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt", required=True, help="ground truth: VOC root or XML folder, COCO JSON, or text folder")
    p.add_argument("--dets", required=True, help="detections: text folder or COCO results JSON")
    p.add_argument("--metric", required=True, choices=["voc07", "voc12", "coco"],
                   help="voc07: 11-point AP; voc12: all-point AP (VOC2010+); coco: pycocotools' 12 stats")  # fmt: skip
    p.add_argument("--iou", type=float, default=None, help="IoU threshold of the VOC metrics (default 0.5)")
    p.add_argument("--box-format", choices=["xywh", "xyxy"], default="xywh", help="box columns of text files")
    p.add_argument("--coords", choices=["voc", "continuous"], default="voc",
                   help="text files: VOC inclusive pixel indices (default) or continuous coordinates")  # fmt: skip
    p.add_argument("--classes", default=None, help="a file with one class name per line (default: names in GT)")
    p.add_argument("--backend", choices=list(BACKENDS), default=None,
                   help=f"COCO backend (default {default_backend()})")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="COCO: evaluate category chunks in this many processes")
    p.add_argument("--plots", default=None, help="also write PR curves, confusion matrix, error breakdown here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval-dets", help="VOC / COCO mAP of detection files against ground truth",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        report = evaluate_files(args)
    except YoloV2Error as e:
        print(f"yolov2 eval-dets: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, allow_nan=False))
    else:
        print(format_table(report))
    return 0


def evaluate_files(args: argparse.Namespace) -> dict:
    """Read the files, compute the metric, write plots if asked; the report as a JSON-able dict."""
    if args.iou is not None and args.metric == "coco":
        raise ConfigError("--iou applies to voc07/voc12; COCO averages IoU 0.50:0.95 (AP50 and AP75 are reported)")
    iou = 0.5 if args.iou is None else args.iou
    class_names = _read_class_file(args.classes) if args.classes else None
    gt = read_ground_truth(args.gt, args.box_format, args.coords, class_names)
    dets = read_detections(args.dets, gt, args.box_format, args.coords)
    result: VocResult | CocoResult
    if args.metric == "coco":
        result = _coco(args, gt)
    else:
        result = voc_evaluate(gt.records, dets, gt.class_names, iou, use_07_metric=args.metric == "voc07")
    if args.plots:
        _write_plots(Path(args.plots), gt, dets, result)
    report = result.to_dict()
    report.update({"gt": str(args.gt), "dets": str(args.dets), "images": len(gt.records), "detections": len(dets)})
    return report


def format_table(report: dict) -> str:
    """The report as a fixed-width table: one row per class, then the mean (and COCO's 12 stats)."""
    rows = report["per_class"]
    width = max([len("class")] + [len(r["class"]) for r in rows])
    lines = [f"{report['metric']}  images {report['images']}  detections {report['detections']}"]
    if report["metric"] == "coco":
        lines.append(f"{'class':<{width}}  {'AP':>7}  {'AP50':>7}")
        lines += [f"{r['class']:<{width}}  {_pct(r['ap']):>7}  {_pct(r['ap50']):>7}" for r in rows]
        lines.append("")
        lines += [f"{k:<6} {v:.4f}" for k, v in report["stats"].items()]
    else:
        lines[0] += f"  IoU {report['iou_threshold']:g}"
        lines.append(f"{'class':<{width}}  {'AP':>7}  {'gt':>6}  {'dets':>6}  {'tp':>6}  {'fp':>6}")
        lines += [
            f"{r['class']:<{width}}  {_pct(r['ap']):>7}  "
            f"{r['npos']:>6}  {r['detections']:>6}  {r['tp']:>6}  {r['fp']:>6}"
            for r in rows
        ]
    lines.append(f"mAP = {_pct(report['mAP'])} %")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m yolov2.cli.eval_dets``), the same as ``yolov2 eval-dets``."""
    parser = argparse.ArgumentParser(prog="yolov2 eval-dets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _coco(args: argparse.Namespace, gt: GroundTruth) -> CocoResult:
    dets_path = Path(args.dets)
    exact = (
        gt.coco is not None
        and gt.category_ids is not None
        and min(gt.category_ids) >= 0
        and dets_path.suffix.lower() == ".json"
    )
    workers = max(1, int(args.workers))
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    map_fn = pool.map if pool is not None else map
    try:
        if exact:  # the files' own values: the numbers pycocotools gives on these files
            assert gt.coco is not None and gt.category_ids is not None  # checked by exact
            coco_dets = read_coco_results_arrays(dets_path, gt)
            return coco_evaluate_arrays(
                gt.coco, coco_dets, gt.class_names, gt.category_ids, args.backend, workers, map_fn
            )
        dets = read_detections(dets_path, gt, args.box_format, args.coords)
        return coco_evaluate(gt.records, dets, gt.class_names, args.backend, workers, map_fn)
    finally:
        if pool is not None:
            pool.shutdown()


def _write_plots(out: Path, gt: GroundTruth, dets, result: VocResult | CocoResult) -> None:
    from yolov2.io import atomic_write_bytes
    from yolov2.metrics.figures import evaluation_figures

    out.mkdir(parents=True, exist_ok=True)
    key = "coco" if isinstance(result, CocoResult) else "voc12"
    for name, fig in evaluation_figures(gt.records, dets, gt.class_names, {key: result}, 0).items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        atomic_write_bytes(out / name, buffer.getvalue())


def _read_class_file(path: str) -> list[str]:
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"{path}: no class names (one per line)")
    return names


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
