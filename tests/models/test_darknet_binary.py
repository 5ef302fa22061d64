"""Darknet's own loader on our backbone file: tools/darknet_check.py's check, run by a darknet binary.

The other hand-over tests check our reader and writer against the cfg text; these run pjreddie/darknet itself
(``partial`` re-saves the file, ``denormalize`` folds its batch norms), so they need a binary: set DARKNET_BIN
(``make`` in a checkout of pjreddie/darknet builds one, CPU only by default). The check lives in the tool,
which prints the same comparison as JSON.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

DARKNET_BIN = os.environ.get("DARKNET_BIN", "")
TOOL = Path(__file__).resolve().parents[2] / "tools" / "darknet_check.py"

pytestmark = pytest.mark.skipif(
    not DARKNET_BIN,
    reason="set DARKNET_BIN to a darknet binary built from pjreddie/darknet to run Darknet's own loader on our weights",
)


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    """tools/darknet_check.py as a module (tools/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("darknet_check", TOOL)
    assert spec is not None and spec.loader is not None, TOOL
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def darknet() -> Path:
    """The binary DARKNET_BIN names; a set but wrong path fails rather than skips."""
    path = Path(DARKNET_BIN).resolve()
    assert path.is_file() and os.access(path, os.X_OK), f"DARKNET_BIN={DARKNET_BIN} is not an executable file"
    return path


def test_darknet_reads_our_backbone_weights(tool: ModuleType, darknet: Path, cfg_dir: Path, tmp_path: Path) -> None:
    """Darknet re-saves every value of our 18-layer file bit for bit, folds its batch norms as we fold ours,
    and its re-saved file loads into the detector's backbone unchanged."""
    summary = tool.run_check(darknet, cfg_dir / "darknet19.cfg", tmp_path)
    assert summary["failures"] == [], summary
    assert summary["darknet_cutoff"] == 23  # darknet19_448.conv.23: the first 18 convs are layers 0..22
    assert (
        summary["values_compared"] == summary["values_per_file"] == summary["reload_into_detector"]["values_compared"]
    )
    assert (
        summary["file_bytes"]["darknet_partial"] == summary["file_bytes"]["ours"] == 20 + 4 * summary["values_compared"]
    )
    assert summary["header_darknet"] == {"major": 0, "minor": 2, "revision": 0, "seen": 0, "bytes": 20}


def test_a_short_file_is_caught_though_darknet_loads_it(
    tool: ModuleType, darknet: Path, cfg_dir: Path, tmp_path: Path
) -> None:
    """Darknet reads a truncated file without complaint (exit 0, full-size re-save, random init where the file
    ended): only the value comparison shows it, which is why the check compares values."""
    summary = tool.run_check(darknet, cfg_dir / "darknet19.cfg", tmp_path, truncate=4096)
    assert summary["darknet_runs"]["partial"]["returncode"] == 0
    assert summary["file_bytes"]["darknet_partial"] == summary["file_bytes"]["ours"]
    assert summary["resaved_vs_ours"]["values_differing_bitwise"] == 4096 // 4
    assert not summary["ok"]
