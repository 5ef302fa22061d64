"""The library's settings: plain dataclasses that are the argument types of the functions that use them.

Each default is written here once. ``pipelines/config.py`` reads them from YAML (``train.lr``,
``evaluate.conf_thresh``: the keys stay flat) into the pipeline's sections, which embed these types; library
code takes these types and never the pipeline's.

* :class:`ModelConfig`: the network (the train stage unpacks it into a ``ModelSpec``).
* :class:`LossConfig`: :func:`yolov2.loss.region_loss`.
* :class:`AugmentConfig`: :class:`yolov2.data.augment.Augmentation`.
* :class:`LoopConfig`: :class:`yolov2.engine.trainer.LoopSettings` (length, learning-rate schedule, cadence).
* :class:`PredictConfig`: :class:`yolov2.inference.Predictor`.
* :class:`SyntheticConfig`: :mod:`yolov2.data.synthetic`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SyntheticConfig:
    """The generated demo dataset (yolov2/data/synthetic.py)."""

    num_train: int = 400
    num_val: int = 60
    num_test: int = 60
    image_size: tuple[int, int] = (320, 240)  # width, height
    max_objects: int = 8
    min_object_size: float = 14.0  # pixels: the smallest shape's nominal size (sizes are log-uniform up to 45%)
    min_visible: float = 0.4  # every object keeps at least this fraction of its area visible under later ones
    seed: int = 0
    write_coco: bool = True


@dataclass
class ModelConfig:
    """The network (yolov2/models/)."""

    name: str = "yolov2_voc"  # yolov2_voc, yolov2_coco, yolov2_tiny_voc, yolov2_tiny_coco, yolov2_resnet18..101
    cfg: str | None = None  # build from a Darknet .cfg file instead of `name`
    width_multiplier: float = 1.0  # narrow the network (channel counts x this), for CPU demos
    reorg: Literal["darknet", "pixel_unshuffle"] = "darknet"
    sppf: bool = False
    decoupled_head: bool = False
    # batch norm at inference: darknet = pjreddie's (x - mean) / (sqrt(var) + 1e-6), the one yolov2-voc.weights
    # was trained with; alexeyab = AlexeyAB's fork, (x - mean) / sqrt(var + 1e-5)
    batch_norm: Literal["darknet", "alexeyab"] = "darknet"
    # YOLO9000: a Darknet .tree file (yolov2/wordtree.py); the head's classes are its nodes, a softmax per group of
    # siblings, and each dataset class name must name a node (a label trains its path up to the root)
    tree: str | None = None


@dataclass
class LossConfig:
    """Region loss (yolov2/loss.py); defaults are yolov2-voc.cfg's [region] values."""

    mode: Literal["darknet", "modern"] = "darknet"
    thresh: float = 0.6
    object_scale: float = 5.0
    noobject_scale: float = 1.0
    class_scale: float = 1.0
    coord_scale: float = 1.0
    prior_scale: float = 0.01
    prior_seen: int = 12800
    rescore: bool = True
    box_loss: Literal["mse", "ciou", "eiou"] = "mse"  # modern mode only
    coord_wh_weight: bool = (
        False  # coord scale x (2 - w*h), pjreddie's region_layer.c since 60e952ba (2017); off = YOLOv2 release
    )
    # YOLO9000's classification-only images: the prediction that learns the label has its objectness pushed up
    # to CLASS_ONLY_OBJECTNESS (push: the paper, Darknet of January 2017) or gets no objectness gradient (zero:
    # later Darknet)
    class_only_objectness: Literal["push", "zero"] = "push"


@dataclass
class AugmentConfig:
    """What happens to each training image (yolov2/data/augment.py); the defaults are yolov2-voc.cfg's recipe."""

    augment: Literal["darknet", "optimized", "none"] = "darknet"  # none: no jitter, colour, flip, mosaic or mixup
    jitter: float = 0.3
    hue: float = 0.1
    saturation: float = 1.5
    exposure: float = 1.5
    mosaic: float = 0.0  # probability per sample (0 = off)
    mixup: float = 0.0


@dataclass
class LoopConfig:
    """The training loop (yolov2/engine/trainer.py): how long it runs, its learning-rate schedule, its cadence."""

    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    lr: float = 0.001
    schedule: Literal["steps", "cosine"] = "steps"
    burn_in: int = 1000
    steps: list[int] = field(default_factory=lambda: [40000, 60000])
    scales: list[float] = field(default_factory=lambda: [0.1, 0.1])
    warmup: int = 0
    log_every: int = 10
    val_every: int = 1
    checkpoint_every: int = 1  # epochs


@dataclass
class PredictConfig:
    """Pre- and post-processing of a trained detector (yolov2/inference.py ``Predictor``): Darknet's by default."""

    input_size: int = 416
    letterbox: bool = True
    # darknet: Darknet's float bilinear resize_image (its input to the pixel rounding); opencv: INTER_LINEAR on
    # uint8, faster and a few grey levels off (benchmarks/preprocess.py measures both)
    resize: Literal["darknet", "opencv"] = "darknet"
    conf_thresh: float = 0.005
    nms_thresh: float = 0.45
    max_det: int = 100
    max_candidates: int | None = None  # best (box, class) pairs per image kept before NMS; None: all (Darknet)
    hier_thresh: float = 0.5  # YOLO9000: the tree walk descends while P(node) > this (Darknet's -hier)
    # YOLO9000: score boxes against the dataset classes' ancestors at this depth of the tree (0: its roots), the
    # ground truth relabelled the same way; None: against the dataset's classes themselves
    tree_depth: int | None = None
    # YOLO9000: label each box with the node where the tree walk stops, scored by its objectness (Darknet's
    # detector, for open-ended labels), instead of scoring a class list
    tree_walk: bool = False
