"""`yolov2 predict`: detect objects in an image or a folder of images with a trained model file.

Writes, per image, a copy with the boxes and labels drawn (`<out>/<name>.jpg`) and one JSON file
`<out>/detections.json` with every detection in original-image pixels (xyxy, 0-based continuous).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from yolov2.config import PredictConfig
from yolov2.data.images import IMAGE_EXTENSIONS, decode_rgb
from yolov2.engine.precision import choose_precision, detect_hardware, slow_path_warnings
from yolov2.errors import DatasetError
from yolov2.inference import Predictor, load_model_file
from yolov2.io import atomic_write_bytes, atomic_write_text

_PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
    ],
    np.uint8,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="detect objects in images and draw them", description=__doc__)
    p.add_argument("--weights", required=True, help="a model file written by the train stage (model.pt)")
    p.add_argument("--source", required=True, help="an image file or a folder of images")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--input-size", type=int, default=None, help="network input side (default: the model's)")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold (default 0.25)")
    p.add_argument("--nms", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    p.add_argument("--max-det", type=int, default=100, help="at most this many detections per image")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    p.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "off", "bf16", "fp16"],
        help="autocast precision (default auto: bf16 where the device computes it natively, else float32)",
    )
    p.add_argument(
        "--tree-walk",
        action="store_true",
        help="YOLO9000 models: label each box with the tree node where the walk down from the root stops "
        "(P(node) > --hier), scored by its objectness, instead of scoring the model's classes",
    )
    p.add_argument("--hier", type=float, default=0.5, help="YOLO9000 tree walk threshold (default 0.5, Darknet's)")
    p.add_argument(
        "--resize",
        default="darknet",
        choices=["darknet", "opencv"],
        help="how the image is resized into the letterbox: darknet = Darknet's float bilinear "
        "resize_image, its pixels to float rounding (default); opencv = INTER_LINEAR on uint8, "
        "faster, a few grey levels off",
    )
    p.add_argument(
        "--channels-last",
        default="auto",
        choices=["auto", "true", "false"],
        help="channels_last memory layout (default auto: where it measured faster)",
    )
    p.set_defaults(run=run)


def list_images(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DatasetError(f"{source}: no such image or folder")
    return sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def draw(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, names: list[str]) -> np.ndarray:
    """RGB image with each box and 'name score' drawn; returns BGR (ready for cv2.imencode)."""
    canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores):
        colour = tuple(int(c) for c in _PALETTE[int(label) % len(_PALETTE)][::-1])
        cv2.rectangle(canvas, (int(x1), int(y1)), (int(x2), int(y2)), colour, 2)
        text = f"{names[int(label)] if int(label) < len(names) else label} {score:.2f}"
        cv2.putText(
            canvas, text, (int(x1), max(10, int(y1) - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA
        )
    return canvas


def run(args: argparse.Namespace) -> int:
    hardware = detect_hardware(args.device)
    layout = args.channels_last if args.channels_last == "auto" else args.channels_last == "true"
    for warning in slow_path_warnings(hardware, args.amp, layout, setting="predict"):
        print(f"warning: {warning}", file=sys.stderr)
    model, spec = load_model_file(args.weights, args.device)
    predict = PredictConfig(
        input_size=args.input_size or spec.input_size,
        resize=args.resize,
        conf_thresh=args.conf,
        nms_thresh=args.nms,
        max_det=args.max_det,
        hier_thresh=args.hier,
        tree_walk=args.tree_walk,
    )
    predictor = Predictor(
        model, spec, predict, device=args.device, precision=choose_precision(hardware, args.amp, layout)
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = list_images(Path(args.source))
    names = predictor.label_names
    results = []
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start : start + args.batch_size]
        images = [decode_rgb(p.read_bytes(), str(p)) for p in chunk]
        for path, image, det in zip(chunk, images, predictor(images)):
            boxes, scores, labels = det.boxes.cpu().numpy(), det.scores.cpu().numpy(), det.labels.cpu().numpy()
            ok, jpg = cv2.imencode(".jpg", draw(image, boxes, labels, scores, names))
            if ok:
                atomic_write_bytes(out / f"{path.stem}.jpg", jpg.tobytes())
            results.append(
                {
                    "image": str(path),
                    "detections": [
                        {
                            "label": int(c),
                            "name": names[int(c)] if int(c) < len(names) else str(int(c)),
                            "score": float(s),
                            "box_xyxy": [float(v) for v in b],
                        }
                        for b, s, c in zip(boxes, scores, labels)
                    ],
                }
            )
    atomic_write_text(out / "detections.json", json.dumps(results, indent=2))
    print(f"{len(paths)} image(s), {sum(len(r['detections']) for r in results)} detection(s) -> {out}")
    return 0
