"""Tests of yolov2/anchors/units.py: normalised anchors <-> Darknet's grid-cell anchors."""

from __future__ import annotations

import numpy as np
import pytest

from yolov2 import anchors as A
from yolov2.errors import ConfigError


def test_grid_units_are_darknet_anchor_units():
    # Darknet's yolov2-voc anchors are grid cells at 416 / 32 = 13 cells
    voc = np.array([[1.3221, 1.73145], [11.2364, 10.0071]])
    normalised = voc / 13.0
    np.testing.assert_allclose(A.to_grid_units(normalised, 416), voc, rtol=1e-15)
    np.testing.assert_allclose(A.to_grid_units(normalised, 608), voc * 19 / 13, rtol=1e-15)
    np.testing.assert_allclose(A.from_grid_units(voc, 416), normalised, rtol=1e-15)
    with pytest.raises(ConfigError, match="multiple of the stride"):
        A.to_grid_units(normalised, 400)
