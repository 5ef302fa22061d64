"""Detection metrics: VOC AP (devkit rules), COCO mAP (pycocotools' definitions), and error analysis.

``voc.py`` and ``coco.py`` compute the numbers, ``analysis.py`` the curves, confusion matrix and error
breakdown, ``figures.py`` draws them (matplotlib, no display needed), ``formats.py`` reads ground
truth and detections from files for ``yolov2 eval-dets``. All of them read the same inputs: records
(``yolov2.data.records.ImageRecord``) and a :class:`DetectionTable`, both in absolute pixels,
0-based continuous xyxy.
"""

from yolov2.metrics.coco import CocoResult, coco_evaluate, default_backend, evaluate_category_chunk
from yolov2.metrics.detections import DETECTION_SCHEMA, DetectionTable
from yolov2.metrics.voc import VocResult, voc_ap, voc_evaluate

__all__ = [
    "DETECTION_SCHEMA",
    "DetectionTable",
    "VocResult",
    "voc_ap",
    "voc_evaluate",
    "CocoResult",
    "coco_evaluate",
    "default_backend",
    "evaluate_category_chunk",
]
