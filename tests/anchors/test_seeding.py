"""Tests of yolov2/anchors/seeding.py: k-means++ against the loop reference, and k against the distinct shapes."""

from __future__ import annotations

import numpy as np
import pytest

from anchors.reference import as_tuples, ref_kmeanspp
from yolov2 import anchors as A
from yolov2.errors import ConfigError


@pytest.mark.parametrize("k", [1, 3, 5, 9])
def test_kmeans_pp_init_matches_the_loop_reference(voc_wh, k):
    seed = np.random.SeedSequence(7).spawn(1)[0]
    ours = A.kmeans_pp_init(voc_wh, k, np.random.default_rng(seed))
    ref = ref_kmeanspp(as_tuples(voc_wh), k, np.random.default_rng(seed))
    np.testing.assert_array_equal(ours, np.array(ref))


def test_k_larger_than_the_distinct_shapes_is_a_clear_error():
    wh = np.array([[0.1, 0.2], [0.3, 0.3], [0.5, 0.1]] * 20)
    assert A.kmeans_anchors(wh, 3, n_init=1).anchors.shape == (3, 2)
    with pytest.raises(ConfigError, match=r"k=4 is larger than the number of distinct box shapes \(3\)"):
        A.kmeans_anchors(wh, 4)
    with pytest.raises(ConfigError, match="k must be"):
        A.kmeans_anchors(wh, 0)
