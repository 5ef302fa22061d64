"""A validation split carved out of the training images, by image id, the same on every run and machine.

Why by a seeded hash of the id, not by a random draw or by position: the pick must not depend on the
listing's order, on the Python hash seed or on which other images are in the split, so that a rerun, a
cached upstream or another node carves exactly the same images; and the user can change the pick with
the seed alone. Each id is ranked by ``sha256(f"{seed}:{image_id}")`` and the first
``round(fraction * n)`` (at least 1, at most ``n - 1``: both splits keep an image) become val.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from yolov2.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class ValCarve:
    """The ids left in train and the ids carved out as val, each in the order they were given."""

    train: list[str]
    val: list[str]


def carve_val(image_ids: Sequence[str], fraction: float, seed: int) -> ValCarve:
    """Split ``image_ids`` (distinct) into train and val; val holds ``round(fraction * n)`` of them, clamped to
    ``1..n-1``. Raises :class:`ConfigError` for a fraction outside (0, 1), :class:`DatasetError` for fewer
    than 2 ids or a repeated id."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be between 0 and 1 (exclusive) to carve a val split, got {fraction}")
    n = len(image_ids)
    if len(set(image_ids)) != n:
        raise DatasetError("cannot carve a val split: the train image ids are not distinct")
    if n < 2:
        raise DatasetError(
            f"cannot carve a val split out of {n} train image(s): both splits need one; "
            "add training images or set data.val_fraction: 0"
        )
    size = min(max(round(fraction * n), 1), n - 1)
    ranked = sorted(image_ids, key=lambda image_id: (_rank(seed, image_id), image_id))
    val = set(ranked[:size])
    return ValCarve([i for i in image_ids if i not in val], [i for i in image_ids if i in val])


def _rank(seed: int, image_id: str) -> bytes:
    # surrogatepass: an id from a file name that is not UTF-8 (or a JSON lone surrogate) still hashes
    return hashlib.sha256(f"{seed}:{image_id}".encode("utf-8", "surrogatepass")).digest()
