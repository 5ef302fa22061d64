"""The cost of Darknet's float resize against OpenCV's in the letterbox, next to a network forward pass, one thread.

Prints one JSON object. Images: the photos of ``voc100`` (shared data, ``YOLOV2_SHARED_DATA``), decoded once
beforehand; synthetic 500x375 images when that folder is absent. Timed, at 416x416, with one torch and one OpenCV
thread (``torch.set_num_threads(1)``, ``cv2.setNumThreads(1)``):

* ``letterbox_darknet``: :func:`yolov2.preprocess.letterbox_tensor` with ``resize="darknet"`` (Darknet's
  ``resize_image`` arithmetic in float32), per image;
* ``letterbox_opencv``: the same with ``resize="opencv"`` (``cv2.resize`` INTER_LINEAR on uint8, then / 255);
* ``forward_yolov2_voc`` and ``forward_yolov2_tiny_voc``: one eval-mode forward pass, batch 1, float32, NCHW,
  under ``torch.inference_mode``, for scale.

Each round times all four back to back, so background load hits them alike; the figures are medians over rounds
of process CPU time (wall-clock alongside), after one untimed warm-up round. The ratios: darknet / opencv
letterbox, and the darknet letterbox as a fraction of one yolov2_voc (and yolov2_tiny_voc) forward pass.

    python benchmarks/preprocess.py [--rounds 5] [--size 416] [--images 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_facts, timed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = ("yolov2_voc", "yolov2_tiny_voc")


def shared_data() -> Path:
    return Path(os.environ.get("YOLOV2_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_images(limit: int) -> tuple[list[np.ndarray], str]:
    """RGB uint8 images, decoded (untimed), and where they come from."""
    from yolov2.data.images import decode_rgb

    folder = shared_data() / "voc100" / "JPEGImages"
    paths = sorted(folder.glob("*.jpg"))[:limit] if folder.is_dir() else []
    if paths:
        return [decode_rgb(p.read_bytes(), str(p)) for p in paths], f"voc100 ({folder})"
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(limit)], "synthetic 500x375"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from yolov2.models import build_model
    from yolov2.preprocess import letterbox_tensor

    load_average = os.getloadavg()[0]
    images, source = load_images(args.images)
    x = torch.rand(1, 3, args.size, args.size)
    models = {name: build_model(name, 20).eval() for name in MODELS}

    def letterbox_all(resize: str) -> Callable[[], None]:
        return lambda: [letterbox_tensor(im, args.size, args.size, resize) for im in images]

    def forward(model: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                model(x)

        return run

    per_item = {
        "letterbox_darknet": (letterbox_all("darknet"), len(images)),
        "letterbox_opencv": (letterbox_all("opencv"), len(images)),
        **{f"forward_{name}": (forward(model), 1) for name, model in models.items()},
    }
    for fn, _ in per_item.values():  # warm-up: imports, allocator, oneDNN primitives
        fn()
    cpu: dict[str, list[float]] = {k: [] for k in per_item}
    wall: dict[str, list[float]] = {k: [] for k in per_item}
    for _ in range(args.rounds):
        for name, (fn, count) in per_item.items():
            w, c = timed(fn)
            wall[name].append(w / count)
            cpu[name].append(c / count)
    ms = {k: statistics.median(v) * 1000 for k, v in cpu.items()}
    ms_wall = {k: statistics.median(v) * 1000 for k, v in wall.items()}

    def ratios(t: dict[str, float]) -> dict[str, float]:
        return {
            "darknet_vs_opencv_letterbox": round(t["letterbox_darknet"] / t["letterbox_opencv"], 2),
            "darknet_letterbox_per_yolov2_voc_forward": round(t["letterbox_darknet"] / t["forward_yolov2_voc"], 4),
            "darknet_letterbox_per_yolov2_tiny_voc_forward": round(
                t["letterbox_darknet"] / t["forward_yolov2_tiny_voc"], 4
            ),
            "opencv_letterbox_per_yolov2_voc_forward": round(t["letterbox_opencv"] / t["forward_yolov2_voc"], 4),
        }

    sizes = np.array([im.shape[:2] for im in images])
    print(
        json.dumps(
            {
                "benchmark": "preprocess",
                "images": len(images),
                "source": source,
                "source_pixels_median": int(np.median(sizes[:, 0] * sizes[:, 1])),
                "size": args.size,
                "batch": 1,
                **machine_facts(
                    torch.get_num_threads(),
                    "float32, NCHW (the forward passes; the letterbox in float32)",
                    "torch and OpenCV threads (one each)",
                ),
                "rounds": args.rounds,
                "timing": "process CPU time per image (letterbox) or per forward pass, median over rounds after "
                "one warm-up round (wall-clock figures alongside)",
                "cpu_ms": {k: round(v, 3) for k, v in ms.items()},
                "wall_ms": {k: round(v, 3) for k, v in ms_wall.items()},
                "ratios": ratios(ms),
                "ratios_wall": ratios(ms_wall),
                "load_average_1min": round(load_average, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
