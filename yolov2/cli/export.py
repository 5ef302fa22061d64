"""`yolov2 export`: a trained model file (model.pt) as ONNX, or as Darknet `.weights` + `.cfg` + `.names`.

    yolov2 export --weights model.pt --format onnx --out model.onnx [--with-decode] [--input-size 416]
    yolov2 export --weights model.pt --format darknet --out model.weights

The ONNX graph has dynamic batch, height and width (any size divisible by 32); `--input-size` is
the size traced. `--with-decode` adds the decode head (boxes xyxy normalised to the input,
objectness, class probabilities) so a consumer only needs the NMS.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from yolov2.errors import ConfigError
from yolov2.export import MIN_OPSET, export_darknet, export_onnx
from yolov2.inference import load_model_file


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model file as ONNX or Darknet weights",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights", required=True, help="a model file (model.pt) written by training or convert-weights")
    p.add_argument("--format", required=True, choices=["onnx", "darknet"], help="what to write")
    p.add_argument("--out", required=True, help="the file to write (.onnx, or .weights with .cfg/.names beside it)")
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="input side traced for ONNX, and the [net] size of the Darknet cfg (default: the model's)",
    )
    p.add_argument("--with-decode", action="store_true", help="ONNX: append the decode head")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (default {MIN_OPSET})")
    p.add_argument("--static", action="store_true", help="ONNX: fixed batch 1 and input size instead of dynamic axes")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model, spec = load_model_file(args.weights)
    input_size = args.input_size or spec.input_size
    if args.format == "onnx":
        path = export_onnx(
            model,
            args.out,
            input_size,
            opset=args.opset,
            dynamic=not args.static,
            with_decode=args.with_decode,
            anchors=spec.anchors,
            num_classes=spec.num_classes,
            tree=spec.word_tree(),
        )
        written = [path]
    elif spec.tree is not None:
        raise ConfigError(f"{args.weights}: a YOLO9000 (tree) model exports to ONNX only, not to Darknet files yet")
    else:
        written = export_darknet(
            model,
            Path(args.out),
            name=spec.name,
            anchors=spec.anchors,
            width_multiplier=spec.width_multiplier,
            input_size=input_size,
            class_names=spec.class_names,
        )
    for path in written:
        print(f"wrote {path}")
    return 0
