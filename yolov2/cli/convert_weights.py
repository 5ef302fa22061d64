"""`yolov2 convert-weights`: Darknet `.weights` <-> our model file (model.pt).

    yolov2 convert-weights --input yolov2-voc.weights --cfg yolov2-voc.cfg --names voc.names --output model.pt
    yolov2 convert-weights --input yolov2-voc.weights --model yolov2_voc --num-classes 20 --output model.pt
    yolov2 convert-weights --input model.pt --output yolov2.weights     # also writes yolov2.cfg (+ .names)

The direction follows the input's suffix: `.weights` is Darknet, anything else a model file
(loaded with torch.load(weights_only=True)). From Darknet, the anchors and classes come from the
cfg's [region] (with --cfg) or are the named model's defaults. The Darknet header's `seen` count is
not kept in model.pt; `--seen` sets it when writing `.weights`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from yolov2.convert import darknet_to_model
from yolov2.export import export_darknet
from yolov2.inference import load_model_file, save_model_file
from yolov2.io import read_names
from yolov2.models import MODELS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert-weights",
        help="Darknet .weights <-> model file (model.pt)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--input", required=True, help="a Darknet .weights file, or a model file (model.pt)")
    p.add_argument("--output", required=True, help="model.pt (from Darknet), or X.weights (to Darknet)")
    p.add_argument("--cfg", help="from Darknet: the network's .cfg (anchors and classes from its [region])")
    p.add_argument("--model", choices=list(MODELS), help="from Darknet: the named model the weights belong to")
    p.add_argument("--num-classes", type=int, help="from Darknet without --cfg: number of classes")
    p.add_argument("--width-multiplier", type=float, default=1.0, help="from Darknet: channel multiplier (default 1)")
    p.add_argument("--names", help="from Darknet: a .names file (one class name per line)")
    p.add_argument("--input-size", type=int, default=None, help="the model's input side (default: cfg's, or 416)")
    p.add_argument(
        "--batch-norm",
        choices=["darknet", "alexeyab"],
        default="darknet",
        help="from Darknet: which Darknet trained the weights, for its batch-norm arithmetic at inference: "
        "darknet = pjreddie's, (x - mean) / (sqrt(var) + 1e-6), as yolov2-voc.weights (default); "
        "alexeyab = AlexeyAB's fork, (x - mean) / sqrt(var + 1e-5)",
    )
    p.add_argument("--seen", type=int, default=0, help="to Darknet: images-seen count for the header (default 0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    source = Path(args.input)
    if source.suffix == ".weights":
        names = read_names(args.names) if args.names else []
        model, spec, report = darknet_to_model(
            source,
            cfg=args.cfg,
            name=args.model,
            num_classes=args.num_classes,
            width_multiplier=args.width_multiplier,
            class_names=names,
            input_size=args.input_size,
            batch_norm=args.batch_norm,
        )
        save_model_file(args.output, model, spec)
        print(report)
        print(f"wrote {args.output} ({spec.name}, {spec.num_classes} classes, {len(spec.anchors)} anchors)")
        return 0
    model, spec = load_model_file(source)
    written = export_darknet(
        model,
        Path(args.output),
        name=spec.name,
        anchors=spec.anchors,
        width_multiplier=spec.width_multiplier,
        input_size=args.input_size or spec.input_size,
        class_names=spec.class_names,
        seen=args.seen,
    )
    for path in written:
        print(f"wrote {path}")
    return 0
