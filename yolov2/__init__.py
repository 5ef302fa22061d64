"""YOLOv2 (YOLO9000, Darknet-exact) in PyTorch: the library half of yolov2-pipeline.

This package is pure PyTorch/NumPy: it never imports Ray or MLflow (those live in ``pipelines/``).
"""

import os

# albumentations checks PyPI for updates on import; our machines (and many clusters) have no
# internet, so the check only costs a timeout. Users never need to know: we switch it off here.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
