"""Darknet ``.weights`` files: read into and write from any model exposing ``darknet_layers()``.

Layout (``src/parser.c``, ``load_weights_upto`` / ``save_weights_upto``): int32 major, minor,
revision; ``seen`` (images trained on) as int64 when major*10 + minor >= 2 and major, minor < 1000,
else int32; then for each conv layer in cfg order: biases (n), and with batch norm scales (n),
rolling_mean (n), rolling_variance (n); then the weights (n * c/groups * size * size, the same
row-major order as PyTorch's (out, in/groups, kh, kw)). All float32 little-endian. We write
version 0.2.0 (a 20-byte header), as Darknet does.

Mapping: biases -> ``bn.bias`` with batch norm, else ``conv.bias``; scales -> ``bn.weight``;
rolling_mean/variance -> ``bn.running_mean``/``bn.running_var``; weights -> ``conv.weight``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import torch
from torch import nn

from yolov2.errors import WeightsError
from yolov2.io import atomic_output
from yolov2.models.layers import ConvPair


class _DarknetLayered(Protocol):
    def darknet_layers(self) -> Iterable[ConvPair]: ...


WRITE_VERSION = (0, 2, 0)


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_darknet_weights` filled in."""

    path: str
    version: tuple[int, int, int]  # (major, minor, revision) from the header
    seen: int  # images seen in training, from the header
    layers_loaded: int  # conv layers filled, from the first on
    layers_total: int  # conv layers the model has
    values_loaded: int  # float32 values read (weights, biases and BN statistics)
    bytes_used: int  # header + 4 * values_loaded
    file_bytes: int  # size of the file (more than bytes_used when only the first layers were asked for)

    def __str__(self) -> str:
        return (
            f"{self.path}: loaded {self.layers_loaded}/{self.layers_total} conv layers, "
            f"{self.values_loaded:,} values ({self.bytes_used:,} of {self.file_bytes:,} bytes), "
            f"version {'.'.join(map(str, self.version))}, seen={self.seen}"
        )


def model_darknet_layers(model: nn.Module) -> list[ConvPair]:
    """The model's (conv, bn or None) pairs in Darknet order, checked to be expressible in a .weights file."""
    if not hasattr(model, "darknet_layers"):
        raise WeightsError(f"{type(model).__name__} has no darknet_layers() method; cannot map it to Darknet weights")
    pairs = list(cast(_DarknetLayered, model).darknet_layers())  # checked by hasattr above
    for i, (conv, bn) in enumerate(pairs):
        if bn is None and conv.bias is None:
            raise WeightsError(f"conv layer {i} has neither batch norm nor bias; Darknet always stores biases")
        if bn is not None and conv.bias is not None:
            raise WeightsError(f"conv layer {i} has both a conv bias and batch norm; Darknet has one bias per filter")
    return pairs


def layer_value_count(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> int:
    """float32 values one conv layer takes in a .weights file: n biases (+3n BN values) + the weights."""
    n = conv.out_channels
    return n * (4 if bn is not None else 1) + conv.weight.numel()


def _layer_tensors(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> list[torch.Tensor]:
    """The layer's tensors in file order: biases, [scales, rolling_mean, rolling_variance], weights."""
    if bn is None:
        assert conv.bias is not None  # model_darknet_layers refuses a layer with neither batch norm nor bias
        return [conv.bias, conv.weight]
    # Darknet's batch norms are affine and track running statistics, so none of these is None.
    assert bn.bias is not None and bn.running_mean is not None and bn.running_var is not None
    return [bn.bias, bn.weight, bn.running_mean, bn.running_var, conv.weight]


def conv_layer_shapes(model: nn.Module) -> list[tuple[tuple[int, ...], bool]]:
    """(conv weight shape, has batch norm) of each Darknet conv layer, in cfg order: what a ``.weights`` file's
    layout depends on, so two networks with equal shapes read the same file."""
    return [(tuple(conv.weight.shape), bn is not None) for conv, bn in model_darknet_layers(model)]


def read_header(data: bytes, path: str) -> tuple[tuple[int, int, int], int, int]:
    """-> ((major, minor, revision), seen, header size in bytes)."""
    if len(data) < 16:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a Darknet weights header (at least 16)")
    major, minor, revision = struct.unpack_from("<3i", data, 0)
    if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000:
        if len(data) < 20:
            raise WeightsError(
                f"{path}: version {major}.{minor}.{revision} needs a 20-byte header, file has {len(data)} bytes"
            )
        (seen,) = struct.unpack_from("<q", data, 12)
        return (major, minor, revision), seen, 20
    (seen,) = struct.unpack_from("<i", data, 12)
    return (major, minor, revision), seen, 16


def load_darknet_weights(
    model: nn.Module, path: str | Path, max_layers: int | None = None, allow_partial: bool = False
) -> LoadReport:
    """Fill the model's conv layers from a Darknet .weights file.

    ``max_layers=N``: load only the first N conv layers (the file must hold at least those; more is
    fine, as with Darknet's ``cutoff``). Note that Darknet counts *all* layers: ``darknet19_448.conv.23``
    holds the first 23 layers of darknet19_448.cfg, i.e. its first 18 conv layers (``max_layers=18``).
    ``allow_partial=True``: a file shorter than the model is fine if it ends on a layer boundary;
    every layer it holds is loaded. Otherwise the size must match exactly.
    A size mismatch raises WeightsError with the expected and actual byte counts; nothing is
    modified unless the whole load succeeds.
    """
    path_s = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise WeightsError(f"{path_s}: cannot read weights file ({e.strerror})") from e
    version, seen, header = read_header(data, path_s)
    pairs = model_darknet_layers(model)
    counts = [layer_value_count(c, b) for c, b in pairs]
    ends = np.cumsum([0] + counts) * 4 + header  # ends[k] = bytes needed for the first k layers
    size = len(data)
    full = int(ends[-1])
    if max_layers is not None:
        if not 0 <= max_layers <= len(pairs):
            raise WeightsError(f"{path_s}: max_layers={max_layers} but the model has {len(pairs)} conv layers")
        n = max_layers
        if size < ends[n]:
            raise WeightsError(
                f"{path_s}: file is {size:,} bytes, but the first {n} conv layers need {int(ends[n]):,} bytes "
                f"(expected at least {int(ends[n]):,}, actual {size:,})"
            )
    elif allow_partial and size < full:
        hits = np.nonzero(ends == size)[0]
        if len(hits) == 0:
            below = int(np.searchsorted(ends, size, side="right")) - 1
            raise WeightsError(
                f"{path_s}: file is {size:,} bytes, which ends inside conv layer {below} "
                f"(expected {int(ends[below]):,} bytes for {below} layers or {int(ends[below + 1]):,} for {below + 1})"
            )
        n = int(hits[0])
    else:
        if size != full:
            what = "truncated" if size < full else "oversized"
            raise WeightsError(
                f"{path_s}: {what} weights file: expected {full:,} bytes for {len(pairs)} conv layers "
                f"({header}-byte header + 4 x {sum(counts):,} values), actual {size:,} bytes"
            )
        n = len(pairs)
    values = np.frombuffer(data, dtype="<f4", count=(int(ends[n]) - header) // 4, offset=header)
    staged: list[tuple[torch.Tensor, np.ndarray]] = []
    offset = 0
    for conv, bn in pairs[:n]:
        for t in _layer_tensors(conv, bn):
            staged.append((t, values[offset : offset + t.numel()]))
            offset += t.numel()
    with torch.no_grad():
        for t, v in staged:
            t.copy_(torch.from_numpy(v.copy()).view_as(t))
    return LoadReport(path_s, version, seen, n, len(pairs), offset, int(ends[n]), size)


def save_darknet_weights(model: nn.Module, path: str | Path, seen: int = 0, max_layers: int | None = None) -> int:
    """Write the model's first ``max_layers`` conv layers (all by default) as a Darknet .weights file
    (version 0.2.0: 20-byte header, ``seen`` as int64). Atomic: a temp file in the same folder, then
    ``os.replace``. Returns the number of bytes written."""
    pairs = model_darknet_layers(model)
    n = len(pairs) if max_layers is None else max_layers
    if not 0 <= n <= len(pairs):
        raise WeightsError(f"{path}: max_layers={max_layers} but the model has {len(pairs)} conv layers")
    written = 0
    with atomic_output(path, mode=None) as tmp, open(tmp, "wb") as f:
        written += f.write(struct.pack("<3iq", *WRITE_VERSION, seen))
        for conv, bn in pairs[:n]:
            written += _write_tensors(f, _layer_tensors(conv, bn))
        f.flush()
        os.fsync(f.fileno())
    return written


def _write_tensors(f, tensors: Iterable[torch.Tensor]) -> int:
    written = 0
    for t in tensors:
        arr = t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
        written += f.write(arr.tobytes())
    return written
