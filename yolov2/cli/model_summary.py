"""`yolov2 model-summary`: parameters, output shape and GFLOPs of a named model or a Darknet .cfg, as JSON."""

from __future__ import annotations

import argparse
import json

from torch import nn

from yolov2.models import MODELS, build_from_darknet_cfg, build_model, model_summary


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("model-summary", help="params, output shape and GFLOPs (JSON)", description=__doc__)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", choices=list(MODELS), help="a named model")
    source.add_argument("--cfg", help="a Darknet .cfg file (e.g. yolov2-voc.cfg)")
    p.add_argument("--num-classes", type=int, default=20, help="classes, for --model (default 20)")
    p.add_argument("--width-multiplier", type=float, default=1.0, help="channel multiplier, for --model")
    p.add_argument("--input-size", type=int, default=416, help="square input side in pixels (default 416)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model: nn.Module
    if args.cfg:
        model = build_from_darknet_cfg(args.cfg)
        name = args.cfg
    else:
        model = build_model(args.model, args.num_classes, width_multiplier=args.width_multiplier)
        name = args.model
    summary = {"model": name, **model_summary(model, args.input_size)}
    print(json.dumps(summary, indent=2))
    return 0
