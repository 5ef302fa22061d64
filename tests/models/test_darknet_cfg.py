"""The Darknet cfg parser and the network built from it, checked against the real cfg files.

The expected parameter counts, file sizes and FLOPs are computed here by a separate, minimal walk
over the cfg text (filters/size/batch_normalize/stride, channels tracked through route and reorg),
not taken from the code under test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cfg_text import cfg_sections
from yolov2.config import LossConfig
from yolov2.errors import ConfigError
from yolov2.models import build_from_darknet_cfg
from yolov2.models.darknet_cfg import parse_cfg
from yolov2.models.summary import count_parameters, model_summary

CFGS = ["yolov2-voc.cfg", "yolov2.cfg", "yolov2-tiny-voc.cfg", "yolov2-tiny.cfg"]
CLASSIFIER_CFGS = ["darknet19.cfg", "darknet19_448.cfg"]  # Darknet-19 on ImageNet: conv ... avgpool, softmax


def reference_walk(path: Path, height: int, width: int) -> dict[str, int]:
    """Independent count from the cfg text: learnable params, .weights floats, conv MACs, output shape."""
    sections = cfg_sections(path)
    c, h, w = int(sections[0][1].get("channels", 3)), height, width
    outs: list[tuple[int, int, int]] = []  # (c, h, w) per layer
    params = floats = macs = 0
    for kind, opt in sections[1:]:
        if kind == "convolutional":
            n, size, stride = int(opt["filters"]), int(opt["size"]), int(opt.get("stride", 1))
            bn = opt.get("batch_normalize") == "1"
            weights = n * c * size * size
            params += weights + (2 * n if bn else n)  # BN scale+shift, or the conv bias
            floats += weights + (4 * n if bn else n)  # plus rolling mean and variance
            pad = size // 2
            h, w = (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1
            macs += n * c * size * size * h * w
            c = n
        elif kind == "maxpool":
            size, stride = int(opt["size"]), int(opt["stride"])
            h, w = (h + size - 1 - size) // stride + 1, (w + size - 1 - size) // stride + 1
        elif kind == "route":
            idx = [int(v) for v in opt["layers"].split(",")]
            idx = [len(outs) + i if i < 0 else i for i in idx]
            c = sum(outs[i][0] for i in idx)
            h, w = outs[idx[0]][1], outs[idx[0]][2]
        elif kind == "reorg":
            s = int(opt["stride"])
            c, h, w = c * s * s, h // s, w // s
        elif kind == "avgpool":  # global: one value per channel
            h, w = 1, 1
        elif kind in ("softmax", "cost"):  # same shape out
            pass
        elif kind == "region":
            break
        else:
            raise AssertionError(f"reference walk does not handle [{kind}]")
        outs.append((c, h, w))
    return {"params": params, "floats": floats, "macs": macs, "out_c": c, "out_h": h, "out_w": w}


@pytest.mark.parametrize("cfg", CFGS)
def test_parameter_count_is_what_the_cfg_implies(cfg: str, cfg_dir: Path, cfg_model) -> None:
    ref = reference_walk(cfg_dir / cfg, 416, 416)
    model = cfg_model(cfg)
    assert count_parameters(model) == ref["params"]
    state_floats = sum(t.numel() for k, t in model.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert state_floats == ref["floats"]


@pytest.mark.parametrize("cfg", CFGS)
def test_output_shape_and_gflops_match_the_cfg(cfg: str, cfg_dir: Path, cfg_model) -> None:
    h, w = 96, 128  # cheap, non-square; the FLOP formula is the same at any size
    ref = reference_walk(cfg_dir / cfg, h, w)
    summary = model_summary(cfg_model(cfg), (h, w))
    assert summary["output_shape"] == [1, ref["out_c"], ref["out_h"], ref["out_w"]]
    assert (ref["out_h"], ref["out_w"]) == (h // 32, w // 32)
    assert summary["conv_macs"] == ref["macs"]
    assert summary["gflops"] == pytest.approx(2 * ref["macs"] / 1e9)


@pytest.mark.parametrize("cfg", CLASSIFIER_CFGS)
def test_classifier_cfg_builds_with_avgpool_and_softmax(cfg: str, cfg_dir: Path, cfg_model) -> None:
    if not (cfg_dir / cfg).is_file():
        pytest.skip(f"{cfg} not found in {cfg_dir}")
    h, w = 64, 96
    ref = reference_walk(cfg_dir / cfg, h, w)
    model = cfg_model(cfg)
    assert count_parameters(model) == ref["params"] == 20_842_376
    state_floats = sum(t.numel() for k, t in model.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert state_floats == ref["floats"]
    assert len(list(model.darknet_layers())) == 19 and model.region is None
    summary = model_summary(model, (h, w))
    assert summary["output_shape"] == [1, ref["out_c"], ref["out_h"], ref["out_w"]] == [1, 1000, 1, 1]
    assert summary["conv_macs"] == ref["macs"]
    with torch.no_grad():
        probs = model(torch.randn(2, 3, h, w))
    assert probs.shape == (2, 1000, 1, 1) and bool((probs >= 0).all())
    torch.testing.assert_close(probs.sum(dim=1).flatten(), torch.ones(2))


def test_avgpool_softmax_cost_compute_what_darknet_does(tmp_path: Path) -> None:
    """conv -> [avgpool] (mean per channel) -> [softmax] groups=2 temperature=2 (each half of the channels
    on its own, logits halved) -> [cost] (identity at inference), against a plain torch computation."""
    text = HEAD + "[avgpool]\n[softmax]\ngroups=2\ntemperature=2\n[cost]\ntype=sse\n"
    model = build_from_darknet_cfg(_write(tmp_path, text)).eval()
    x = torch.randn(3, 3, 16, 24)
    with torch.no_grad():
        conv = model.layers[0]
        pooled = conv(x).mean(dim=(2, 3))  # [3, 8]
        expected = torch.cat([torch.softmax(pooled[:, :4] / 2, 1), torch.softmax(pooled[:, 4:] / 2, 1)], dim=1)
        out = model(x)
    assert out.shape == (3, 8, 1, 1)
    torch.testing.assert_close(out.flatten(1), expected)


def test_region_options_map_to_loss_config(cfg_dir: Path) -> None:
    model = build_from_darknet_cfg(cfg_dir / "yolov2-tiny.cfg")  # small; rescore=0 differs from our default
    region = model.region
    assert region["classes"] == 80 and region["num"] == 5
    assert region["anchors"][0] == (0.57273, 0.677385) and len(region["anchors"]) == 5
    assert region["rescore"] is False and region["thresh"] == 0.6 and region["object_scale"] == 5.0
    loss_fields = {f.name for f in dataclasses.fields(LossConfig)}
    loss_part = {k: v for k, v in region.items() if k not in ("anchors", "classes", "num", "tree", "map")}
    assert set(loss_part) <= loss_fields
    loss = LossConfig(**loss_part)
    assert loss.rescore is False and loss.noobject_scale == 1.0
    assert (model.num_classes, model.num_anchors, model.stride, model.input_size) == (80, 5, 32, (416, 416))


def test_voc_region_values(cfg_dir: Path) -> None:
    region_section = [s for s in parse_cfg(cfg_dir / "yolov2-voc.cfg") if s.name == "region"][0]
    from yolov2.models.darknet_cfg import region_options

    r = region_options(region_section)
    assert r["anchors"][-1] == (11.2364, 10.0071)
    assert (r["thresh"], r["object_scale"], r["noobject_scale"], r["class_scale"], r["coord_scale"], r["rescore"]) == (
        0.6, 5.0, 1.0, 1.0, 1.0, True,
    )  # fmt: skip


def test_yolo9000_cfg_builds_with_its_tree_and_map(cfg_dir: Path) -> None:
    """``tree=data/9k.tree`` (Darknet's working-directory path) is found next to the cfg; the head is
    num x (classes + 5) wide with classes = the tree's nodes."""
    model = build_from_darknet_cfg(cfg_dir / "yolo9000.cfg")
    sections = dict(cfg_sections(cfg_dir / "yolo9000.cfg"))
    classes, num = int(sections["region"]["classes"]), int(sections["region"]["num"])
    assert model.tree is not None and model.tree.num_nodes == classes == 9418
    assert len(model.region["map"]) == 80 and all(0 <= node < classes for node in model.region["map"])
    out = model(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, num * (classes + 5), 2, 2)
    assert reference_walk(cfg_dir / "yolo9000.cfg", 64, 64)["out_c"] == num * (classes + 5)


def test_tree_option_errors_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "two.tree").write_text("a -1\nb -1\nc 0\n")
    region = "\n[convolutional]\nfilters={f}\nsize=1\nactivation=linear\n\n[region]\nclasses={c}\nnum=1\nsoftmax=1\n"
    ok = _write(tmp_path, HEAD + region.format(f=8, c=3) + "tree=two.tree\n")
    assert build_from_darknet_cfg(ok).tree.num_nodes == 3
    wrong = _write(tmp_path, HEAD + region.format(f=9, c=4) + "tree=two.tree\n")
    with pytest.raises(ConfigError, match=r"net.cfg:23: the tree has 3 nodes but classes=4"):
        build_from_darknet_cfg(wrong)
    missing = _write(tmp_path, HEAD + region.format(f=8, c=3) + "tree=data/none.tree\n")
    with pytest.raises(ConfigError, match=r"net.cfg:23: tree=data/none.tree not found"):
        build_from_darknet_cfg(missing)
    no_tree = _write(tmp_path, HEAD + region.format(f=8, c=3) + "map=coco9k.map\n")
    with pytest.raises(ConfigError, match=r"net.cfg:23: map= maps classes to tree nodes and needs tree="):
        build_from_darknet_cfg(no_tree)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "net.cfg"
    p.write_text(text)
    return p


HEAD = (  # 12 lines: [net] on line 1, the conv's filters= on line 8, activation= on line 12
    "[net]\nwidth=64\nheight=64\nchannels=3\n\n"
    "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
)


def test_unknown_section_names_file_and_line(tmp_path: Path) -> None:
    p = _write(tmp_path, HEAD + "\n[shortcut]\nfrom=-3\n")
    with pytest.raises(ConfigError) as e:
        parse_cfg(p)
    assert f"{p}:14" in str(e.value) and "[shortcut]" in str(e.value)


@pytest.mark.parametrize(
    "text,line,fragment",
    [
        ("batch=1\n[net]\n", 1, "before any [section]"),
        (HEAD + "dilation=2\n", 13, "not supported in [convolutional]"),
        (HEAD + "filters\n", 13, "expected key=value"),
        (HEAD + "[route]\nlayers=-5\n", 14, "outside layers"),
        (HEAD.replace("leaky", "swish"), 12, "activation=swish"),
        (HEAD.replace("filters=8", "filters=eight"), 8, "must be an integer"),
        (HEAD + "[avgpool]\nsize=2\n", 14, "not supported in [avgpool]"),
        (HEAD + "[softmax]\ntree=data/9k.tree\n", 14, "hierarchical softmax"),
        (HEAD + "[softmax]\nspatial=1\n", 14, "spatial=1"),
        (HEAD + "[softmax]\ngroups=3\n", 14, "must divide the 8 input channels"),
        (HEAD + "[softmax]\ntemperature=0\n", 14, "temperature"),
        (HEAD + "[cost]\ntype=hinge\n", 14, "type=hinge"),
        (HEAD + "[cost]\nscale=big\n", 14, "must be a number"),
    ],
)
def test_bad_cfg_errors_name_the_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        build_from_darknet_cfg(p)
    assert f"{p}:{line}" in str(e.value)
    assert fragment in str(e.value)


def test_region_channel_mismatch_is_refused(tmp_path: Path) -> None:
    p = _write(tmp_path, HEAD + "[region]\nclasses=2\nnum=1\nsoftmax=1\nanchors=1,1\n")
    with pytest.raises(ConfigError, match="needs 7 channels"):
        build_from_darknet_cfg(p)


def test_small_cfg_runs_route_and_reorg(tmp_path: Path) -> None:
    text = HEAD + (
        "[maxpool]\nsize=2\nstride=2\n"  # 1
        "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\nstride=1\npad=1\nactivation=leaky\n"  # 2
        "[route]\nlayers=-3\n"  # 3: layer 0, 8 channels at 64x64
        "[reorg]\nstride=2\n"  # 4: 32 channels at 32x32
        "[route]\nlayers=-1,-3\n"  # 5: 32 + 16
        "[convolutional]\nfilters=12\nsize=1\nstride=1\npad=1\nactivation=linear\n"
        "[region]\nclasses=1\nnum=2\nsoftmax=1\nanchors=1,1,2,2\n"
    )
    model = build_from_darknet_cfg(_write(tmp_path, text)).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 12, 32, 32)
    assert [c.out_channels for c, _ in model.darknet_layers()] == [8, 16, 12]
    assert list(model.darknet_layers())[1][0].in_channels == 8
    assert list(model.darknet_layers())[2][0].in_channels == 48
