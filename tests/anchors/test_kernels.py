"""Tests of yolov2/anchors/kernels.py: the numba kernel gives the NumPy path's results bit for bit."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from anchors.reference import assert_same_result, lognormal_wh, tie_heavy_wh
from yolov2 import anchors as A
from yolov2.boxes import wh_iou_np

HAS_NUMBA = importlib.util.find_spec("numba") is not None


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("make", [tie_heavy_wh, lognormal_wh])
def test_numba_and_numpy_backends_agree_exactly(make):
    wh = A.validate_shapes(make(9000, 1))
    rng = np.random.default_rng(2)
    for k in (1, 2, 5, 9):
        centroids = wh[rng.choice(len(wh), k, replace=False)]
        if make is tie_heavy_wh:
            centroids = np.array(
                [
                    [0.25, 0.5],
                    [0.5, 0.25],
                    [0.5, 0.5],
                    [0.25, 0.25],
                    [1.0, 0.125],
                    [0.125, 1.0],
                    [0.75, 0.75],
                    [0.5, 1.0],
                    [1.0, 0.5],
                ]
            )[:k]
        if make is lognormal_wh and k > 1:
            # near-duplicates: IoUs a few ulps apart, where cross-multiplication alone is not decisive
            centroids[1:] = centroids[0] * (1 + rng.integers(-3, 4, size=(k - 1, 2)) * 2e-16)
        previous = rng.integers(0, k, size=len(wh)).astype(np.uint8)
        fast, a_fast = A.assign(wh, centroids, previous, backend="numba", block_size=1024)
        slow, a_slow = A.assign(wh, centroids, previous, backend="numpy", block_size=1024)
        single_thread, _ = A.assign(wh, centroids, previous, backend="numba", block_size=1024, num_threads=1)
        np.testing.assert_array_equal(a_fast, a_slow)
        np.testing.assert_array_equal(single_thread.sum_w, fast.sum_w)  # thread count changes nothing
        np.testing.assert_array_equal(a_slow, wh_iou_np(wh, centroids).argmax(axis=1))
        for name in ("sum_w", "sum_h", "sum_iou", "counts"):
            np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
        assert fast.changed == slow.changed == int((a_slow != previous).sum())
    assert_same_result(
        A.kmeans_anchors(wh, 5, seed=1, n_init=2, backend="numba"),
        A.kmeans_anchors(wh, 5, seed=1, n_init=2, backend="numpy"),
    )
