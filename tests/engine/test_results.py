"""The per-epoch results table (yolov2/engine/results.py) from a short run of the real training loop: one row
per epoch whose losses, lr and validation numbers are what the loop logged and validated (worked out here from
the logged values), the CSV reading back as the Parquet table, and a resumed run keeping the earlier rows."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from yolov2.config import LoopConfig, LossConfig
from yolov2.data.batch import Batch
from yolov2.engine.checkpoint import load_checkpoint, save_checkpoint
from yolov2.engine.optim import build_sgd
from yolov2.engine.results import EpochResult, epoch_result, results_csv, results_table
from yolov2.engine.trainer import Hooks, LoopSettings, train
from yolov2.models import build_model

COLUMNS = [
    "epoch",
    "step",
    "loss_total",
    "loss_coord",
    "loss_obj",
    "loss_noobj",
    "loss_prior",
    "loss_cls",
    "lr",
    "val_map50_voc07",
    "val_map50_voc12",
    "val_coco_ap",
    "val_coco_ap50",
    "images_per_s",
    "epoch_seconds",
    "wall_seconds",
]
EPOCHS, MICRO = 3, 2  # micro-batches per epoch, one optimizer step each


def _batches(epoch: int) -> list[Batch]:
    """Two different batches per epoch (seeded by epoch), so the epoch means are not one value repeated."""
    g = torch.Generator().manual_seed(epoch)
    out = []
    for i in range(MICRO):
        images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=g)
        targets = torch.tensor([[[i % 3, 0.5, 0.5, 0.4, 0.3]], [[(i + 1) % 3, 0.3, 0.6, 0.2, 0.5]]])
        out.append(
            Batch(
                images,
                targets,
                [f"{epoch}-{i}a", f"{epoch}-{i}b"],
                torch.full((2, 2), 64),
                torch.zeros(2, dtype=torch.bool),
                i,
            )
        )
    return out


def _validate(model, state) -> dict[str, float]:
    e = state.epoch
    return {"map50_voc07": 0.1 * e, "map50_voc12": 0.2 * e, "coco_AP": 0.01 * e, "coco_AP50": 0.03 * e}


def _run(resume_from=None, checkpoints=None, logged=None):
    torch.manual_seed(0)
    model = build_model("yolov2_tiny_voc", 3, width_multiplier=0.25)
    settings = LoopSettings(
        loop=LoopConfig(epochs=EPOCHS, lr=0.01, burn_in=2, log_every=1, val_every=2),
        loss=LossConfig(),
        steps_per_epoch=MICRO,
        accumulation=1,
        images_per_micro_batch=4,  # 2 per rank x 2 ranks: what `seen` counts
        anchors=torch.tensor(model.default_anchors, dtype=torch.float32),
        num_classes=3,
        amp="off",
        channels_last=False,
    )
    logged = [] if logged is None else logged
    checkpoints = [] if checkpoints is None else checkpoints
    hooks = Hooks(
        log=lambda metrics, step: logged.append((step, dict(metrics))),
        validate=_validate,
        end_epoch=lambda state, metrics, ckpt: checkpoints.append(copy.deepcopy(ckpt)),
    )
    return train(
        model,
        build_sgd(model, 0.01, 0.9, 0.0005),
        lambda epoch, first: _batches(epoch),
        settings,
        torch.device("cpu"),
        hooks,
        resume_from=resume_from,
    )


def test_one_row_per_epoch_with_what_the_loop_logged_and_validated():
    logged: list[tuple[int, dict]] = []
    final = _run(logged=logged)
    rows = final.results
    assert [r.epoch for r in rows] == [1, 2, 3] and [r.step for r in rows] == [2, 4, 6]
    steps = [metrics for step, metrics in logged if "loss/total" in metrics]  # log_every=1: one micro-batch each
    assert len(steps) == EPOCHS * MICRO
    for row in rows:
        epoch_steps = steps[(row.epoch - 1) * MICRO : row.epoch * MICRO]
        for part in ("total", "coord", "obj", "noobj", "prior", "cls"):
            expected = sum(m[f"loss/{part}"] for m in epoch_steps) / MICRO
            assert getattr(row, f"loss_{part}") == pytest.approx(expected, rel=1e-12, abs=1e-12), part
        assert row.lr == epoch_steps[-1]["lr"]
        assert row.images_per_s > 0 and row.epoch_seconds > 0
    # validated at epoch 2 (val_every) and 3 (the last); not at 1
    assert [r.val_map50_voc07 for r in rows] == [None, pytest.approx(0.2), pytest.approx(0.3)]
    assert rows[2].val_map50_voc12 == pytest.approx(0.6) and rows[2].val_coco_ap == pytest.approx(0.03)
    assert rows[2].val_coco_ap50 == pytest.approx(0.09) and rows[0].val_coco_ap is None
    np.testing.assert_allclose([r.wall_seconds for r in rows], np.cumsum([r.epoch_seconds for r in rows]))


def test_the_csv_reads_back_as_the_parquet_table(tmp_path):
    rows = _run().results
    table = results_table(rows)
    assert table.column_names == COLUMNS and table.num_rows == EPOCHS
    pq.write_table(table, tmp_path / "results.parquet")
    (tmp_path / "results.csv").write_text(results_csv(rows))
    from_parquet = pq.read_table(tmp_path / "results.parquet").to_pandas()
    from_csv = pd.read_csv(tmp_path / "results.csv")
    pd.testing.assert_frame_equal(from_csv, from_parquet, check_exact=True)
    assert from_csv["val_map50_voc07"].isna().tolist() == [True, False, False]  # empty cell: no validation
    assert (tmp_path / "results.csv").read_text().splitlines()[1].split(",")[9] == ""


def test_a_resumed_run_keeps_the_rows_of_the_epochs_before_its_checkpoint(tmp_path):
    checkpoints: list[dict] = []
    straight = _run(checkpoints=checkpoints).results
    save_checkpoint(tmp_path / "epoch1.pt", checkpoints[0])  # the rows travel in a weights_only checkpoint
    resumed = _run(resume_from=load_checkpoint(tmp_path / "epoch1.pt")).results
    assert [r.epoch for r in resumed] == [1, 2, 3]
    assert resumed[0] == straight[0]  # carried, not measured again
    for a, b in zip(resumed[1:], straight[1:]):  # replayed: the same losses, lr and validation
        assert a.loss_total == pytest.approx(b.loss_total, rel=1e-5) and a.lr == b.lr
        assert a.val_map50_voc07 == b.val_map50_voc07
    assert resumed[1].wall_seconds == pytest.approx(resumed[0].wall_seconds + resumed[1].epoch_seconds)


def test_epoch_result_arithmetic():
    losses = dict(total=6.0, coord=1.0, obj=2.0, noobj=1.5, prior=0.5, cls=1.0)
    first = epoch_result(
        epoch=1, step=5, losses=losses, lr=0.001, metrics={}, images=100, train_seconds=4.0, epoch_seconds=5.0,
        previous=None,
    )  # fmt: skip
    second = epoch_result(
        epoch=2, step=10, losses=losses, lr=0.002, metrics={"map50_voc07": 0.5}, images=100, train_seconds=2.0,
        epoch_seconds=3.0, previous=first,
    )  # fmt: skip
    assert first.images_per_s == 25.0 and second.images_per_s == 50.0
    assert (first.wall_seconds, second.wall_seconds) == (5.0, 8.0)
    assert second.val_map50_voc07 == 0.5 and second.val_map50_voc12 is None
    assert [f for f in EpochResult.__dataclass_fields__] == COLUMNS
    nan_row = epoch_result(
        epoch=1, step=1, losses={**losses, "total": math.nan}, lr=0.1, metrics={}, images=1, train_seconds=1.0,
        epoch_seconds=1.0, previous=None,
    )  # fmt: skip
    assert results_csv([nan_row]).splitlines()[1].split(",")[2] == "nan"
