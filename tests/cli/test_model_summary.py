"""`yolov2 model-summary` against the numbers a Darknet cfg implies (counted in the test, layer by layer)."""

from __future__ import annotations

import json

import pytest

from yolov2.cli import main
from yolov2.models import build_model

# What AlexeyAB's Darknet prints as "Total BFLOPS" for yolov2-voc.cfg at 416: its conv layers
# (make_convolutional_layer) plus its maxpools (make_maxpool_layer adds size*size*c*out_h*out_w).
DARKNET_PRINTED_TOTAL = 29.371


def summary(capsys, *argv: str) -> dict:
    assert main(["model-summary", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_yolov2_voc_matches_the_cfg(capsys, darknet_cfg, cfg_facts) -> None:
    cfg = darknet_cfg("yolov2-voc.cfg")
    facts = cfg_facts(cfg)
    # the test's walker reproduces Darknet's printed total, so its conv-only count is Darknet's too
    assert round(facts.conv_bflops + facts.maxpool_bflops, 3) == DARKNET_PRINTED_TOTAL

    by_name = summary(capsys, "--model", "yolov2_voc", "--input-size", "416")
    independent = build_model("yolov2_voc", 20)
    assert by_name["params"] == sum(p.numel() for p in independent.parameters()) == facts.params
    assert by_name["output_shape"] == [1, *facts.output] == [1, 125, 13, 13]
    assert by_name["gflops"] == pytest.approx(facts.conv_bflops, rel=1e-9)

    by_cfg = summary(capsys, "--cfg", str(cfg))
    assert {k: by_cfg[k] for k in ("params", "output_shape", "gflops")} == {
        k: by_name[k] for k in ("params", "output_shape", "gflops")
    }


def test_tiny_at_another_size(capsys, darknet_cfg, cfg_facts, tmp_path) -> None:
    text = darknet_cfg("yolov2-tiny-voc.cfg").read_text()
    text = text.replace("width=416", "width=320").replace("height=416", "height=320")
    cfg = tmp_path / "tiny320.cfg"
    cfg.write_text(text)
    facts = cfg_facts(cfg)
    out = summary(capsys, "--model", "yolov2_tiny_voc", "--input-size", "320")
    assert out["params"] == facts.params
    assert out["output_shape"] == [1, *facts.output] == [1, 125, 10, 10]
    assert out["gflops"] == pytest.approx(facts.conv_bflops, rel=1e-9)


def test_unknown_model_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["model-summary", "--model", "yolov9000"])
    assert "invalid choice" in capsys.readouterr().err
