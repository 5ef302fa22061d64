"""Shard throughput against `tar cf` of the same files (the I/O limit), with 1 and 2 Ray workers.

Prints one JSON object. The dataset is the generated one at 640x480, written once to a cache folder;
every timing runs on a warm page cache. The stage is timed whole (listing, annotation parsing, image
reads and header checks, tar writing, index and rejects files, and the workers' first import of the
library), with Ray already started (its start-up is not part of a stage).

10,000 images by default (the issue asks for at least 2,000): a stage has fixed costs that do not
grow with the dataset (16 Ray tasks to schedule, each worker importing the library once, the index
and rejects files), which at 2,000 images would be a large part of the figure. The 2,000 generated
images are copied under new ids up to that count (as the issue's "raccoon repeated" would be);
``--images 2000`` gives the small-set figure. For reference the JSON also has the library alone
(listing + ``write_shard`` of every image into one tar, in this process, no Ray) and a Python I/O floor
(read each XML and JPEG and write them after a tar-sized header, nothing else): the gap between that floor
and ``tar`` is all the time a one-worker stage has for parsing, checking and describing each image.

The JSON states the CPU's kind (``cpu_capability``, ``native_bf16``) and the most Ray workers timed (``threads``).

    python benchmarks/shard.py [--images 10000] [--cache /tmp/yolov2-bench-shard]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import NO_MODEL, machine_facts  # noqa: E402

GENERATED = 2000  # images generated; larger sets are copies of these under new ids


def make_dataset(cache: Path, images: int) -> Path:
    """The generated set (up to 2,000 images); beyond that, copies of it under new ids (``r<k>_<id>``).

    Copies, not links: tar would store a hard link as a link entry, and both tar and the stage must
    read every file. Generating 10,000 textured images here takes much longer than any timing.
    """
    from yolov2.data.synthetic import write_synthetic_dataset

    base = cache / f"synthetic-{min(images, GENERATED)}"
    write_synthetic_dataset(
        base, seed=1, width=640, height=480, splits={"train": min(images, GENERATED)}, write_coco=False, progress=True
    )
    if images <= GENERATED:
        return base
    root = cache / f"synthetic-{GENERATED}-copied-to-{images}"
    if (root / "complete").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    base_ids = (base / "ImageSets" / "Main" / "train.txt").read_text().split()
    ids = []
    for i in range(images):
        src, new = base_ids[i % GENERATED], f"r{i // GENERATED}_{base_ids[i % GENERATED]}"
        shutil.copyfile(base / "JPEGImages" / f"{src}.jpg", root / "JPEGImages" / f"{new}.jpg")
        xml = (base / "Annotations" / f"{src}.xml").read_text(encoding="utf-8")
        xml = xml.replace(f"<filename>{src}.jpg</filename>", f"<filename>{new}.jpg</filename>")
        (root / "Annotations" / f"{new}.xml").write_text(xml, encoding="utf-8")
        ids.append(new)
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    (root / "complete").write_text("1")
    return root


def warm(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        if path.is_file():
            total += len(path.read_bytes())
    return total


def time_tar(root: Path, out_dir: Path) -> float:
    target = out_dir / "baseline.tar"
    started = time.perf_counter()
    subprocess.run(["tar", "cf", str(target), "-C", str(root), "JPEGImages", "Annotations", "ImageSets"], check=True)
    seconds = time.perf_counter() - started
    target.unlink()
    return seconds


def time_stage(root: Path, out_dir: Path, workers: int, max_count: int) -> float:
    import ray

    from pipelines import prepare, ray_auth, shard
    from pipelines.config import load_config
    from pipelines.dag import run_stage
    from pipelines.workspace import Workspace

    if ray.is_initialized():
        ray.shutdown()
    ray_auth.configure(starts_local=True)  # token authentication, as the pipeline's own local instance
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    # one throw-away task per worker so worker processes exist before the clock starts
    ray.get([ray.remote(lambda: None).remote() for _ in range(workers)])
    cfg = load_config(
        None,
        [
            f"workspace={out_dir / f'ws{workers}'}",
            "data.kind=voc",
            f"data.root={root}",
            "data.splits={train: [train]}",
            f"shard.max_count={max_count}",
            "data.class_names=[circle, square, triangle, star, cross]",
        ],
    )
    ws = Workspace.open(cfg.workspace)
    prepared = run_stage(prepare.SPEC, cfg, ws, tracking_enabled=False)
    started = time.perf_counter()
    result = run_stage(shard.SPEC, cfg, ws, upstream={"prepare": prepared}, force=True, tracking_enabled=False)
    seconds = time.perf_counter() - started
    assert result.manifest["splits"]["train"]["rejected_images"] == 0
    ray.shutdown()
    shutil.rmtree(out_dir / f"ws{workers}")
    return seconds


def time_library(root: Path, out_dir: Path) -> float:
    """Listing + write_shard of every image into one local tar, in this process (no Ray, no stage)."""
    from yolov2.data.shard_build import ShardOptions, write_shard
    from yolov2.data.sources import list_split_items

    target = out_dir / "library.tar"
    started = time.perf_counter()
    listing = list_split_items(
        {"format": "voc", "root": str(root)}, "train", ["train"], ["circle", "square", "triangle", "star", "cross"]
    )
    with open(target, "wb") as f:
        outcome = write_shard(f, listing.items, ShardOptions())
    seconds = time.perf_counter() - started
    assert len(outcome.records) == len(listing.items) and not outcome.rejects
    target.unlink()
    return seconds


def time_python_io_floor(root: Path, out_dir: Path) -> float:
    """The least any Python shard writer does: for every image, read its XML and JPEG and write both, each after a
    512-byte header, into one file (os-level calls, no parsing, no checks, no record). Not a stage: a floor."""
    ids = (root / "ImageSets" / "Main" / "train.txt").read_text().split()
    header = bytes(512)
    target = out_dir / "floor.tar"
    started = time.perf_counter()
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for image_id in ids:
            for path in (f"{root}/Annotations/{image_id}.xml", f"{root}/JPEGImages/{image_id}.jpg"):
                fd = os.open(path, os.O_RDONLY)
                try:
                    data = os.read(fd, os.fstat(fd).st_size)
                finally:
                    os.close(fd)
                os.write(out, header)
                os.write(out, data)
    finally:
        os.close(out)
    seconds = time.perf_counter() - started
    target.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000, help="number of 640x480 images (default 10000)")
    parser.add_argument(
        "--cache",
        default=os.path.join(tempfile.gettempdir(), "yolov2-bench-shard"),
        help="where the generated dataset is kept between runs",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timings per configuration; the best is reported")
    args = parser.parse_args()

    root = make_dataset(Path(args.cache), args.images)
    dataset_bytes = warm(root)
    max_count = max(1, args.images // 16)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        tar_s = min(time_tar(root, out) for _ in range(args.repeats))
        floor_s = min(time_python_io_floor(root, out) for _ in range(args.repeats))
        library_s = min(time_library(root, out) for _ in range(args.repeats))
        one = min(time_stage(root, out, 1, max_count) for _ in range(args.repeats))
        two = min(time_stage(root, out, 2, max_count) for _ in range(args.repeats))
    n = args.images
    print(
        json.dumps(
            {
                "benchmark": "shard",
                "images": n,
                "images_note": "more than the issue's minimum of 2,000 to amortise the stage's fixed costs "
                "(see docstring)"
                if n > 2000
                else "the issue's minimum",
                "dataset_mb": round(dataset_bytes / 1e6, 1),
                "shards": 16,
                "tar_images_per_s": round(n / tar_s, 1),
                "python_io_floor_images_per_s": round(n / floor_s, 1),
                "library_1_process_images_per_s": round(n / library_s, 1),
                "stage_1_worker_images_per_s": round(n / one, 1),
                "stage_2_workers_images_per_s": round(n / two, 1),
                "ratio_1_worker_vs_tar": round(tar_s / one, 3),
                "ratio_2_workers_vs_1": round(one / two, 3),
                "ratio_python_io_floor_vs_tar": round(tar_s / floor_s, 3),
                "ratio_library_vs_tar": round(tar_s / library_s, 3),
                "targets": {"ratio_1_worker_vs_tar": ">= 1.0", "ratio_2_workers_vs_1": ">= 1.8"},
                "cpus": os.cpu_count(),
                **machine_facts(
                    2, NO_MODEL, "Ray workers, the most timed (stages with 1 and 2; tar, library: one process)"
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
