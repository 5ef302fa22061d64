"""Validation on two ranks (pipelines/train/validation.py) equals one process validating alone: two gloo
processes, each predicting its share of 11 generated images in 3 shards, rank 0 merging; against a plain loop
over every image (webdataset's reader, one Predictor, compute_metrics). Rank 1 starts with other BN running
statistics (as DDP leaves them between forwards): rank 0's must be the ones used everywhere.

The two ranks are this file run as a script (``python test_validation.py --rank ...``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import torch

from yolov2.config import PredictConfig
from yolov2.data.shards import ShardSpec, iter_shard_samples, write_shard_bytes
from yolov2.data.synthetic import SHAPE_CLASSES, generate_image
from yolov2.evaluation import compute_metrics, predict_samples
from yolov2.inference import ModelSpec, Predictor, load_model_file, save_model_file
from yolov2.metrics import DetectionTable

SIZE, BATCH = 96, 2
PREDICT = PredictConfig(input_size=SIZE, max_candidates=2000)
SHARD_SIZES = (4, 4, 3)
ANCHORS = [[0.5, 0.7], [1.0, 1.2], [1.6, 1.4], [2.2, 2.5], [3.0, 2.8]]


def _write_case(folder: Path) -> tuple[Path, list[ShardSpec]]:
    """Three val shards of generated images and a tiny model with non-trivial BN running statistics."""
    specs, index = [], 0
    for number, count in enumerate(SHARD_SIZES):
        samples = []
        for _ in range(count):
            image, record = generate_image(7, index, "val", SIZE, SIZE, 3)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            assert ok
            samples.append((record.image_id, jpeg.tobytes(), record))
            index += 1
        path = folder / f"val-{number:06d}.tar"
        path.write_bytes(write_shard_bytes(samples))
        specs.append(ShardSpec(str(path), count))
    torch.manual_seed(0)
    spec = ModelSpec("yolov2_tiny_voc", len(SHAPE_CLASSES), ANCHORS, list(SHAPE_CLASSES), SIZE, width_multiplier=0.25)
    model = spec.build()
    g = torch.Generator().manual_seed(1)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.copy_(0.1 * torch.randn(buffer.shape, generator=g))
        elif name.endswith("running_var"):
            buffer.copy_(0.5 + torch.rand(buffer.shape, generator=g))
    save_model_file(folder / "model.pt", model, spec)
    return folder / "model.pt", specs


def _rank_main(args: argparse.Namespace) -> None:
    """One rank: join the gloo group, validate its share; rank 0 writes what it gathered."""
    import torch.distributed as dist

    from pipelines.train.validation import gather_predictions
    from yolov2.engine.precision import FLOAT32
    from yolov2.evaluation import validation_metrics

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=args.init, rank=args.rank, world_size=args.world)
    model, spec = load_model_file(args.model)
    if args.rank == 1:  # its own BN statistics, as after its own last training forward
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.add_(0.5)
    shards = [ShardSpec(url, n) for url, n in json.loads(args.shards)]
    gathered = gather_predictions(model, spec, shards, PREDICT, BATCH, FLOAT32, args.rank, args.world)
    if args.rank == 0:
        assert gathered is not None
        detections, records = gathered
        out = Path(args.out)
        pq.write_table(detections.to_arrow(), out / "detections.parquet")
        metrics = validation_metrics(records, detections, spec.class_names)
        (out / "result.json").write_text(json.dumps({"ids": [r.image_id for r in records], "metrics": metrics}))
    else:
        assert gathered is None
    dist.destroy_process_group()


def test_two_ranks_validate_exactly_as_one_process(tmp_path):
    model_path, shards = _write_case(tmp_path)
    shards_arg = json.dumps([[s.url, s.num_samples] for s in shards])
    ranks = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                *("--rank", str(rank), "--world", "2", "--init", f"file://{tmp_path / 'store'}"),
                *("--model", str(model_path), "--shards", shards_arg, "--out", str(tmp_path)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    for rank, process in enumerate(ranks):
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"rank {rank}:\n{output}"

    torch.set_num_threads(1)  # as the ranks
    predictor = Predictor.from_file(model_path, PREDICT)
    samples = ((image, record) for _, image, record in iter_shard_samples([s.url for s in shards]))
    plain, records = predict_samples(predictor, samples, batch_size=BATCH)
    expected, _ = compute_metrics(records, plain, list(SHAPE_CLASSES), ["voc07", "voc12", "coco"])

    result = json.loads((tmp_path / "result.json").read_text())
    gathered = DetectionTable.from_arrow(pq.read_table(tmp_path / "detections.parquet"))
    assert result["ids"] == [r.image_id for r in records] and len(records) == sum(SHARD_SIZES)
    assert len(plain) > 100 and len(set(plain.image_id)) == len(records)  # every image has detections
    assert gathered.image_id.tolist() == plain.image_id.tolist()
    np.testing.assert_array_equal(gathered.label, plain.label)
    np.testing.assert_array_equal(gathered.score, plain.score)
    np.testing.assert_array_equal(gathered.boxes, plain.boxes)
    assert result["metrics"] == {k: expected[k] for k in ("map50_voc07", "map50_voc12", "coco_AP", "coco_AP50")}
    assert result["metrics"]["map50_voc12"] > 0  # enough true positives among them to tell a wrong merge


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for option in ("--rank", "--world"):
        parser.add_argument(option, type=int, required=True)
    for option in ("--init", "--model", "--shards", "--out"):
        parser.add_argument(option, required=True)
    _rank_main(parser.parse_args())
