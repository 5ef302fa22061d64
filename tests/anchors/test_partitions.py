"""Tests of yolov2/anchors/partitions.py: partitions, the reduce, the farthest boxes.

A distributed run (any partitions, partials in any order) equals a single-process one, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from anchors.reference import as_tuples, assert_same_result, lognormal_wh, ref_lloyd
from yolov2 import anchors as A
from yolov2.errors import ConfigError


class ShuffledMapper(A.LocalMapper):
    """Partitions of uneven sizes whose partial results reach the reduce in a random order."""

    def __init__(self, wh: np.ndarray, bounds: list[tuple[int, int]], block_size: int, seed: int):
        super().__init__(wh, 1, block_size)
        self.bounds = bounds
        self._previous = [None] * len(bounds)
        self.rng = np.random.default_rng(seed)

    def assign(self, centroids, collect_values=False):
        parts = super().assign(centroids, collect_values)
        return [parts[i] for i in self.rng.permutation(len(parts))]


@pytest.mark.parametrize("update", ["mean", "median"])
def test_distributed_equals_single_process_on_voc(voc_wh, update):
    # one numba thread: tiny partitions gain nothing from more, and a loaded machine loses a lot
    single = A.kmeans_anchors(voc_wh, 5, seed=3, n_init=2, update=update, block_size=16, num_threads=1)
    for partitions in (2, 7, 18):
        split = A.kmeans_anchors(
            voc_wh, 5, seed=3, n_init=2, update=update, block_size=16, partitions=partitions, num_threads=1
        )
        assert_same_result(single, split)
    bounds = [(0, 16), (16, 112), (112, 128), (128, 273)]  # uneven, on 16-box block boundaries
    via_mapper = A.kmeans_anchors(
        voc_wh, 5, seed=3, n_init=2, update=update, mapper=ShuffledMapper(voc_wh, bounds, 16, 0)
    )
    assert_same_result(single, via_mapper)
    init = A.kmeans_pp_init(voc_wh, 5, np.random.default_rng(1))
    shuffled = A.lloyd(init, ShuffledMapper(voc_wh, bounds, 16, seed=0), update=update)
    direct = A.lloyd(init, A.LocalMapper(voc_wh, block_size=16), update=update)
    assert_same_result(direct, shuffled)


def test_distributed_equals_single_process_on_generated_boxes():
    wh = lognormal_wh(20_000, seed=5)  # 5 blocks of the default 4096
    single = A.kmeans_anchors(wh, 9, seed=0, n_init=2, num_threads=1)
    for partitions in (2, 5):
        assert_same_result(single, A.kmeans_anchors(wh, 9, seed=0, n_init=2, partitions=partitions, num_threads=1))


def test_reduce_rejects_partials_off_block_boundaries(voc_wh):
    c = voc_wh[:3]
    a, _ = A.assign(voc_wh[:20], c, block_size=16)
    b, _ = A.assign(voc_wh[20:40], c, block_size=16, start=32)
    with pytest.raises(ConfigError, match="tile"):
        A.reduce_stats([a, b])
    with pytest.raises(ConfigError, match="multiple of block_size"):
        A.assign(voc_wh[20:40], c, block_size=16, start=20)


def test_partition_bounds_cover_the_boxes_on_block_boundaries():
    for n, parts in ((10, 3), (4096 * 5 + 7, 3), (4096 * 2, 8)):
        bounds = A.partition_bounds(n, parts)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all(lo % A.BLOCK_SIZE == 0 for lo, _ in bounds)
        assert len(bounds) == min(parts, -(-n // A.BLOCK_SIZE))


def test_empty_cluster_is_reseeded_from_the_farthest_box(voc_wh):
    # a tiny centroid no box prefers: its cluster is empty after the first assignment
    init = np.vstack([voc_wh[[3, 50, 100]], [[1e-4, 1e-4]]])
    first, _ = A.assign(voc_wh, init)
    assert first.counts[3] == 0
    ours = A.lloyd(init, A.LocalMapper(voc_wh, block_size=32))
    anchors, iterations, history = ref_lloyd(as_tuples(voc_wh), as_tuples(init))
    assert ours.iterations == iterations
    np.testing.assert_allclose(ours.anchors, anchors, rtol=0, atol=1e-9)
    assert (ours.counts > 0).all()
    split = A.lloyd(init, A.LocalMapper(voc_wh, partitions=4, block_size=32))
    np.testing.assert_array_equal(split.anchors, ours.anchors)
