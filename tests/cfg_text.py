"""The tests' own reading of a Darknet cfg file (independent of yolov2/models/darknet_cfg.py, which it checks):
its sections in order, each as ``(name, {option: value})`` with blanks removed."""

from __future__ import annotations

from pathlib import Path


def cfg_sections(path: Path) -> list[tuple[str, dict[str, str]]]:
    sections: list[tuple[str, dict[str, str]]] = []
    for line in path.read_text().splitlines():
        line = "".join(line.split())
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            sections.append((line.strip("[]"), {}))
        else:
            key, value = line.split("=", 1)
            sections[-1][1][key] = value
    return sections
