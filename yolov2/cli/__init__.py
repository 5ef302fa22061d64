"""The `yolov2` command: library tools that need no Ray and no MLflow.

    yolov2 model-summary --model yolov2_voc          # params, output shape at 416, GFLOPs (JSON)
    yolov2 predict --weights W --source IMG_OR_DIR --out DIR
    yolov2 export --weights W --format onnx|darknet --out FILE
    yolov2 convert-weights --input F --output G      # Darknet .weights <-> PyTorch checkpoint
    yolov2 eval-dets --gt GT --dets DETS --metric voc07|voc12|coco
    yolov2 env [--json] [--bench]                    # versions, devices, precision choice: for bug reports

Each subcommand lives in its own module here with ``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

COMMANDS = {
    "model-summary": "yolov2.cli.model_summary",
    "predict": "yolov2.cli.predict",
    "export": "yolov2.cli.export",
    "convert-weights": "yolov2.cli.convert_weights",
    "eval-dets": "yolov2.cli.eval_dets",
    "env": "yolov2.cli.env",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yolov2", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS.values():
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
