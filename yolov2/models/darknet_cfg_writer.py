"""The inverse of :mod:`yolov2.models.darknet_cfg`: the Darknet ``.cfg`` text of a named model.

Only the models Darknet itself can run have a cfg: ``yolov2_voc`` / ``yolov2_coco`` (Darknet-19 +
passthrough, as ``yolov2-voc.cfg`` / ``yolov2.cfg``) and ``yolov2_tiny_voc`` / ``yolov2_tiny_coco``
(``yolov2-tiny-voc.cfg`` / ``yolov2-tiny.cfg``), at any width multiplier, with Darknet's reorg and
the plain head. SPPF, the decoupled head, ``pixel_unshuffle`` and the ResNet backbones have no
Darknet layer and are refused. The layer list follows the same constants as the PyTorch models, so
``build_from_darknet_cfg`` of the text gives a network that loads the model's ``.weights``.
"""

from __future__ import annotations

from collections.abc import Sequence

from yolov2.errors import ConfigError
from yolov2.models.darknet19 import STAGE16, STAGE32
from yolov2.models.layers import scaled_channels

DARKNET_MODELS = ("yolov2_voc", "yolov2_coco", "yolov2_tiny_voc", "yolov2_tiny_coco")
TINY_FILTERS = (16, 32, 64, 128, 256, 512)  # tiny YOLOv2: 3x3 conv + maxpool pairs (the last pool 2x2/1)

# [net] training options of yolov2-voc.cfg (Darknet reads them only when training).
_NET_OPTIONS = """momentum=0.9
decay=0.0005
angle=0
saturation=1.5
exposure=1.5
hue=.1

learning_rate=0.001
burn_in=1000
max_batches=80200
policy=steps
steps=40000,60000
scales=.1,.1
"""


def _conv(filters: int, size: int, batch_normalize: bool = True, activation: str = "leaky") -> str:
    bn = "batch_normalize=1\n" if batch_normalize else ""
    return f"[convolutional]\n{bn}filters={filters}\nsize={size}\nstride=1\npad=1\nactivation={activation}\n"


def _maxpool(stride: int) -> str:
    return f"[maxpool]\nsize=2\nstride={stride}\n"


def _region(
    anchors: Sequence[Sequence[float]], num_classes: int, jitter: float, thresh: float, object_scale: float,
    noobject_scale: float, class_scale: float, coord_scale: float, rescore: bool,
) -> str:  # fmt: skip
    values = ", ".join(f"{float(w)!r},{float(h)!r}" for w, h in anchors)  # shortest exact repr
    return (
        f"[region]\nanchors={values}\nbias_match=1\nclasses={num_classes}\ncoords=4\nnum={len(anchors)}\n"
        f"softmax=1\njitter={jitter:g}\nrescore={int(rescore)}\n\nobject_scale={object_scale:g}\n"
        f"noobject_scale={noobject_scale:g}\nclass_scale={class_scale:g}\ncoord_scale={coord_scale:g}\n\n"
        f"absolute=1\nthresh={thresh:g}\nrandom=1\n"
    )


def _yolov2_layers(num_classes: int, num_anchors: int, width_multiplier: float) -> list[str]:
    layers: list[str] = []
    passthrough_index = -1
    for stage in (STAGE16, STAGE32):
        for item in stage:
            if isinstance(item, tuple):  # (filters, size) of a conv; else "M", a maxpool
                filters, size = item
                layers.append(_conv(scaled_channels(filters, width_multiplier), size))
            else:
                layers.append(_maxpool(2))
        if stage is STAGE16:
            passthrough_index = len(layers) - 1  # the stride-16 map the [route] reaches back to
    head_c = scaled_channels(1024, width_multiplier)
    layers += [_conv(head_c, 3), _conv(head_c, 3)]
    layers.append(f"[route]\nlayers={passthrough_index - len(layers)}\n")
    layers.append(_conv(scaled_channels(64, width_multiplier), 1))
    layers.append("[reorg]\nstride=2\n")
    layers.append("[route]\nlayers=-1,-4\n")  # reorg output first, then the second head conv
    layers.append(_conv(head_c, 3))
    layers.append(_conv(num_anchors * (5 + num_classes), 1, batch_normalize=False, activation="linear"))
    return layers


def _tiny_layers(num_classes: int, num_anchors: int, width_multiplier: float, head_channels: int) -> list[str]:
    layers: list[str] = []
    for i, filters in enumerate(TINY_FILTERS):
        last = i == len(TINY_FILTERS) - 1
        layers += [_conv(scaled_channels(filters, width_multiplier), 3), _maxpool(1 if last else 2)]
    layers.append(_conv(scaled_channels(1024, width_multiplier), 3))
    layers.append(_conv(scaled_channels(head_channels, width_multiplier), 3))
    layers.append(_conv(num_anchors * (5 + num_classes), 1, batch_normalize=False, activation="linear"))
    return layers


def darknet_cfg_text(
    name: str,
    num_classes: int,
    anchors: Sequence[Sequence[float]],
    width_multiplier: float = 1.0,
    input_size: int = 416,
    *,
    thresh: float = 0.6,
    object_scale: float = 5.0,
    noobject_scale: float = 1.0,
    class_scale: float = 1.0,
    coord_scale: float = 1.0,
    rescore: bool = True,
) -> str:
    """The ``.cfg`` text of model ``name`` (one of :data:`DARKNET_MODELS`) with ``num_classes``
    classes and ``anchors`` ((w, h) grid cells at stride 32, one per anchor), for a square
    ``input_size`` (the [net] width/height). The [region] loss options default to yolov2-voc.cfg's.
    """
    if name not in DARKNET_MODELS:
        raise ConfigError(
            f"model {name!r} has no Darknet cfg; Darknet can run {', '.join(DARKNET_MODELS)} "
            "(without SPPF or the decoupled head)"
        )
    if num_classes < 1 or not anchors:
        raise ConfigError(
            f"darknet_cfg_text: need num_classes >= 1 and at least one anchor, got {num_classes}, {len(anchors)}"
        )
    if input_size <= 0 or input_size % 32:
        raise ConfigError(f"darknet_cfg_text: input size {input_size} must be a positive multiple of 32")
    if name.startswith("yolov2_tiny"):
        head = 1024 if name == "yolov2_tiny_voc" else 512
        layers = _tiny_layers(num_classes, len(anchors), width_multiplier, head)
        jitter = 0.2
    else:
        layers = _yolov2_layers(num_classes, len(anchors), width_multiplier)
        jitter = 0.3
    net = f"[net]\n# Testing\nbatch=1\nsubdivisions=1\nheight={input_size}\nwidth={input_size}\nchannels=3\n"
    region = _region(
        anchors, num_classes, jitter, thresh, object_scale, noobject_scale, class_scale, coord_scale, rescore
    )
    header = f"# {name} (width multiplier {width_multiplier:g}), written by yolov2-pipeline\n"
    return header + "\n".join([net + _NET_OPTIONS, *layers, region])
