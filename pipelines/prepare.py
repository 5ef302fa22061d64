"""The `prepare` stage: make the raw dataset named by the config exist on local disk.

- ``data.kind: synthetic``: generate the demo dataset (a real VOC layout, plus COCO JSON).
- ``data.kind: voc|coco|yolo`` with ``data.root``: use that existing folder as it is (nothing copied).
- ``data.kind: voc|coco`` with ``data.download``: download the named archives (checksummed, resumable)
  into ``<workspace>/downloads`` and extract them safely into this stage's folder.

The manifest names the format and the root; ``class_names`` only for generated data (the generator's
names), ``archives`` for downloads. The shard stage resolves every other dataset's class names
(``data.class_names``, or ``auto``: :mod:`yolov2.data.class_names`), so this stage's output does not
depend on them.

Run alone: ``python -m pipelines.prepare --config configs/demo.yaml``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipelines.cli_common import stage_main
from pipelines.dag import StageContext, StageSpec
from yolov2.data import download, synthetic
from yolov2.errors import ConfigError

log = logging.getLogger(__name__)


def prepare_body(ctx: StageContext) -> dict[str, Any]:
    data = ctx.cfg.data
    if data.kind == "synthetic":
        generated = data.synthetic
        root = ctx.workspace.local_path(ctx.out("synthetic"))
        synthetic.write_synthetic_from_config(generated, root, progress=True)
        ctx.log_metrics({"images": generated.num_train + generated.num_val + generated.num_test})
        return {"format": "voc", "root": str(root), "class_names": list(synthetic.SHAPE_CLASSES)}
    if data.root:
        root = Path(os.path.abspath(Path(data.root).expanduser()))  # absolute, symlinks kept as the user gave them
        if not root.is_dir():
            raise ConfigError(f"data.root: {root} is not a folder")
        return {"format": data.kind, "root": str(root)}
    if not data.download:
        raise ConfigError(f"data.kind={data.kind} needs data.root (an existing dataset) or data.download (archives)")
    downloads = ctx.workspace.local_path("downloads")
    extracted = ctx.workspace.local_path(ctx.out("raw"))
    for name in data.download:
        archive = download.download(name, downloads, progress=True)
        download.extract(archive, extracted, progress=True)
    return {
        "format": data.kind,
        "root": str(_dataset_root(extracted, data.kind)),
        "archives": list(data.download),
    }


def _dataset_root(extracted: Path, kind: str) -> Path:
    """VOC archives unpack to VOCdevkit/VOC20xx: the split specs then read `VOC2007/trainval`."""
    if kind == "voc" and (extracted / "VOCdevkit").is_dir():
        return extracted / "VOCdevkit"
    return extracted


SPEC = StageSpec(
    name="prepare",
    upstream=(),
    config_keys=("data.kind", "data.root", "data.download", "data.synthetic"),
    version=2,  # 2: class names left to the shard stage (data.class_names is not among this stage's keys)
    body=prepare_body,
    summary="make the raw dataset named by the config exist on local disk",
)


if __name__ == "__main__":
    raise SystemExit(stage_main(SPEC))
