"""Darknet ``.cfg`` files: the parser, and a network built layer by layer from one.

Supported sections: ``[net]`` (or ``[network]``), ``[convolutional]``, ``[maxpool]``, ``[route]``,
``[reorg]``, ``[region]`` -- what YOLOv2 and tiny YOLOv2 use -- and ``[avgpool]``, ``[softmax]``,
``[cost]``, which end Darknet's classifiers (``darknet19.cfg``, ``darknet19_448.cfg``). Anything else raises
:class:`ConfigError` naming the file and the line. Parsing follows Darknet's ``read_cfg``
(``src/parser.c``): whitespace is removed everywhere in a line, ``#`` and ``;`` start comment lines,
and the option defaults are Darknet's ``parse_*`` defaults.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yolov2.errors import ConfigError
from yolov2.models.layers import ConvPair, DarknetConv, DarknetMaxPool, Reorg
from yolov2.wordtree import read_class_map, read_tree

SUPPORTED_SECTIONS = (
    "net", "network", "convolutional", "maxpool", "route", "reorg", "region", "avgpool", "softmax", "cost",
)  # fmt: skip
# Darknet's cost types (get_cost_type, src/cost_layer.c); the cost only shapes training, so it is not run here.
COST_TYPES = ("sse", "masked", "smooth", "L1", "seg", "wgan")

# Options each layer section may carry (anything else is refused rather than silently ignored).
_ALLOWED = {
    "convolutional": {"batch_normalize", "filters", "size", "stride", "pad", "padding", "activation", "groups"},
    "maxpool": {"size", "stride", "padding"},
    "route": {"layers"},
    "reorg": {"stride", "reverse", "flatten", "extra"},
    "region": {
        "anchors", "bias_match", "classes", "coords", "num", "softmax", "jitter", "rescore", "object_scale",
        "noobject_scale", "class_scale", "coord_scale", "absolute", "thresh", "random", "max", "tree", "map",
    },
    "avgpool": set(),
    "softmax": {"groups", "temperature", "tree", "spatial", "noloss"},
    "cost": {"type", "scale", "ratio", "noobject_scale", "thresh"},
}  # fmt: skip


@dataclass(frozen=True)
class CfgSection:
    """One ``[name]`` block: its options as raw strings and the 1-based line of its header."""

    name: str
    options: dict[str, str]
    line: int
    option_lines: dict[str, int]
    path: str

    def where(self, key: str | None = None) -> str:
        """``file:line`` of the section header, or of the option ``key`` when given and present."""
        line = self.option_lines.get(key, self.line) if key else self.line
        return f"{self.path}:{line}"

    def get_int(self, key: str, default: int | None = None) -> int:
        return int(self._get(key, default, int, "an integer"))

    def get_float(self, key: str, default: float | None = None) -> float:
        return float(self._get(key, default, float, "a number"))

    def get_str(self, key: str, default: str | None = None) -> str:
        if key in self.options:
            return self.options[key]
        if default is None:
            raise ConfigError(f"{self.where()}: [{self.name}] needs option {key}=")
        return default

    def get_floats(self, key: str) -> list[float]:
        text = self.get_str(key)
        try:
            return [float(v) for v in text.split(",") if v != ""]
        except ValueError as e:
            raise ConfigError(f"{self.where(key)}: {key}={text} must be a comma-separated list of numbers") from e

    def _get(self, key: str, default: Any, cast: type, what: str) -> Any:
        if key not in self.options:
            if default is None:
                raise ConfigError(f"{self.where()}: [{self.name}] needs option {key}=")
            return default
        text = self.options[key]
        try:
            return cast(text)
        except ValueError as e:
            raise ConfigError(f"{self.where(key)}: {key}={text} must be {what}") from e


def parse_cfg(path: str | Path) -> list[CfgSection]:
    """Read a Darknet ``.cfg`` into its sections, in file order (the ``[net]`` section first).

    Raises ConfigError (with ``file:line``) for an unknown section, an option outside a section or
    without ``=``, an option a section does not support, or a file not starting with ``[net]``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read Darknet cfg ({e.strerror})") from e
    sections: list[CfgSection] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = "".join(raw.split())  # Darknet's strip(): removes every whitespace character
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]"):
                raise ConfigError(f"{path}:{lineno}: malformed section header {raw.strip()!r}")
            name = line[1:-1]
            if name not in SUPPORTED_SECTIONS:
                raise ConfigError(
                    f"{path}:{lineno}: unknown section [{name}]; supported: "
                    + ", ".join(f"[{s}]" for s in SUPPORTED_SECTIONS)
                )
            sections.append(CfgSection(name, {}, lineno, {}, str(path)))
            continue
        if "=" not in line:
            raise ConfigError(f"{path}:{lineno}: expected key=value, got {raw.strip()!r}")
        if not sections:
            raise ConfigError(f"{path}:{lineno}: option {raw.strip()!r} appears before any [section]")
        key, value = line.split("=", 1)
        section = sections[-1]
        allowed = _ALLOWED.get(section.name)
        if allowed is not None and key not in allowed:
            raise ConfigError(
                f"{path}:{lineno}: option {key!r} is not supported in [{section.name}]; "
                f"supported: {', '.join(sorted(allowed))}"
            )
        section.options[key] = value
        section.option_lines[key] = lineno
    if not sections or sections[0].name not in ("net", "network"):
        first = f"line {sections[0].line}" if sections else "an empty file"
        raise ConfigError(f"{path}: the first section must be [net] (found {first})")
    for s in sections[1:]:
        if s.name in ("net", "network"):
            raise ConfigError(f"{s.where()}: [{s.name}] may only appear once, as the first section")
    return sections


def region_options(section: CfgSection) -> dict[str, Any]:
    """The ``[region]`` options as a flat dict: the :class:`~yolov2.config.LossConfig` fields they set
    (thresh, object_scale, noobject_scale, class_scale, coord_scale, rescore) plus ``anchors``
    (list of (w, h) in grid units at stride 32), ``classes`` and ``num``, and YOLO9000's ``tree`` (the
    :class:`~yolov2.wordtree.WordTree` of ``tree=``, or None) and ``map`` (``map=``: dataset class -> tree node, or
    None). Missing options take Darknet's ``parse_region`` defaults (which are not always LossConfig's: thresh .5,
    rescore 0).
    """
    num = section.get_int("num", 1)
    classes = section.get_int("classes", 20)
    coords = section.get_int("coords", 4)
    if coords != 4:
        raise ConfigError(f"{section.where('coords')}: only coords=4 is supported, got {coords}")
    if section.get_int("softmax", 0) != 1:
        raise ConfigError(f"{section.where('softmax')}: only softmax=1 (softmax class scores) is supported")
    values = section.get_floats("anchors") if "anchors" in section.options else [0.5] * (2 * num)
    if len(values) != 2 * num:
        raise ConfigError(f"{section.where('anchors')}: num={num} needs {2 * num} anchor values, got {len(values)}")
    out: dict[str, Any] = {
        "thresh": section.get_float("thresh", 0.5),
        "object_scale": section.get_float("object_scale", 1.0),
        "noobject_scale": section.get_float("noobject_scale", 1.0),
        "class_scale": section.get_float("class_scale", 1.0),
        "coord_scale": section.get_float("coord_scale", 1.0),
        "rescore": bool(section.get_int("rescore", 0)),
        "anchors": [(values[2 * i], values[2 * i + 1]) for i in range(num)],
        "classes": classes,
        "num": num,
        "tree": None,
        "map": None,
    }
    if "tree" in section.options:
        tree = read_tree(_cfg_relative(section, "tree"))
        if tree.num_nodes != classes:
            raise ConfigError(f"{section.where('tree')}: the tree has {tree.num_nodes} nodes but classes={classes}")
        out["tree"] = tree
        if "map" in section.options:
            out["map"] = read_class_map(_cfg_relative(section, "map"), tree)
    elif "map" in section.options:
        raise ConfigError(f"{section.where('map')}: map= maps classes to tree nodes and needs tree=")
    return out


def _cfg_relative(section: CfgSection, key: str) -> Path:
    """A file an option names: as written (Darknet reads it from its working directory, e.g. ``data/9k.tree``),
    else next to the cfg file under that path or under its bare name."""
    written = Path(section.get_str(key))
    folder = Path(section.path).parent
    for candidate in (written, folder / written, folder / written.name):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"{section.where(key)}: {key}={written} not found (looked in the working directory and in {folder})"
    )


class Route(nn.Module):
    """``[route]``: concatenation (along channels) of earlier layers' outputs, in the listed order."""

    def __init__(self, sources: list[int]) -> None:
        super().__init__()
        self.sources = sources

    def forward(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        if len(self.sources) == 1:
            return outputs[self.sources[0]]
        return torch.cat([outputs[i] for i in self.sources], dim=1)


class GlobalAvgPool(nn.Module):
    """``[avgpool]``: the mean of each channel over the whole map, as Darknet's avgpool layer (1x1 output).

    x (Tensor[B, C, H, W]) -> Tensor[B, C, 1, 1].
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class DarknetSoftmax(nn.Module):
    """``[softmax]`` as Darknet's ``softmax_cpu``: each sample's values, flattened in (C, H, W) order, split
    into ``groups`` equal runs, each softmaxed after dividing by ``temperature``. After ``[avgpool]``
    (H = W = 1) and with ``groups=1`` that is the softmax over channels.

    x (Tensor[B, C, H, W]) -> probabilities of the same shape.
    """

    def __init__(self, groups: int = 1, temperature: float = 1.0) -> None:
        super().__init__()
        self.groups = groups
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        runs = x.reshape(x.shape[0], self.groups, -1) / self.temperature
        return torch.softmax(runs, dim=-1).reshape(x.shape)


class DarknetNet(nn.Module):
    """A network built from a Darknet cfg, run layer by layer as Darknet runs it.

    x (Tensor[B, channels, H, W]) -> the output of the last layer before ``[region]``
    (Tensor[B, num*(5+classes), H/32, W/32] for the YOLOv2 cfgs), or of the last layer for a classifier
    (Tensor[B, classes, 1, 1] of softmax probabilities for ``darknet19.cfg``; ``[cost]`` is the identity,
    as Darknet's inference skips it).
    Attributes: ``region`` (see :func:`region_options`, or None), ``num_classes``, ``num_anchors``,
    ``default_anchors``, ``input_size`` ((height, width) from [net]), ``stride`` (of the last map before
    a global ``[avgpool]``).
    """

    def __init__(self, sections: list[CfgSection]) -> None:
        super().__init__()
        net = sections[0]
        self.input_size = (net.get_int("height", 0), net.get_int("width", 0))
        channels = [net.get_int("channels", 3)]  # channels[i + 1] = output channels of layer i
        strides = [1]
        layers: list[nn.Module] = []
        self.region: dict[str, Any] | None = None
        for idx, s in enumerate(sections[1:]):
            c_in, st_in = channels[-1], strides[-1]
            if self.region is not None:
                raise ConfigError(f"{s.where()}: [{s.name}] after [region] is not supported")
            layer: nn.Module
            if s.name == "convolutional":
                layer, c, st = _conv_layer(s, c_in), s.get_int("filters", 1), st_in * s.get_int("stride", 1)
            elif s.name == "maxpool":
                stride = s.get_int("stride", 1)
                size = s.get_int("size", stride)
                layer, c, st = DarknetMaxPool(size, stride, s.get_int("padding", size - 1)), c_in, st_in * stride
            elif s.name == "route":
                sources = _route_sources(s, idx)
                layer, c, st = Route(sources), sum(channels[i + 1] for i in sources), strides[sources[0] + 1]
            elif s.name == "reorg":
                reorg = _reorg_layer(s, c_in)
                layer, c, st = reorg, c_in * reorg.stride**2, st_in * reorg.stride
            elif s.name == "avgpool":
                layer, c, st = GlobalAvgPool(), c_in, st_in
            elif s.name == "softmax":
                layer, c, st = _softmax_layer(s, c_in), c_in, st_in
            elif s.name == "cost":
                layer, c, st = _cost_layer(s), c_in, st_in
            else:  # region
                self.region = region_options(s)
                expected = self.region["num"] * (5 + self.region["classes"])
                if c_in != expected:
                    raise ConfigError(
                        f"{s.where()}: [region] with num={self.region['num']} classes={self.region['classes']} "
                        f"needs {expected} channels from the layer before it, got {c_in}"
                    )
                break
            layers.append(layer)
            channels.append(c)
            strides.append(st)
        self.layers = nn.ModuleList(layers)
        self.out_channels = channels[-1]
        self.stride = strides[-1]
        self.num_classes = self.region["classes"] if self.region else None
        self.num_anchors = self.region["num"] if self.region else None
        self.default_anchors = self.region["anchors"] if self.region else None
        self.tree = self.region["tree"] if self.region else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        for layer in self.layers:
            x = layer(outputs) if isinstance(layer, Route) else layer(x)
            outputs.append(x)
        return x

    def darknet_layers(self) -> Iterator[ConvPair]:
        """(conv, bn or None) of every [convolutional] section, in file order."""
        for layer in self.layers:
            if isinstance(layer, DarknetConv):
                yield layer.conv, layer.bn


def _conv_layer(s: CfgSection, c_in: int) -> DarknetConv:
    size = s.get_int("size", 1)
    padding = size // 2 if s.get_int("pad", 0) else s.get_int("padding", 0)
    activation = s.get_str("activation", "logistic")
    if activation not in ("leaky", "linear", "relu", "logistic"):
        raise ConfigError(
            f"{s.where('activation')}: activation={activation} is not supported (leaky, linear, relu, logistic)"
        )
    groups = s.get_int("groups", 1)
    filters = s.get_int("filters", 1)
    if c_in % groups or filters % groups:
        raise ConfigError(
            f"{s.where('groups')}: groups={groups} must divide input channels {c_in} and filters {filters}"
        )
    stride, batch_normalize = s.get_int("stride", 1), bool(s.get_int("batch_normalize", 0))
    return DarknetConv(c_in, filters, size, stride, batch_normalize, activation, groups, padding)  # type: ignore[arg-type]


def _route_sources(s: CfgSection, idx: int) -> list[int]:
    sources = []
    for v in s.get_str("layers").split(","):
        try:
            i = int(v)
        except ValueError as e:
            raise ConfigError(f"{s.where('layers')}: route layers must be integers, got {v!r}") from e
        j = idx + i if i < 0 else i
        if not 0 <= j < idx:
            raise ConfigError(f"{s.where('layers')}: route to layer {i} (index {j}) is outside layers 0..{idx - 1}")
        sources.append(j)
    return sources


def _reorg_layer(s: CfgSection, c_in: int) -> Reorg:
    for key in ("reverse", "flatten", "extra"):
        if s.get_int(key, 0):
            raise ConfigError(f"{s.where(key)}: [reorg] {key}=1 is not supported")
    stride = s.get_int("stride", 1)
    if c_in % (stride * stride):
        raise ConfigError(
            f"{s.where('stride')}: reorg stride {stride} needs channels divisible by {stride**2}, got {c_in}"
        )
    return Reorg(stride, "darknet")


def _softmax_layer(s: CfgSection, c_in: int) -> DarknetSoftmax:
    if "tree" in s.options:
        raise ConfigError(f"{s.where('tree')}: [softmax] tree= (hierarchical softmax, YOLO9000) is not supported")
    if s.get_int("spatial", 0):
        raise ConfigError(f"{s.where('spatial')}: [softmax] spatial=1 is not supported")
    groups = s.get_int("groups", 1)
    if groups < 1 or c_in % groups:
        raise ConfigError(f"{s.where('groups')}: [softmax] groups={groups} must divide the {c_in} input channels")
    temperature = s.get_float("temperature", 1.0)
    if temperature <= 0:
        raise ConfigError(f"{s.where('temperature')}: [softmax] temperature={temperature} must be > 0")
    return DarknetSoftmax(groups, temperature)


def _cost_layer(s: CfgSection) -> nn.Identity:
    """``[cost]``: Darknet's training loss on the layer before; at inference the output passes through."""
    kind = s.get_str("type", "sse")
    if kind not in COST_TYPES:
        raise ConfigError(f"{s.where('type')}: [cost] type={kind} is not one of Darknet's ({', '.join(COST_TYPES)})")
    for key in ("scale", "ratio", "noobject_scale", "thresh"):
        s.get_float(key, 0.0)  # a malformed number is an error here too, though the value is unused
    return nn.Identity()


def build_from_cfg(path: str | Path) -> DarknetNet:
    """Parse ``path`` and build its network (see :class:`DarknetNet`)."""
    return DarknetNet(parse_cfg(path))
