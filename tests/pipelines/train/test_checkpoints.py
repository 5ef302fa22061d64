"""Which checkpoint a restarted train worker resumes from (no Ray: rank 0 of a world of one)."""

from __future__ import annotations

import torch

from pipelines.train.checkpoints import STATE_FILE, newest_checkpoint
from pipelines.workspace import Workspace


def test_resume_takes_the_newest_complete_checkpoint_ray_had_not_registered(tmp_path):
    """A kill right after a report leaves a checkpoint Ray did not register (seen with SIGKILL): it is used;
    a half-written one is skipped; an older one never replaces what Ray restored."""
    ws = Workspace.open(tmp_path)

    def save(name: str, step: int) -> None:
        (tmp_path / "run" / name).mkdir(parents=True)
        torch.save({"state": {"step": step, "epoch": step // 2}}, tmp_path / "run" / name / STATE_FILE)

    save("checkpoint_2026-01-01_00-00-01.000000", 2)
    save("checkpoint_2026-01-01_00-00-02.000000", 4)
    (tmp_path / "run" / "checkpoint_2026-01-01_00-00-03.000000").mkdir()
    (tmp_path / "run" / "checkpoint_2026-01-01_00-00-03.000000" / STATE_FILE).write_bytes(b"PK\x03\x04trunc")
    restored = {"state": {"step": 2, "epoch": 1}}
    assert newest_checkpoint(ws, "run", restored, rank=0, world=1)["state"]["step"] == 4
    assert newest_checkpoint(ws, "run", None, rank=0, world=1)["state"]["step"] == 4
    assert newest_checkpoint(ws, "run", {"state": {"step": 6}}, rank=0, world=1)["state"]["step"] == 6
    assert newest_checkpoint(ws, "missing", None, rank=0, world=1) is None
