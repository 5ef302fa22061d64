"""Fixtures for the tests of yolov2/anchors/: the box shapes of the real VOC sample (../shared/data/voc100)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anchors.reference import read_voc_xml


@pytest.fixture(scope="module")
def voc_images(shared_data: Path) -> list[dict]:
    return read_voc_xml(shared_data / "voc100" / "Annotations")


@pytest.fixture(scope="module")
def voc_wh(voc_images: list[dict]) -> np.ndarray:
    """Normalised shapes of every VOC box (difficult included): inclusive pixels, so + 1."""
    return np.array(
        [
            ((o[2] - o[0] + 1) / im["width"], (o[3] - o[1] + 1) / im["height"])
            for im in voc_images
            for o in im["objects"]
        ]
    )
