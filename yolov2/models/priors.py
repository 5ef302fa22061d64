"""Darknet's anchor priors for the YOLOv2 variants: (w, h) in grid cells at stride 32.

From cfg/yolov2-voc.cfg and cfg/yolov2.cfg (``[region] anchors``); tiny YOLOv2 VOC's own are in
:mod:`yolov2.models.tiny`. A model's ``default_anchors`` is one of these.
"""

from __future__ import annotations

__all__ = ["VOC_ANCHORS", "COCO_ANCHORS"]

VOC_ANCHORS = [(1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053), (11.2364, 10.0071)]
COCO_ANCHORS = [(0.57273, 0.677385), (1.87446, 2.06253), (3.33843, 5.47434), (7.88282, 3.52778), (9.77052, 9.16828)]
