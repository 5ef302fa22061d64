"""Train checkpoints in the run's storage: which one to resume from, and model files as bytes.

Our checkpoints are plain ``<run>/checkpoint_<time>/state.pt`` folders (what Ray Train's ``report`` uploads),
whose names sort by time.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist

from pipelines.workspace import Workspace
from yolov2.engine.checkpoint import load_checkpoint
from yolov2.inference import ModelSpec, save_model_file

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"
BEST_FILE = "best.pt"  # in the stage's output: the model of the epoch with the best BEST_BY
BEST_BY = "map50_voc07"  # VOC07 mAP@0.5 on the val split; never a test metric
RUN_NAME = "run"  # Ray Train's run folder under <output>/ray


def newest_checkpoint(
    workspace: Workspace, checkpoint_dir: str, restored: dict[str, Any] | None, rank: int, world: int
) -> dict[str, Any] | None:
    """The checkpoint to resume from: the one Ray restored, or a newer one it had not registered yet.

    Ray Train's controller registers a reported checkpoint a moment after the report; a worker killed in
    between (seen with SIGKILL) makes it restart from the checkpoint before, or from step 0. Rank 0 picks
    the newest one under ``checkpoint_dir`` that loads (a half-uploaded one does not) and every rank resumes
    from that same one.
    """
    choice: list[str | None] = [None]
    newer = None  # rank 0's loaded copy of the chosen checkpoint (the other ranks load it below)
    if rank == 0:
        restored_step = restored["state"]["step"] if restored else -1
        for name in reversed(workspace.list_dir(checkpoint_dir)):  # names sort by time
            if not name.startswith("checkpoint_"):
                continue
            try:
                state = load_state(workspace, checkpoint_dir, name)
            except Exception as e:  # FileNotFoundError, a truncated file: an upload the kill interrupted
                log.warning("skipping incomplete checkpoint %s/%s (%s)", checkpoint_dir, name, e)
                continue
            if state["state"]["step"] > restored_step:
                log.warning(
                    "Ray Train restored %s; resuming from the newer checkpoint %s (step %d) instead",
                    f"step {restored_step}" if restored else "no checkpoint",
                    name,
                    state["state"]["step"],
                )
                choice, newer = [name], state
            break
    if world > 1 and dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        return restored
    return newer if newer is not None else load_state(workspace, checkpoint_dir, choice[0])


def resume_state(workspace: Workspace, checkpoint_dir: str, rank: int, world: int) -> dict[str, Any] | None:
    """The checkpoint a (re)started worker continues from: Ray's restored one, or a newer one it had not
    registered (:func:`newest_checkpoint`); None: from the start."""
    restored = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            restored = load_checkpoint(Path(folder) / STATE_FILE)
    return newest_checkpoint(workspace, checkpoint_dir, restored, rank, world)


def load_state(workspace: Workspace, checkpoint_dir: str, name: str) -> dict[str, Any]:
    """``<checkpoint_dir>/<name>/state.pt``, loaded with ``weights_only=True``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / STATE_FILE
        path.write_bytes(workspace.read_bytes(checkpoint_dir, name, STATE_FILE))
        return load_checkpoint(path)


def has_checkpoint(storage: Path) -> bool:
    """Whether a (local) Ray Train storage folder holds one of our checkpoints."""
    return any(storage.rglob(STATE_FILE))


def model_file_bytes(model: torch.nn.Module, spec: ModelSpec) -> bytes:
    """The model file (:func:`yolov2.inference.save_model_file`) as bytes, for the workspace to write."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        save_model_file(path, model, spec)
        return path.read_bytes()
