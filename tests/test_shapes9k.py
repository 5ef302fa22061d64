"""Shapes-9k (yolov2/data/shapes9k.py, benchmarks/shapes9k.py): the tree, the colour buckets, the samples, the
measures' counting, and (slow) the measurement itself against the issue's expectations.

The samples are checked against the scenes regenerated independently with :func:`generate_scene` (the same
seed, split and index give the same scene), so a label is compared with the colour and shape actually drawn.
"""

from __future__ import annotations

import colorsys
import dataclasses
import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import torch

from yolov2.data.records import ImageRecord, relabel_records
from yolov2.data.shapes9k import (
    BUCKETS,
    CHROMATIC_PALETTE,
    GREY_PALETTE,
    LEAF_NODES,
    SHAPE_NODES,
    SceneSettings,
    class_only_samples,
    crop_box,
    detection_samples,
    grey_test_samples,
    hue_bucket,
    leaf_node,
    leaf_test_samples,
    shapes9k_tree,
)
from yolov2.data.shards import ShardSpec, write_shard_bytes
from yolov2.data.stream import ShardStream
from yolov2.data.synthetic import _PALETTE, SHAPE_CLASSES, generate_scene
from yolov2.errors import ConfigError
from yolov2.metrics import DetectionTable

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "benchmarks" / "shapes9k.py"
SMALL = SceneSettings(seed=3, width=128, height=128, max_objects=5, min_size=20.0)
PALETTE_NAMES = ("red", "green", "blue", "yellow", "cyan", "magenta", "orange", "white", "black", "purple", "brown")
EXPECTED_BUCKET = {
    "red": 0,
    "orange": 0,
    "brown": 0,
    "yellow": 0,
    "green": 1,
    "cyan": 1,
    "blue": 2,
    "purple": 2,
    "magenta": 2,
    "white": None,
    "black": None,
    "grey": None,
}


def palette_by_name() -> dict[str, np.ndarray]:
    return dict(zip((*PALETTE_NAMES, "grey"), _PALETTE))


def scene_of(settings: SceneSettings, split: str, index: int, palette: np.ndarray, max_objects: int | None = None):
    """The scene a sample came from, regenerated here."""
    objects = settings.max_objects if max_objects is None else max_objects
    return generate_scene(
        settings.seed,
        index,
        split,
        settings.width,
        settings.height,
        objects,
        min_size=settings.min_size,
        palette=palette,
    )


def decoded_size(data: bytes) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return image.shape[1], image.shape[0]


# ---------------------------------------------------------------------------------------------------------------
# The tree


def test_tree_has_the_shapes_as_roots_and_three_colour_leaves_each() -> None:
    tree = shapes9k_tree()
    assert tree.num_nodes == 20
    assert tree.names[:5] == SHAPE_CLASSES and tree.parents[:5] == (-1,) * 5
    assert tree.group_sizes == (5, 3, 3, 3, 3, 3) and tree.group_of[:5] == (0,) * 5
    assert tree.leaves == LEAF_NODES == tuple(range(5, 20))
    assert list(SHAPE_NODES) == [0, 1, 2, 3, 4]
    for shape, bucket in itertools.product(range(5), range(3)):
        node = leaf_node(shape, bucket)
        assert tree.names[node] == f"{SHAPE_CLASSES[shape]}_{BUCKETS[bucket]}"
        assert tree.parents[node] == shape and tree.depth[node] == 1
        assert tree.child_group[shape] == tree.group_of[node]
    assert len(set(tree.names)) == 20
    with pytest.raises(ValueError):
        leaf_node(5, 0)
    with pytest.raises(ValueError):
        leaf_node(0, 3)


# ---------------------------------------------------------------------------------------------------------------
# Colour buckets


def test_every_palette_colour_has_its_bucket() -> None:
    for name, colour in palette_by_name().items():
        assert hue_bucket(colour) == EXPECTED_BUCKET[name], name
    assert len(CHROMATIC_PALETTE) == 9
    assert all(hue_bucket(c) is not None for c in CHROMATIC_PALETTE)
    assert any(np.array_equal(GREY_PALETTE[0], row) for row in _PALETTE) and hue_bucket(GREY_PALETTE[0]) is None


def test_jittered_colours_keep_their_palette_bucket() -> None:
    """The generator's jitter (uniform in [-25, 25) per channel, clipped, truncated to int in Shape.colour) never
    moves a colour into another bucket or across the chromatic/achromatic line: random draws and the cube's
    corners, where hue and chroma reach their extremes."""
    rng = np.random.default_rng(0)
    corners = np.array(list(itertools.product((-25.0, 24.999), repeat=3)))
    for name, colour in palette_by_name().items():
        jitters = np.concatenate([rng.uniform(-25, 25, (3000, 3)), corners])
        for jittered in np.clip(colour + jitters, 0, 255):
            assert hue_bucket(jittered.astype(int)) == EXPECTED_BUCKET[name], (name, jittered)


def test_hue_bucket_edges() -> None:
    def at(hue: float) -> tuple[float, ...]:
        return tuple(255 * c for c in colorsys.hsv_to_rgb(hue / 360, 1.0, 1.0))

    for hue, bucket in ((0, 0), (89.9, 0), (90.1, 1), (204.9, 1), (205.1, 2), (334.9, 2), (335.1, 0), (359.9, 0)):
        assert hue_bucket(at(hue)) == bucket, hue
    assert hue_bucket((100, 100, 100)) is None
    assert hue_bucket((100, 149, 100)) is None  # chroma 49
    assert hue_bucket((100, 150, 100)) == 1  # chroma 50


# ---------------------------------------------------------------------------------------------------------------
# generate_scene's palette


def test_generate_scene_default_palette_is_unchanged() -> None:
    for index in range(6):
        plain = generate_scene(5, index, "train", 96, 80, 6)
        explicit = generate_scene(5, index, "train", 96, 80, 6, palette=_PALETTE)
        assert np.array_equal(plain.image, explicit.image)
        assert [s.colour for s in plain.shapes] == [s.colour for s in explicit.shapes]


def test_generate_scene_draws_only_from_its_palette() -> None:
    for palette in (CHROMATIC_PALETTE, GREY_PALETTE):
        for index in range(20):
            for shape in generate_scene(1, index, "p", 96, 96, 6, palette=palette).shapes:
                nearest = np.abs(palette - np.array(shape.colour)).max(axis=1).min()
                assert nearest <= 25, shape.colour
    with pytest.raises(ConfigError):
        generate_scene(1, 0, "p", 96, 96, 6, palette=np.zeros((0, 3), np.float32))


# ---------------------------------------------------------------------------------------------------------------
# Samples


def test_detection_samples_are_chromatic_scenes_labelled_by_shape() -> None:
    samples = detection_samples(SMALL, 12)
    assert len(samples) == 12 and len({key for key, _, _ in samples}) == 12
    assert sum(len(rec.labels) for _, _, rec in samples) > 12
    for index, (key, data, record) in enumerate(samples):
        scene = scene_of(SMALL, "det", index, CHROMATIC_PALETTE)
        assert key == record.image_id == scene.record.image_id and not record.class_only
        assert decoded_size(data) == (record.width, record.height) == (SMALL.width, SMALL.height)
        assert record.labels.tolist() == [s.label for s in scene.shapes]
        assert np.array_equal(record.boxes, scene.record.boxes)
        assert all(hue_bucket(s.colour) is not None for s in scene.shapes)
    assert [d for _, d, _ in detection_samples(SMALL, 3)] == [d for _, d, _ in samples[:3]]  # seeded


def test_leaf_test_samples_carry_the_leaf_of_each_object() -> None:
    tree = shapes9k_tree()
    samples = leaf_test_samples(SMALL, 12)
    for index, (_, _, record) in enumerate(samples):
        scene = scene_of(SMALL, "test", index, CHROMATIC_PALETTE)
        assert record.labels.tolist() == [leaf_node(s.label, hue_bucket(s.colour)) for s in scene.shapes]
        assert all(tree.parents[label] == s.label for label, s in zip(record.labels, scene.shapes))
        assert np.array_equal(record.boxes, scene.record.boxes)


def test_grey_samples_are_drawn_in_grey_and_labelled_by_shape() -> None:
    samples = grey_test_samples(SMALL, 10)
    drawn = 0
    for index, (_, _, record) in enumerate(samples):
        scene = scene_of(SMALL, "grey", index, GREY_PALETTE)
        assert record.labels.tolist() == [s.label for s in scene.shapes]
        assert all(label in SHAPE_NODES for label in record.labels)
        assert all(hue_bucket(s.colour) is None for s in scene.shapes)
        drawn += len(scene.shapes)
    assert drawn > 0


def test_crop_box_adds_the_margin_and_stays_in_the_image() -> None:
    assert crop_box((10, 20, 30, 60), 0.5, 100, 100) == (0, 0, 40, 80)
    assert crop_box((40, 40, 60, 50), 0.25, 100, 100) == (35, 37, 65, 53)
    assert crop_box((80, 90, 100, 100), 1.0, 100, 100) == (60, 80, 100, 100)
    rng = np.random.default_rng(1)
    for _ in range(200):
        x1, y1 = rng.integers(0, 90, 2)
        box = (x1, y1, x1 + rng.integers(1, 100 - x1), y1 + rng.integers(1, 100 - y1))
        cx1, cy1, cx2, cy2 = crop_box(box, float(rng.uniform(0, 2)), 100, 100)
        assert 0 <= cx1 <= box[0] < box[2] <= cx2 <= 100 and 0 <= cy1 <= box[1] < box[3] <= cy2 <= 100


def test_class_only_samples_are_leaf_labelled_crops_of_one_object() -> None:
    samples = class_only_samples(SMALL, 25)
    assert len(samples) == 25 and len({key for key, _, _ in samples}) == 25
    scenes: dict[int, object] = {}
    for key, data, record in samples:
        assert record.class_only and record.num_boxes == 1
        assert record.boxes.tolist() == [[0, 0, record.width, record.height]]
        assert decoded_size(data) == (record.width, record.height)
        scene_index, object_index = (int(part) for part in key.split("_")[1:])  # classify_<index>_<object>
        if scene_index not in scenes:
            scenes[scene_index] = scene_of(SMALL, "classify", scene_index, CHROMATIC_PALETTE, SMALL.crop_max_objects)
        shape = scenes[scene_index].shapes[object_index]  # type: ignore[attr-defined]
        assert record.labels.tolist() == [leaf_node(shape.label, hue_bucket(shape.colour))]
        x1, y1, x2, y2 = shape.box
        lo, hi = SMALL.margin
        assert x2 - x1 <= record.width <= min(SMALL.width, np.ceil((x2 - x1) * (1 + 2 * hi)))
        assert y2 - y1 <= record.height <= min(SMALL.height, np.ceil((y2 - y1) * (1 + 2 * hi)))
    again = [(key, data, record.to_dict()) for key, data, record in class_only_samples(SMALL, 10)]
    assert again == [(key, data, record.to_dict()) for key, data, record in samples[:10]]  # seeded; a prefix


def test_kinds_come_from_different_splits() -> None:
    kinds = (detection_samples, leaf_test_samples, grey_test_samples, class_only_samples)
    prefixes = [{key.split("_")[0] for key, _, _ in kind(SMALL, 4)} for kind in kinds]
    assert [len(p) for p in prefixes] == [1, 1, 1, 1] and len(set.union(*prefixes)) == 4


def test_leaf_records_map_to_their_shapes_and_stay_as_they_were() -> None:
    tree = shapes9k_tree()
    record = leaf_test_samples(SMALL, 3)[1][2]
    to_shape = [tree.path(n)[-1] for n in range(tree.num_nodes)]
    (shapes,) = relabel_records([record], to_shape)
    assert shapes.labels.tolist() == [tree.parents[n] for n in record.labels]
    assert all(label >= 5 for label in record.labels) and np.array_equal(shapes.boxes, record.boxes)
    empty = ImageRecord("e", "s", "e.jpg", 10, 10)
    assert relabel_records([empty], to_shape)[0].labels.tolist() == []


def test_class_only_crops_stream_as_class_only_batches(tmp_path: Path) -> None:
    samples = class_only_samples(SMALL, 6)
    shard = tmp_path / "crops-000000.tar"
    shard.write_bytes(write_shard_bytes(samples))
    stream = ShardStream([ShardSpec(str(shard), 6)], batch_size=6, size=64, shuffle_buffer=1)
    (batch,) = list(stream.iter_slot(0, 1))
    assert batch.class_only is not None and batch.class_only.all()
    by_id = {rec.image_id: int(rec.labels[0]) for _, _, rec in samples}
    assert batch.targets[:, 0, 0].long().tolist() == [by_id[i] for i in batch.image_ids]


# ---------------------------------------------------------------------------------------------------------------
# The benchmark's own pieces


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shapes9k_benchmark", BENCHMARK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_walk_labels_takes_the_best_scoring_match_above_the_threshold(bench: ModuleType) -> None:
    boxes = [[0, 0, 20, 20], [50, 50, 90, 90], [0, 60, 10, 70]]
    record = ImageRecord("a", "t", "a.jpg", 100, 100, boxes, [5, 9, 12], [False] * 3, [False] * 3)
    detections = DetectionTable.from_arrays(
        ["a", "a", "a", "a", "b"],
        [7, 1, 9, 3, 6],
        [0.6, 0.9, 0.1, 0.8, 0.99],
        [
            [0, 0, 20, 21],  # object 0, score 0.6
            [0, 0, 19, 20],  # object 0, score 0.9: the one taken
            [50, 50, 90, 90],  # object 1, below the score threshold
            [60, 60, 100, 100],  # object 1, IoU 0.39: no match
            [50, 50, 90, 90],  # another image
        ],
    )
    assert bench.walk_labels([record], detections, 0.25) == [1, None, None]
    assert bench.walk_labels([record], detections, 0.05) == [1, 9, None]


def test_walk_measures_count_leaves_shapes_and_right_answers(bench: ModuleType) -> None:
    tree = shapes9k_tree()
    truth = [leaf_node(0, 0), leaf_node(1, 2), leaf_node(2, 1), leaf_node(3, 0)]
    found = [leaf_node(0, 0), 1, leaf_node(2, 2), None]
    measures = bench.walk_measures(truth, found, tree)
    assert measures == {"matched": 0.75, "at_leaf": 0.6667, "at_shape": 0.3333, "correct": 0.3333, "right_shape": 1.0}
    assert bench.walk_measures([], [], tree)["at_leaf"] is None


def test_flat_tree_is_one_softmax(bench: ModuleType) -> None:
    flat = bench.flat_tree(shapes9k_tree())
    assert flat.num_groups == 1 and flat.leaves == tuple(range(20)) and flat.names == shapes9k_tree().names


def test_merge_batches_keeps_both_and_flags_the_crops(bench: ModuleType, tmp_path: Path) -> None:
    def stream(samples, name: str, batch: int) -> ShardStream:
        path = tmp_path / f"{name}.tar"
        path.write_bytes(write_shard_bytes(samples))
        return ShardStream([ShardSpec(str(path), len(samples))], batch_size=batch, size=64, shuffle_buffer=1)

    (det,) = list(stream(detection_samples(SMALL, 4), "det", 4).iter_slot(0, 1))
    (crops,) = list(stream(class_only_samples(SMALL, 2), "crops", 2).iter_slot(0, 1))
    merged = bench.merge_batches(det, crops)
    assert merged.images.shape == (6, 3, 64, 64) and merged.image_ids == det.image_ids + crops.image_ids
    assert merged.class_only.tolist() == [False] * 4 + [True] * 2
    rows = det.targets.shape[1]
    assert torch.equal(merged.targets[:4, :rows], det.targets) and torch.equal(merged.targets[4:, :1], crops.targets)
    assert (merged.targets[4:, 1:] == -1).all() and (merged.targets[:4, rows:] == -1).all()


def test_settings_come_from_the_command_line(bench: ModuleType) -> None:
    settings = bench.parse_settings(["--det-images", "64", "--ratio", "0.5", "--variants", "tree,flat5"])
    assert settings == dataclasses.replace(bench.Settings(), det_images=64, ratio=0.5, variants="tree,flat5")


# ---------------------------------------------------------------------------------------------------------------
# The measurement


SLOW_SCALE = ["--det-images", "1600", "--epochs", "10", "--test-images", "300", "--grey-images", "150"]


@pytest.mark.slow
def test_shapes9k_meets_the_issue_expectations(tmp_path: Path) -> None:
    """All four variants, 1,000 steps each (about 16 minutes on the quiet 2-core AVX-512 machine, 39 with another
    test session beside it); the expectations are the
    issue's, unchanged (A within 0.02 of flat5, B >= 0.8 A, C > 0.9, D > 0.5), all reported at once. The
    benchmark's progress goes to stderr (``pytest -s`` shows it as it runs); its JSON to a file, not a pipe, which
    its DataLoader workers would hold open if it died."""
    out = tmp_path / "shapes9k.json"
    with out.open("w") as stdout:
        run = subprocess.run([sys.executable, str(BENCHMARK), *SLOW_SCALE], cwd=REPO, stdout=stdout)
    assert run.returncode == 0, "the benchmark failed (its stderr is above)"
    report = json.loads(out.read_text())
    print(json.dumps(report["variants"], indent=1))
    variants = report["variants"]
    tree, flat5, det_only = variants["tree"], variants["flat5"], variants["tree_det_only"]
    assert tree["steps"] == flat5["steps"] == det_only["steps"] == variants["flat20"]["steps"]
    checks = [
        (det_only["B"] < 0.6 * det_only["A"], f"without crops B {det_only['B']} should be near A/3 ({det_only['A']})"),
        (tree["A"] >= flat5["A"] - 0.02, f"A {tree['A']} is more than 0.02 below flat5's {flat5['A']}"),
        (tree["B"] >= 0.8 * tree["A"], f"B {tree['B']} < 0.8 x A {tree['A']}"),
        (tree["C"] is not None and tree["C"] > 0.9, f"C {tree['C']} <= 0.9"),
        (tree["D"] is not None and tree["D"] > 0.5, f"D {tree['D']} <= 0.5"),
    ]
    failed = [message for ok, message in checks if not ok]
    assert not failed, "; ".join(failed) + f" (crop diagnostic: {tree.get('crop_diagnostic')})"
