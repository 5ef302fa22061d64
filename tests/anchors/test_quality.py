"""Tests of yolov2/anchors/quality.py: the mean IoU over k (the paper's Figure 2 curve) on VOC."""

from __future__ import annotations

import pytest

from anchors.reference import as_tuples, ref_best
from yolov2 import anchors as A


def test_iou_table_rises_with_k_on_voc(voc_wh):
    table = A.iou_table(voc_wh, range(1, 7))
    assert list(table) == [1, 2, 3, 4, 5, 6]
    values = list(table.values())
    assert all(0 < v <= 1 for v in values)
    assert values == sorted(values)
    # each entry is the mean IoU of real anchors: check one against the loop reference
    five = A.kmeans_anchors(voc_wh, 5)
    best = [ref_best(b, as_tuples(five.anchors))[1] for b in as_tuples(voc_wh)]
    assert table[5] == pytest.approx(sum(best) / len(best), abs=1e-12)
