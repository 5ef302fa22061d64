"""yolov2/data/cls_shards.py: classification shards both ways, and the stratified val split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import webdataset as wds

from yolov2.data.cls_shards import cls_shard_bytes, encode_jpeg, iter_cls_shard, stratified_val
from yolov2.data.images import decode_rgb


def _image(value: int) -> np.ndarray:
    return np.full((12, 20, 3), value, np.uint8)


def test_a_shard_reads_back_through_webdataset_and_our_reader(tmp_path):
    samples = [(f"img{i:03d}_b{i % 3}", encode_jpeg(_image(10 * i)), i % 4) for i in range(7)]
    path = tmp_path / "train-000000.tar"
    path.write_bytes(cls_shard_bytes(samples))
    assert path.read_bytes() == cls_shard_bytes(samples)  # deterministic bytes
    assert list(iter_cls_shard(str(path))) == samples
    # any WebDataset user's pipeline: decode the image, the .cls member as an int
    decoded = list(
        wds.WebDataset(str(path), shardshuffle=False, empty_check=False).decode("rgb8").to_tuple("jpg", "cls")
    )
    assert [label for _, label in decoded] == [label for _, _, label in samples]
    assert decoded[3][0].shape == (12, 20, 3) and abs(int(decoded[3][0].mean()) - 30) <= 2


def test_encode_jpeg_keeps_the_pixels_and_the_channel_order():
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0] = 200  # red
    back = decode_rgb(encode_jpeg(image))
    assert back.shape == image.shape and np.abs(back.astype(int) - image).max() <= 3


def test_stratified_val_takes_each_class_in_proportion_and_is_seeded():
    labels = [0] * 50 + [1] * 20 + [2] * 3 + [3] * 1
    keys = [f"k{i}" for i in range(len(labels))]
    is_val = stratified_val(keys, labels, 0.2, seed=0)
    per_class = Counter(label for label, v in zip(labels, is_val) if v)
    assert per_class == {0: 10, 1: 4, 2: 1}  # class 3's single sample stays in train
    assert stratified_val(keys, labels, 0.2, seed=0) == is_val
    assert stratified_val(keys, labels, 0.2, seed=1) != is_val
    # the choice follows the keys, not their order
    order = np.random.default_rng(0).permutation(len(keys))
    shuffled = stratified_val([keys[i] for i in order], [labels[i] for i in order], 0.2, seed=0)
    assert {keys[i] for i, v in zip(order, shuffled) if v} == {k for k, v in zip(keys, is_val) if v}
    assert not any(stratified_val(keys, labels, 0.0, seed=0))
    two = stratified_val(["a", "b"], [5, 5], 0.9, seed=0)
    assert sorted(two) == [False, True]  # at least one sample left to train on
    with pytest.raises(ValueError, match="val fraction"):
        stratified_val(keys, labels, 1.0, seed=0)
