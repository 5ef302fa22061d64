"""yolov2/data/val_split.py: the val carve-out is deterministic, disjoint, complete, sized and seeded.

The expected picks are computed here from the rule written out (rank by sha256 of ``"<seed>:<id>"``).
"""

from __future__ import annotations

import hashlib
import random

import pytest

from yolov2.data.val_split import carve_val
from yolov2.errors import ConfigError, DatasetError

IDS = [f"img-{i:03d}" for i in range(200)]


def expected_val(ids: list[str], k: int, seed: int) -> set[str]:
    return set(sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())[:k])


def test_the_pick_is_the_seeded_hash_ranking_and_covers_every_image_once() -> None:
    carve = carve_val(IDS, 0.15, seed=0)
    assert set(carve.val) == expected_val(IDS, 30, 0)
    assert len(carve.val) == 30 and len(carve.train) == 170
    assert not set(carve.train) & set(carve.val)
    assert sorted(carve.train + carve.val) == sorted(IDS)
    assert carve.train == [i for i in IDS if i not in set(carve.val)]  # the given order is kept
    assert carve.val == [i for i in IDS if i in set(carve.val)]


def test_deterministic_whatever_the_order_and_the_other_ids() -> None:
    shuffled = IDS[:]
    random.Random(1).shuffle(shuffled)
    assert set(carve_val(shuffled, 0.15, 0).val) == set(carve_val(IDS, 0.15, 0).val)
    assert carve_val(IDS, 0.15, 0) == carve_val(list(IDS), 0.15, 0)


def test_the_seed_changes_the_pick() -> None:
    picks = {frozenset(carve_val(IDS, 0.15, seed).val) for seed in range(5)}
    assert len(picks) == 5
    assert set(carve_val(IDS, 0.15, 7).val) == expected_val(IDS, 30, 7)


@pytest.mark.parametrize(
    "n, fraction, size",
    [(160, 0.15, 24), (10, 0.25, 2), (3, 0.01, 1), (3, 0.99, 2), (2, 0.5, 1), (7, 0.5, 4)],
)
def test_size_is_the_rounded_share_kept_inside_1_to_n_minus_1(n: int, fraction: float, size: int) -> None:
    carve = carve_val(IDS[:n], fraction, 0)
    assert (len(carve.val), len(carve.train)) == (size, n - size)


def test_unusable_inputs_are_clear_errors() -> None:
    for fraction in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="data.val_fraction must be between 0 and 1"):
            carve_val(IDS, fraction, 0)
    with pytest.raises(DatasetError, match=r"out of 1 train image\(s\).*set data.val_fraction: 0"):
        carve_val(["a"], 0.5, 0)
    with pytest.raises(DatasetError, match="not distinct"):
        carve_val(["a", "b", "a"], 0.5, 0)


def test_ids_that_are_not_utf8_still_hash() -> None:
    odd = ["a\udcff", "b", "c", "d"]  # a file name byte that is not UTF-8, as Python decodes it
    carve = carve_val(odd, 0.5, 0)
    assert sorted(carve.train + carve.val) == sorted(odd) and len(carve.val) == 2
