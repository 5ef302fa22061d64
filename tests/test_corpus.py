"""The bad-input corpus (tests/corpus/generate.py) through prepare + shard on real Ray: the exact outcome of every case.

Each layout (VOC, COCO, YOLO) is one shard run with every case as its own split; per case the test
checks what the stage wrote (index Parquet, shards, rejects.parquet, manifest) against the case:
kept / converted / clipped / rejected with a named reason at image or box level, the exact boxes
(worked out by the generator from the plain VOC / COCO / YOLO rules), the image bytes, and
records in = records sharded + records rejected. Then every case again with ``data.strict=true``:
a clear DatasetError naming the file, or (kept/converted/clipped cases) a normal run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corpus.generate import BOMB_SIDE, CLASS_NAMES, INPUT_DEFECTS, MANY_BOXES, Case, build_corpus, corpus_layout
from corpus.run import JPEG_SOI, error_message, matches, observe, rejected, run_shard
from corpus.special import SPECIAL_KINDS
from pipelines import shard
from pipelines.dag import fingerprint

LAYOUTS = ("voc", "coco", "yolo")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("corpus") / "c"
    cases = build_corpus(out, shared_data)
    return corpus_layout(out), cases


@pytest.fixture(scope="module")
def runs(corpus, ray_local, tmp_path_factory):
    """One non-strict prepare + shard run per layout over all its non-error cases."""
    layout, cases = corpus
    ws = tmp_path_factory.mktemp("ws")
    out = {}
    for name in LAYOUTS:
        splits = [c.split for c in cases if c.layout == name and c.outcome != "error"]
        out[name] = run_shard(ws / name, name, layout.root(name), splits)
        assert out[name].error is None, out[name].error
    return out


def test_corpus_is_large_and_covers_every_outcome(corpus):
    _, cases = corpus
    assert len(cases) >= 30 and len({c.name for c in cases}) == len(cases)
    assert {c.layout for c in cases} == set(LAYOUTS)
    assert {c.outcome for c in cases} == {"kept", "converted", "clipped", "rejected", "error"}
    assert {c.level for c in cases if c.outcome == "rejected"} == {"image", "box"}
    for c in cases:  # every bad case says how strict mode names it; accepted ones need none
        assert (c.strict_error is None) == (c.outcome in ("kept", "converted", "clipped")), c.name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_case_has_its_exact_outcome(corpus, runs, layout):
    _, cases = corpus
    failures = {}
    for case in (c for c in cases if c.layout == layout and c.outcome != "error"):
        obs = observe(runs[layout], case)
        problems = matches(case, obs) + _record_and_bytes_problems(case, obs)
        if problems:
            failures[case.name] = problems
    assert not failures, json.dumps(failures, indent=1, ensure_ascii=False)


def _record_and_bytes_problems(case: Case, obs) -> list[str]:
    """The kept record's size, boxes, labels, clip count, and the image bytes in the shard."""
    if case.image_id is None:
        return []
    (row,) = [r for r in obs.records if r["image_id"] == case.image_id] or [None]
    if row is None:
        return ["no record"]
    problems = []
    if (row["width"], row["height"]) != case.size:
        problems.append(f"size {(row['width'], row['height'])} (expected {case.size})")
    boxes = np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in row["boxes"]], np.float64).reshape(-1, 4)
    want = np.array(case.boxes, np.float64).reshape(-1, 4)
    if boxes.shape != want.shape or not np.allclose(boxes, want, atol=1e-4):
        problems.append(f"boxes {boxes.tolist()[:3]}... (expected {want.tolist()[:3]}..., {len(want)} boxes)")
    if [b["label"] for b in row["boxes"]] != list(case.labels):
        problems.append("labels differ")
    if row["clipped_boxes"] != case.clipped:
        problems.append(f"clipped_boxes {row['clipped_boxes']} (expected {case.clipped})")
    source = Path(row["path"]).read_bytes()
    sample = obs.samples.get(case.image_id)
    if case.outcome == "converted":
        problems += _conversion_problems(source, sample, case.size)
    elif sample != source:
        problems.append("the shard does not hold the source file's bytes")
    return problems


def _conversion_problems(source: bytes, sample: bytes | None, size) -> list[str]:
    """A converted image is a JPEG of the same size whose pixels match the source (decoded by PIL, RGB)."""
    import io

    if sample is None or not sample.startswith(JPEG_SOI):
        return ["the shard does not hold a JPEG"]
    with Image.open(io.BytesIO(source)) as im:  # alpha dropped, palette and 16-bit made 8-bit RGB
        reference = np.asarray(im.convert("RGB"), np.float64)
    with Image.open(io.BytesIO(sample)) as im:
        got = np.asarray(im.convert("RGB"), np.float64)
    if got.shape[:2] != (size[1], size[0]):
        return [f"converted size {got.shape[1]}x{got.shape[0]} (expected {size[0]}x{size[1]})"]
    diff = float(np.abs(got - reference).mean())
    return [] if diff < 4.0 else [f"converted pixels differ by {diff:.1f} on average"]


def test_whole_file_errors_fail_the_stage_clearly_and_mark_nothing_done(corpus, ray_local, tmp_path):
    layout, cases = corpus
    errors = [c for c in cases if c.outcome == "error"]
    assert errors
    for case in errors:
        run = run_shard(tmp_path / case.name, case.layout, layout.root(case.layout), [case.split])
        obs = observe(run, case)
        assert matches(case, obs) == [], (case.name, obs.error)
        assert case.strict_error in obs.error, (case.name, obs.error)
        # never taken as done: no manifest for this config's shard output
        assert not run.workspace.exists(f"shard/{fingerprint(run.config, shard.SPEC)}", "manifest.json"), case.name


def test_corpus_covers_each_input_defect_class_several_times(corpus):
    """Issue 15's classes (Case.group), each with several cases in more than one way."""
    _, cases = corpus
    groups = {g: [c for c in cases if c.group == g] for g in INPUT_DEFECTS}
    for group, members in groups.items():
        assert len(members) >= 3, (group, [c.name for c in members])
    special = groups["special file"]
    assert {c.reason for c in special} == set(SPECIAL_KINDS.values()) and {c.layout for c in special} == set(LAYOUTS)
    ids = [c.image_id for c in groups["image id"]]
    assert any(" " in i for i in ids if i) and any("\t" in i for i in ids if i)
    assert sum(c.name.split("_")[0] in CLASS_NAMES for c in groups["image id"]) >= 3  # per-class flag files
    jpeg = groups["JPEG structure"]
    assert sum(c.trailing_data for c in jpeg) >= 3 and sum("no image data" in c.reason for c in jpeg) >= 3
    assert sum(c.sizes_from_image for c in groups["size from the image"]) >= 3


def test_strict_mode_stops_exactly_on_what_non_strict_rejects(corpus, runs, ray_local, tmp_path):
    """``data.strict=true``, one case per run: it stops with a DatasetError exactly on the cases the
    non-strict run rejected anything of (an image, a box, the whole file), naming the file; it accepts
    the others whole (records in = records sharded, nothing rejected)."""
    layout, cases = corpus
    failures = {}
    for case in cases:
        run = run_shard(tmp_path / case.layout, case.layout, layout.root(case.layout), [case.split], strict=True)
        rejected_non_strict = case.outcome == "error" or rejected(observe(runs[case.layout], case))
        if (run.error is not None) != rejected_non_strict:
            went, non_strict = ("stopped" if run.error else "went on"), ("some" if rejected_non_strict else "none")
            failures[case.name] = f"strict {went}; the non-strict run rejected {non_strict}"
            continue
        if case.strict_error is None:
            summary = {} if run.error else run.result.manifest["splits"][case.split]
            if [summary.get(k) for k in ("images_in", "images", "rejected_images")] != [case.images_in] * 2 + [0]:
                failures[case.name] = f"strict run did not shard every image: {summary or error_message(run.error)}"
            continue
        message = "" if run.error is None else error_message(run.error)
        if not message:
            failures[case.name] = "no error in strict mode"
        elif case.strict_error not in message or case.reason not in message:
            failures[case.name] = f"{message!r} lacks {case.strict_error!r} or {case.reason!r}"
    assert not failures, json.dumps(failures, indent=1, ensure_ascii=False)


def test_exif_orientation_is_ignored_boxes_follow_the_stored_pixels(corpus, runs):
    """The documented convention: width/height and boxes are the stored pixels; the tag is kept, not applied."""
    from yolov2.data.images import inspect_image_file

    layout, cases = corpus
    (case,) = [c for c in cases if c.name == "voc_exif_rotated"]
    info = inspect_image_file(layout.voc / "JPEGImages" / "voc_exif_rotated.jpg")
    assert info.exif_orientation == 6 and (info.width, info.height) == case.size == (80, 60)
    obs = observe(runs["voc"], case)
    (row,) = obs.records
    assert (row["width"], row["height"]) == (80, 60)  # not the rotated 60x80 a viewer shows
    assert [[b["x1"], b["y1"], b["x2"], b["y2"]] for b in row["boxes"]] == [[4.0, 9.0, 30.0, 55.0]]  # VOC 5,10,30,55
    assert obs.samples["voc_exif_rotated"] == (layout.voc / "JPEGImages" / "voc_exif_rotated.jpg").read_bytes()


def test_ten_thousand_boxes_read_fast(corpus, runs):
    from yolov2.data.voc import read_voc_item

    layout, cases = corpus
    start = time.perf_counter()
    record, rejects = read_voc_item(layout.voc, "voc_10000_boxes", "x", ("person", "dog", "cat", "raccoon"), False)
    assert time.perf_counter() - start < 3.0
    assert rejects == [] and record.num_boxes == MANY_BOXES
    (row,) = observe(runs["voc"], next(c for c in cases if c.name == "voc_10000_boxes")).records
    assert len(row["boxes"]) == MANY_BOXES


def test_decompression_bomb_headers_are_rejected_without_allocating_the_pixels(corpus):
    """Under an address-space limit far below 20000 x 20000 x 3 bytes, the header check still rejects both
    files, while actually decoding the PNG (the control) runs out of memory under the same limit."""
    layout, _ = corpus
    files = [layout.voc / "JPEGImages" / "voc_bomb_png.png", layout.voc / "JPEGImages" / "voc_bomb_jpeg.jpg"]
    script = f"""
import resource, sys
from PIL import Image
from yolov2.data.images import inspect_image_file
from yolov2.errors import DatasetError
vm = int([l for l in open('/proc/self/status') if l.startswith('VmSize')][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 400 * 2**20, resource.RLIM_INFINITY))  # {BOMB_SIDE}**2*3 = 1.2 GB
for path in {[str(f) for f in files]!r}:
    try:
        inspect_image_file(path)
        sys.exit('accepted ' + path)
    except DatasetError as e:
        assert 'too large' in str(e), e
Image.MAX_IMAGE_PIXELS = None
try:
    Image.open({str(files[0])!r}).load()
except MemoryError:
    print('control: decoding needs the memory')
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "control: decoding needs the memory" in proc.stdout, proc.stdout + proc.stderr[-2000:]
