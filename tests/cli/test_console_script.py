"""The installed `yolov2` console script (pyproject [project.scripts]) starts and lists every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_yolov2_help() -> None:
    script = Path(sys.executable).parent / "yolov2"
    if not script.is_file():
        pytest.skip(f"{script} not installed (pip install -e . puts it there)")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("model-summary", "predict", "export", "convert-weights", "env"):
        assert command in result.stdout
