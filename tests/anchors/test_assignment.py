"""Tests of yolov2/anchors/assignment.py: the map step's sums against direct sums, and what assignment guarantees."""

from __future__ import annotations

import numpy as np
import pytest

from anchors.reference import as_tuples, ref_best, ref_iou
from yolov2 import anchors as A


def test_assign_stats_match_direct_sums(voc_wh):
    c = voc_wh[[0, 10, 20]]
    stats, assignment = A.assign(voc_wh, c, block_size=64)
    iou = [ref_best(b, as_tuples(c)) for b in as_tuples(voc_wh)]
    assert assignment.tolist() == [j for j, _ in iou]
    tw, th = stats.totals()
    for j in range(3):
        members = voc_wh[assignment == j]
        assert stats.counts[j] == len(members)
        assert tw[j] == pytest.approx(members[:, 0].sum(), rel=1e-13)
        assert th[j] == pytest.approx(members[:, 1].sum(), rel=1e-13)
    assert stats.mean_iou == pytest.approx(sum(v for _, v in iou) / len(iou), rel=1e-13)


def test_assignment_step_never_lowers_the_mean_iou(voc_wh):
    """The provable half of Lloyd: re-assigning to the best centroid cannot lower the mean IoU."""
    centroids = A.kmeans_pp_init(voc_wh, 5, np.random.default_rng(4))
    stats, assignment = A.assign(voc_wh, centroids)
    for _ in range(30):
        centroids = A.update_centroids(stats, "mean")
        kept = [ref_iou(b, tuple(centroids[a])) for b, a in zip(as_tuples(voc_wh), assignment)]
        stats, new_assignment = A.assign(voc_wh, centroids, assignment)
        assert stats.mean_iou >= sum(kept) / len(kept) - 1e-15
        if stats.changed == 0:
            break
        assignment = new_assignment
    assert stats.changed == 0
