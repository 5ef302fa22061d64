"""Shapes-9k: a YOLO9000 small enough to train on a CPU, on the generated shapes (:mod:`yolov2.data.synthetic`).

Why: YOLO9000 detects classes it never saw with a box, by learning them from classification-only images and
sharing the box knowledge through a WordTree. Here the tree has the five shapes as roots (group 0) and, under
each, three colour leaves ``<shape>_<bucket>``: 20 nodes. The generator draws an object's colour independently of
its shape, so a leaf adds something a shape detector cannot know, and it is learnt only from crops.

Colour buckets (:func:`hue_bucket`): the generator jitters a palette colour by up to 25 per channel, so the
nine chromatic palette colours fall in hue clusters with gaps between them, and the three ranges cut in the gaps:

* ``warm`` [335, 360) and [0, 90) degrees: red, orange, brown, yellow (jittered: red 343-17, yellow up to 70);
* ``green`` [90, 205): green, cyan (green from 104, cyan up to 201);
* ``blue`` [205, 335): blue, purple, magenta (blue from 210, magenta up to 324).

White, black and grey are achromatic: chroma (largest minus smallest channel) below 50. Jittered, every one of
them stays below (its channels lie within 25 of a common value) and every chromatic colour stays above (brown,
the dullest, keeps red - blue > 50), so the threshold splits the generator's colours exactly.

The samples, each ``(key, JPEG bytes, ImageRecord)`` for :func:`yolov2.data.shards.write_shard_bytes`, each kind
from its own generator split (no image is in two sets), chromatic colours only except the grey set:

* :func:`detection_samples`: scenes whose boxes carry only the shape node (the detection set knows no colour);
* :func:`class_only_samples`: one object cropped with a random margin, labelled with its colour leaf, no box
  (:func:`~yolov2.data.records.class_only_record`);
* :func:`leaf_test_samples`: scenes whose boxes carry the colour leaf (their shape is its parent);
* :func:`grey_test_samples`: scenes drawn in grey only, a colour no training image has, labelled by shape.
"""

from __future__ import annotations

import colorsys
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from yolov2.data.records import ImageRecord, class_only_record
from yolov2.data.synthetic import _PALETTE, JPEG_QUALITY, SHAPE_CLASSES, SyntheticScene, generate_scene, image_rng
from yolov2.wordtree import WordTree

__all__ = [
    "ACHROMATIC_CHROMA",
    "BUCKETS",
    "CHROMATIC_PALETTE",
    "GREY_PALETTE",
    "HUE_EDGES",
    "LEAF_NODES",
    "SHAPE_NODES",
    "Sample",
    "SceneSettings",
    "class_only_samples",
    "crop_box",
    "detection_samples",
    "grey_test_samples",
    "hue_bucket",
    "leaf_node",
    "leaf_test_samples",
    "shapes9k_tree",
]

BUCKETS: tuple[str, ...] = ("warm", "green", "blue")
HUE_EDGES = (90.0, 205.0, 335.0)  # degrees: green from the first, blue from the second, warm from the third
ACHROMATIC_CHROMA = 50.0  # max - min channel below this: no hue (white, black, grey)
NUM_SHAPES = len(SHAPE_CLASSES)
SHAPE_NODES: tuple[int, ...] = tuple(range(NUM_SHAPES))
LEAF_NODES: tuple[int, ...] = tuple(range(NUM_SHAPES, NUM_SHAPES * (1 + len(BUCKETS))))

Sample = tuple[str, bytes, ImageRecord]


def shapes9k_tree() -> WordTree:
    """The 20-node tree: the shapes (nodes 0-4, :data:`SHAPE_CLASSES` order), then each shape's three leaves."""
    names = [*SHAPE_CLASSES, *(f"{shape}_{bucket}" for shape in SHAPE_CLASSES for bucket in BUCKETS)]
    parents = [-1] * NUM_SHAPES + [shape for shape in range(NUM_SHAPES) for _ in BUCKETS]
    return WordTree(tuple(names), tuple(parents))


def leaf_node(shape: int, bucket: int) -> int:
    """The tree node of shape ``shape``'s colour leaf ``bucket``."""
    if not (0 <= shape < NUM_SHAPES and 0 <= bucket < len(BUCKETS)):
        raise ValueError(f"no leaf for shape {shape}, bucket {bucket}")
    return NUM_SHAPES + len(BUCKETS) * shape + bucket


def hue_bucket(rgb: Sequence[float] | np.ndarray) -> int | None:
    """The colour bucket (index into :data:`BUCKETS`) of an RGB colour (0-255), None when achromatic."""
    r, g, b = (float(c) for c in rgb)
    if max(r, g, b) - min(r, g, b) < ACHROMATIC_CHROMA:
        return None
    hue = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)[0] * 360.0
    if HUE_EDGES[0] <= hue < HUE_EDGES[1]:
        return 1
    if HUE_EDGES[1] <= hue < HUE_EDGES[2]:
        return 2
    return 0


CHROMATIC_PALETTE = _PALETTE[[hue_bucket(c) is not None for c in _PALETTE]]  # the nine coloured entries
GREY_PALETTE = np.array([(150, 150, 150)], np.float32)  # the generator's grey: the unseen colour


@dataclass(frozen=True)
class SceneSettings:
    """The generated images: scene size and content, and the crops' margins.

    Square scenes at the network input's size waste no input on letterbox padding. The crops come from scenes of
    at most ``crop_max_objects`` objects (one: the labelled object is alone, as in a classification image), with a
    margin on each side drawn from ``margin`` (a fraction of the object's box width, height), so that the object
    fills from a sixth to two thirds of the crop side: resized to the input, crops show objects at the scenes'
    sizes and beyond. That matters because each anchor has its own class weights, and a crop trains the anchor
    that fits its object.
    """

    seed: int = 0
    width: int = 224
    height: int = 224
    max_objects: int = 6
    min_size: float = 32.0  # one grid cell at stride 32
    crop_max_objects: int = 1
    margin: tuple[float, float] = (0.25, 2.5)
    jpeg_quality: int = JPEG_QUALITY


def _scene(
    settings: SceneSettings, split: str, index: int, palette: np.ndarray, max_objects: int | None = None
) -> SyntheticScene:
    s = settings
    objects = s.max_objects if max_objects is None else max_objects
    return generate_scene(s.seed, index, split, s.width, s.height, objects, min_size=s.min_size, palette=palette)


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    """RGB uint8 -> JPEG bytes."""
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return data.tobytes()


def _leaf_of(scene: SyntheticScene, i: int) -> int:
    shape = scene.shapes[i]
    bucket = hue_bucket(shape.colour)
    if bucket is None:
        raise ValueError(f"{scene.record.image_id}: object {i} has the achromatic colour {shape.colour}")
    return leaf_node(shape.label, bucket)


def detection_samples(settings: SceneSettings, count: int, split: str = "det") -> list[Sample]:
    """``count`` chromatic scenes, each box labelled with its shape node only."""
    return _shape_labelled(settings, count, split, CHROMATIC_PALETTE)


def leaf_test_samples(settings: SceneSettings, count: int, split: str = "test") -> list[Sample]:
    """``count`` chromatic scenes, each box labelled with its colour leaf (the truth of mAP at the leaves)."""
    out = []
    for index in range(count):
        scene = _scene(settings, split, index, CHROMATIC_PALETTE)
        leaves = [_leaf_of(scene, i) for i in range(len(scene.shapes))]
        record = dataclasses.replace(scene.record, labels=np.array(leaves, np.int32))
        out.append((record.image_id, _jpeg(scene.image, settings.jpeg_quality), record))
    return out


def grey_test_samples(settings: SceneSettings, count: int, split: str = "grey") -> list[Sample]:
    """``count`` scenes drawn in grey only (a colour no training image has), labelled by shape node."""
    return _shape_labelled(settings, count, split, GREY_PALETTE)


def _shape_labelled(settings: SceneSettings, count: int, split: str, palette: np.ndarray) -> list[Sample]:
    """``count`` scenes of ``split`` in ``palette``, as the generator labels them: by shape node."""
    out = []
    for index in range(count):
        scene = _scene(settings, split, index, palette)
        out.append((scene.record.image_id, _jpeg(scene.image, settings.jpeg_quality), scene.record))
    return out


def crop_box(box: Sequence[float] | np.ndarray, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel box ``box`` (xyxy) grown by ``margin`` x its size on each side, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = margin * (x2 - x1), margin * (y2 - y1)
    return (
        max(0, int(np.floor(x1 - dx))),
        max(0, int(np.floor(y1 - dy))),
        min(width, int(np.ceil(x2 + dx))),
        min(height, int(np.ceil(y2 + dy))),
    )


def class_only_samples(settings: SceneSettings, count: int, split: str = "classify") -> list[Sample]:
    """``count`` classification-only crops labelled with their colour leaf: every object of the chromatic scenes
    of ``split`` (at most ``settings.crop_max_objects`` each) in turn, each cropped with a margin drawn from
    ``settings.margin`` (seeded per scene)."""
    out: list[Sample] = []
    lo, hi = settings.margin
    index = 0
    while len(out) < count:
        scene = _scene(settings, split, index, CHROMATIC_PALETTE, settings.crop_max_objects)
        rng = image_rng(settings.seed, f"{split}-crops", index)
        for i, shape in enumerate(scene.shapes[: count - len(out)]):
            x1, y1, x2, y2 = crop_box(shape.box, float(rng.uniform(lo, hi)), settings.width, settings.height)
            image_id = f"{scene.record.image_id}_{i}"
            path = f"JPEGImages/{image_id}.jpg"
            record = class_only_record(image_id, split, path, x2 - x1, y2 - y1, _leaf_of(scene, i))
            out.append((image_id, _jpeg(scene.image[y1:y2, x1:x2], settings.jpeg_quality), record))
        index += 1
    return out
