"""Classification shards, for pretraining the backbone as a classifier: WebDataset tar files whose samples are
``<key>.jpg`` (the image) and ``<key>.cls`` (its class index as ASCII digits, WebDataset's convention for
labels), so any WebDataset reader takes them (``wds.WebDataset(url).decode("rgb").to_tuple("jpg", "cls")``).

Also the split the pretrain stage makes of labelled images: a stratified val split, every class in the same
proportion, chosen by a seeded hash of each sample's key so it never depends on listing or scheduling order.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from yolov2.data.shards import TarShardWriter
from yolov2.errors import DatasetError

__all__ = ["cls_shard_bytes", "iter_cls_shard", "encode_jpeg", "stratified_val"]


def cls_shard_bytes(samples: Iterable[tuple[str, bytes, int]]) -> bytes:
    """A whole classification shard in memory from ``(key, jpeg bytes, class index)``, in the given order
    (byte-identical for the same samples: the writer's tar metadata is fixed)."""
    buffer = io.BytesIO()
    with TarShardWriter(buffer) as writer:
        for key, image, label in samples:
            writer.write_member(f"{key}.jpg", image)
            writer.write_member(f"{key}.cls", str(int(label)).encode())
    return buffer.getvalue()


def iter_cls_shard(url: str) -> Iterator[tuple[str, bytes, int]]:
    """``(key, jpeg bytes, class index)`` of one classification shard, in file order, read by webdataset (the
    format's reference reader); a sample without both members is a :class:`DatasetError` naming the shard."""
    import webdataset as wds

    dataset = wds.WebDataset(url, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
    for sample in dataset:
        if "jpg" not in sample or "cls" not in sample:
            raise DatasetError(f"{url}: sample {sample['__key__']!r} lacks its .jpg or .cls member")
        yield sample["__key__"], sample["jpg"], int(sample["cls"])


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """uint8[H, W, 3] RGB -> JPEG bytes (OpenCV, the project's decoder too)."""
    import cv2

    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as JPEG")
    return data.tobytes()


def stratified_val(keys: Sequence[str], labels: Sequence[int], fraction: float, seed: int) -> list[bool]:
    """Which samples go to val: per class, the ``round(n * fraction)`` keys first in a seeded hash order.

    A class with at least two samples keeps at least one in each split when ``fraction`` is above 0, so every
    class is both trained and measured; a class of one sample stays in train.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val fraction must be in [0, 1), got {fraction}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[int(label)].append(i)
    is_val = [False] * len(keys)
    for members in by_class.values():
        n = len(members)
        take = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(n * fraction)))
        ranked = sorted(members, key=lambda i: (_rank(seed, keys[i]), keys[i]))
        for i in ranked[:take]:
            is_val[i] = True
    return is_val


def _rank(seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
