"""Anchor shapes by k-means with the distance ``d = 1 - IoU`` (YOLOv2 paper, "Dimension Clusters").

Boxes are compared by shape only, both centred: ``IoU((w, h), (cw, ch))`` as in
:func:`yolov2.boxes.wh_iou_np`. Shapes are **normalised** by the image size (w / image width,
h / image height), float64 (N, 2); :func:`to_grid_units` turns anchors into Darknet's
``anchors=`` units (grid cells at stride 32).

The algorithm is written as map and reduce steps so that one code path runs single-process and
distributed (``pipelines/anchors.py`` runs the map as Ray tasks):

* map: :func:`assign` on one partition of boxes -> :class:`AssignStats` (per-cluster sums of w
  and h, counts, the sum of best IoU, the changed count) plus the partition's new assignment, which
  the partition keeps for the next call (so only O(k + blocks) numbers travel to the driver);
* reduce: :func:`reduce_stats` combines partials; :func:`update_centroids` gives the new centroids;
* rarely, an empty cluster: :func:`farthest_boxes` on each partition and :func:`merge_farthest`.

:func:`lloyd` drives those steps through any :class:`AssignMapper` (here :class:`LocalMapper`;
the Ray stage supplies its own), and :func:`kmeans_anchors` adds k-means++ restarts.

**Exactness.** Sums are taken per block of ``block_size`` boxes (global box index // block_size),
sequentially in box order, and the block partials are then added in block order. Partitions start
on block boundaries (:func:`partition_bounds`), so a distributed run produces the very same block
partials as a single-process run and every centroid is bit-identical, whatever the number of
partitions or the order in which their results arrive. The numba kernel and the NumPy path compute
the same partials (see :mod:`yolov2.anchors.kernels`).

Modules, one concept each:

* :mod:`~yolov2.anchors.shapes`: box shapes from a records table, and their validation;
* :mod:`~yolov2.anchors.assignment`: the map step (IoU assignment, block partial sums, NumPy path);
* :mod:`~yolov2.anchors.kernels`: the same map step compiled with numba (imported only when used);
* :mod:`~yolov2.anchors.partitions`: partitions, the reduce, empty-cluster candidates, mappers;
* :mod:`~yolov2.anchors.seeding`: k-means++ initialisation and the seeds of the restarts;
* :mod:`~yolov2.anchors.kmeans`: the centroid update, Lloyd's iterations and the restarts;
* :mod:`~yolov2.anchors.quality`: the mean IoU of anchors and its curve over k;
* :mod:`~yolov2.anchors.units`: normalised <-> Darknet grid-cell anchors.
"""

from __future__ import annotations

from yolov2.anchors.assignment import BLOCK_SIZE, IOU_LANES, MAX_K, AssignStats, Backend, assign
from yolov2.anchors.kmeans import AnchorResult, Update, best_result, kmeans_anchors, lloyd, update_centroids
from yolov2.anchors.partitions import (
    AssignMapper,
    FarthestBoxes,
    LocalMapper,
    farthest_boxes,
    merge_farthest,
    partition_bounds,
    reduce_stats,
)
from yolov2.anchors.quality import iou_table, mean_iou
from yolov2.anchors.seeding import kmeans_pp_init, restart_seeds
from yolov2.anchors.shapes import MAX_SHAPE, MIN_SHAPE, box_shapes_from_table, validate_shapes
from yolov2.anchors.units import from_grid_units, to_grid_units

__all__ = [
    "BLOCK_SIZE",
    "IOU_LANES",
    "MAX_K",
    "MAX_SHAPE",
    "MIN_SHAPE",
    "AnchorResult",
    "AssignMapper",
    "AssignStats",
    "Backend",
    "FarthestBoxes",
    "LocalMapper",
    "Update",
    "assign",
    "best_result",
    "box_shapes_from_table",
    "farthest_boxes",
    "from_grid_units",
    "iou_table",
    "kmeans_anchors",
    "kmeans_pp_init",
    "lloyd",
    "mean_iou",
    "merge_farthest",
    "partition_bounds",
    "reduce_stats",
    "restart_seeds",
    "to_grid_units",
    "update_centroids",
    "validate_shapes",
]
