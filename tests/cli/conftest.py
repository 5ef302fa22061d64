"""Independent Darknet references for the command tests: a cfg walker that counts parameters and
BFLOPs the way Darknet's layer constructors do, and a plain writer of Darknet ``.weights`` files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass
class CfgFacts:
    convs: list[tuple[int, int, int, bool]]  # per [convolutional]: (filters, input channels, size, batch_normalize)
    params: int  # learnable: weights + biases (+ BN scales), no BN running statistics
    conv_bflops: float  # sum over convs of 2*n*size*size*c*out_h*out_w / 1e9 (make_convolutional_layer)
    maxpool_bflops: float  # sum over maxpools of size*size*c*out_h*out_w / 1e9 (AlexeyAB's make_maxpool_layer)
    output: tuple[int, int, int]  # (channels, height, width) of the last layer before [region]


def walk_cfg(path: Path) -> CfgFacts:
    """Read a Darknet cfg with a few lines of plain Python (not the project's parser) and track shapes."""
    sections: list[tuple[str, dict[str, str]]] = []
    for raw in Path(path).read_text().splitlines():
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            sections.append((line[1:-1], {}))
        else:
            key, value = line.split("=", 1)
            sections[-1][1][key] = value
    net = sections[0][1]
    c, h, w = int(net.get("channels", 3)), int(net["height"]), int(net["width"])
    outputs: list[tuple[int, int, int]] = []
    convs, params, conv_bf, pool_bf = [], 0, 0.0, 0.0
    for name, o in sections[1:]:
        if name == "convolutional":
            n, k, s = int(o["filters"]), int(o.get("size", 1)), int(o.get("stride", 1))
            pad = k // 2 if int(o.get("pad", 0)) else int(o.get("padding", 0))
            bn = bool(int(o.get("batch_normalize", 0)))
            oh, ow = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
            convs.append((n, c, k, bn))
            params += n * c * k * k + (2 * n if bn else n)
            conv_bf += 2.0 * n * k * k * c * oh * ow / 1e9
            c, h, w = n, oh, ow
        elif name == "maxpool":
            k, s = int(o["size"]), int(o["stride"])
            p = int(o.get("padding", k - 1))
            h, w = (h + p - k) // s + 1, (w + p - k) // s + 1
            pool_bf += k * k * c * h * w / 1e9
        elif name == "route":
            idx = [int(v) for v in o["layers"].split(",")]
            idx = [len(outputs) + i if i < 0 else i for i in idx]
            c, h, w = sum(outputs[i][0] for i in idx), outputs[idx[0]][1], outputs[idx[0]][2]
        elif name == "reorg":
            s = int(o["stride"])
            c, h, w = c * s * s, h // s, w // s
        elif name == "region":
            break
        outputs.append((c, h, w))
    return CfgFacts(convs, params, conv_bf, pool_bf, outputs[-1])


def write_weights_file(path: Path, convs: list[tuple[int, int, int, bool]], seen: int = 0, seed: int = 0) -> Path:
    """A Darknet .weights file (version 0.2.0, int64 seen) with random but sane values, written
    directly from the format in REFERENCE.md: per conv, biases, [scales, mean, variance], weights."""
    rng = np.random.default_rng(seed)
    chunks = [np.array([0, 2, 0], "<i4").tobytes(), np.array([seen], "<i8").tobytes()]
    for n, c, k, bn in convs:
        parts = [rng.normal(0, 0.1, n)]
        if bn:
            parts += [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)]
        parts.append(rng.normal(0, (c * k * k) ** -0.5, n * c * k * k))
        chunks += [p.astype("<f4").tobytes() for p in parts]
    path.write_bytes(b"".join(chunks))
    return path


@pytest.fixture(scope="session")
def darknet_cfg(shared_data: Path) -> Callable[[str], Path]:
    """darknet_cfg("yolov2-voc.cfg") -> the path of that shared Darknet file (skips if absent)."""

    def get(name: str) -> Path:
        path = shared_data / "darknet_cfg" / name
        if not path.is_file():
            pytest.skip(f"{path} not found")
        return path

    return get


@pytest.fixture(scope="session")
def cfg_facts() -> Callable[[Path], CfgFacts]:
    return walk_cfg


@pytest.fixture(scope="session")
def weights_writer() -> Callable[..., Path]:
    return write_weights_file
