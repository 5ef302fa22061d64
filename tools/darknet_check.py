"""Darknet's own loader on the backbone file our pretrain stage writes (``backbone.weights``).

Our reader and writer agree with each other and with a walk over the cfg text (tests/models), but that does
not show that Darknet reads the file. This check runs a darknet binary built from pjreddie/darknet on it:

1. ``darknet partial <cfg> ours.weights resaved.weights <cutoff>``: load_network -> load_weights, then
   save_weights_upto. Darknet reads a ``.weights`` file sequentially and does not complain when it ends
   early (the layers past the end keep their random init), so the proof is that every float it re-saves
   equals ours bit for bit, not that it ran. Its ``cutoff`` counts all layers (maxpools included): the first
   18 conv layers of darknet19.cfg are its layers 0..22, hence 23, as in ``darknet19_448.conv.23``.
2. ``darknet denormalize <cfg> ours.weights folded.weights``: Darknet folds each batch norm into its conv
   (weights *= scales / sqrt(rolling_variance + 1e-5), biases -= rolling_mean * that). The re-save in 1 is
   symmetric (it would pass even if Darknet took our running mean for its scales), this is not: with random
   batch-norm statistics it shows that each value lands in the role we meant.
3. Darknet's re-saved file, read back by our loader into a detector's backbone (the train stage's
   ``init_weights`` path, ``load_initial_weights``), gives the classifier's backbone tensors exactly.

Prints a JSON summary and exits 1 on any mismatch. tests/models/test_darknet_binary.py runs the same check
when DARKNET_BIN is set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from yolov2.engine.init import load_initial_weights
from yolov2.errors import WeightsError
from yolov2.models import build_classifier, build_from_darknet_cfg, build_model, save_backbone_weights
from yolov2.models.classifier import BackboneClassifier
from yolov2.models.darknet_cfg import parse_cfg
from yolov2.models.darknet_io import conv_layer_shapes, layer_value_count, read_header
from yolov2.models.layers import ConvPair

REPO_ROOT = Path(__file__).resolve().parents[1]
DETECTOR = "yolov2_voc"  # the detector whose backbone is Darknet-19
DENORMALIZE_EPS = 1e-5  # denormalize_convolutional_layer in Darknet's src/convolutional_layer.c
FOLD_RTOL = 1e-6  # the fold is computed the same way here; -Ofast may round a last bit differently
Summary = dict[str, Any]


def default_cfg() -> Path:
    """darknet19.cfg in the shared data folder (YOLOV2_SHARED_DATA, as the tests find it)."""
    root = Path(os.environ.get("YOLOV2_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    return root / "darknet_cfg" / "darknet19.cfg"


def darknet_cutoff(cfg: Path, conv_layers: int) -> int:
    """Darknet layers (every section after [net]) up to and including the ``conv_layers``-th conv: the
    ``cutoff`` of Darknet's ``partial`` that keeps exactly those convs."""
    count = 0
    for index, section in enumerate(parse_cfg(cfg)[1:]):
        count += section.name == "convolutional"
        if count == conv_layers:
            return index + 1
    raise ValueError(f"{cfg}: has {count} conv layers, fewer than {conv_layers}")


def cfg_classes(cfg: Path) -> int:
    """Filters of the cfg's last conv (the classifier head), so our classifier is the cfg's network."""
    convs = [s for s in parse_cfg(cfg) if s.name == "convolutional"]
    return convs[-1].get_int("filters")


def random_classifier(cfg: Path, seed: int) -> BackboneClassifier:
    """Darknet-19 classifier with seeded random weights and random batch-norm statistics and affines (all
    distinct, so a value read into the wrong role shows)."""
    torch.manual_seed(seed)
    classifier = build_classifier(DETECTOR, cfg_classes(cfg)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in classifier.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None  # Darknet's BNs track statistics
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return classifier


def header_of(path: Path) -> dict[str, int]:
    """The header fields of a .weights file, read as Darknet's load_weights_upto does."""
    (major, minor, revision), seen, size = read_header(path.read_bytes()[:20], str(path))
    return {"major": major, "minor": minor, "revision": revision, "seen": seen, "bytes": size}


def body_floats(path: Path, header_bytes: int, count: int) -> np.ndarray:
    """Up to ``count`` float32 values after the header (fewer if the file is shorter)."""
    data = path.read_bytes()[header_bytes:]
    return np.frombuffer(data, dtype="<f4", count=min(count, len(data) // 4))


def compare(expected: np.ndarray, actual: np.ndarray, rtol: float = 0.0) -> Summary:
    """Value-by-value comparison: bitwise differences, max abs and relative difference, and whether all are
    within ``rtol`` (0: bit-exact). A short ``actual`` fails."""
    n = min(len(expected), len(actual))
    e, a = expected[:n].astype(np.float64), actual[:n].astype(np.float64)
    diff = np.abs(e - a)
    rel = diff / np.maximum(np.abs(e), np.finfo(np.float32).tiny)
    bitwise = int(np.count_nonzero(expected[:n].view(np.uint32) != actual[:n].view(np.uint32)))
    within = bool(np.all(rel <= rtol)) if rtol > 0 else bitwise == 0
    return {
        "values_expected": len(expected),
        "values_compared": n,
        "values_differing_bitwise": bitwise,
        "max_abs_diff": float(np.nanmax(diff, initial=0.0)),
        "max_rel_diff": float(np.nanmax(rel, initial=0.0)),
        "rtol": rtol,
        "ok": within and n == len(expected) and not np.isnan(diff).any(),
    }


def folded_values(pairs: list[ConvPair]) -> np.ndarray:
    """What Darknet's ``denormalize`` writes for these layers: per conv, the batch norm folded into biases (n)
    then weights, computed as denormalize_convolutional_layer does (scale in double, then float32)."""
    parts: list[np.ndarray] = []
    for conv, bn in pairs:
        w = conv.weight.detach().numpy().astype(np.float32).reshape(conv.out_channels, -1)
        if bn is None:
            assert conv.bias is not None  # Darknet layers without batch norm have a bias
            parts += [conv.bias.detach().numpy().astype(np.float32), w.ravel()]
            continue
        assert bn.running_mean is not None and bn.running_var is not None  # Darknet's BNs track statistics
        tensors = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
        gamma, beta, mean, var = (t.detach().numpy().astype(np.float32) for t in tensors)
        scale = (gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + DENORMALIZE_EPS)).astype(np.float32)
        parts += [beta - mean * scale, (w * scale[:, None]).ravel()]
    return np.concatenate(parts)


def run_darknet(darknet: Path, args: list[str], cwd: Path, timeout: float) -> Summary:
    """Run one darknet command; its exit status, time and the end of what it printed."""
    command = [str(darknet), *args]
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, errors="replace", timeout=timeout)
        code: int | None = done.returncode
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        code = None
        output = f"timed out after {timeout:g} s; " + (str(e.stderr or "") + str(e.stdout or ""))
    return {
        "command": command,
        "returncode": code,
        "seconds": round(time.monotonic() - start, 2),
        "output_tail": output[-400:],
    }


def reload_into_detector(path: Path, classifier: BackboneClassifier, conv_layers: int) -> Summary:
    """Darknet's file through the train stage's ``init_weights`` path into a fresh detector: its backbone must
    equal the classifier's, and the rest of the detector stay as it was."""
    torch.manual_seed(1)
    detector = build_model(DETECTOR, 20)
    others = {k: v.clone() for k, v in detector.state_dict().items() if not k.startswith("backbone.")}
    try:
        load_initial_weights(detector, str(path), conv_layers)
    except WeightsError as e:
        return {"ok": False, "error": str(e)}
    expected = classifier.backbone.state_dict()
    backbone = detector.get_submodule("backbone").state_dict()
    loaded = {k: v for k, v in backbone.items() if not k.endswith("num_batches_tracked")}
    unequal = [k for k, v in loaded.items() if not torch.equal(v, expected[k])]
    untouched = all(torch.equal(v, detector.state_dict()[k]) for k, v in others.items())
    return {
        "tensors_compared": len(loaded),
        "values_compared": sum(v.numel() for v in loaded.values()),
        "tensors_differing": unequal[:5],
        "rest_of_detector_untouched": untouched,
        "ok": bool(loaded) and not unequal and untouched,
    }


def run_check(
    darknet: Path, cfg: Path, workdir: Path, seed: int = 0, timeout: float = 120.0, truncate: int = 0
) -> Summary:
    """The whole check in ``workdir`` (files are left there); ``summary["failures"]`` is empty when it passes.
    ``truncate``: hand Darknet our file less its last ``truncate`` bytes (the comparisons stay against the
    full model), to show what Darknet does with a short file and that the check catches it."""
    failures: list[str] = []
    classifier = random_classifier(cfg, seed)
    n = classifier.num_backbone_layers
    pairs = list(classifier.darknet_layers())[:n]
    ours_shapes = conv_layer_shapes(classifier)[:n]
    if conv_layer_shapes(build_from_darknet_cfg(cfg))[:n] != ours_shapes:
        failures.append(f"our classifier's first {n} conv layers are not those of {cfg}")
    values = sum(layer_value_count(conv, bn) for conv, bn in pairs)

    ours = workdir / "backbone.weights"
    save_backbone_weights(classifier, ours)
    given = ours
    if truncate:
        given = workdir / "backbone.truncated.weights"
        given.write_bytes(ours.read_bytes()[:-truncate])
    cutoff = darknet_cutoff(cfg, n)
    resaved, folded = workdir / "darknet_partial.weights", workdir / "darknet_denormalized.weights"
    for stale in (resaved, folded):
        stale.unlink(missing_ok=True)

    partial = run_darknet(darknet, ["partial", str(cfg), str(given), str(resaved), str(cutoff)], workdir, timeout)
    denorm = run_darknet(darknet, ["denormalize", str(cfg), str(given), str(folded)], workdir, timeout)
    for name, run in (("partial", partial), ("denormalize", denorm)):
        if run["returncode"] != 0:
            failures.append(f"darknet {name} exited with {run['returncode']}")

    expected = body_floats(ours, 20, values)
    summary: Summary = {
        "darknet": str(darknet),
        "cfg": str(cfg),
        "workdir": str(workdir),
        "seed": seed,
        "truncated_bytes": truncate,
        "conv_layers": n,
        "darknet_cutoff": cutoff,
        "values_per_file": values,
        "header_ours": header_of(ours),
        "file_bytes": {
            "expected": 20 + 4 * values,
            "ours": ours.stat().st_size,
            "given_to_darknet": given.stat().st_size,
        },
    }
    if resaved.is_file():
        header = header_of(resaved)
        summary["header_darknet"] = header
        summary["file_bytes"]["darknet_partial"] = resaved.stat().st_size
        if (header["major"], header["minor"], header["revision"], header["seen"], header["bytes"]) != (0, 2, 0, 0, 20):
            failures.append(
                f"Darknet's header is {header}, expected version 0.2.0, seen=0 (partial clears it), 20 bytes"
            )
        if resaved.stat().st_size != 20 + 4 * values:
            failures.append(f"Darknet re-saved {resaved.stat().st_size} bytes, ours has {20 + 4 * values}")
        summary["resaved_vs_ours"] = compare(expected, body_floats(resaved, header["bytes"], values))
        if not summary["resaved_vs_ours"]["ok"]:
            failures.append("Darknet's re-saved values differ from ours")
        summary["reload_into_detector"] = reload_into_detector(resaved, classifier, n)
        if not summary["reload_into_detector"]["ok"]:
            failures.append("Darknet's re-saved file does not load back into the detector's backbone unchanged")
    else:
        failures.append("Darknet's partial wrote no file")
    if folded.is_file():
        summary["file_bytes"]["darknet_denormalized"] = folded.stat().st_size
        fold = folded_values(pairs)
        summary["denormalized_vs_ours_folded"] = compare(fold, body_floats(folded, 20, len(fold)), FOLD_RTOL)
        if not summary["denormalized_vs_ours_folded"]["ok"]:
            failures.append(
                "Darknet's folded batch norms differ from ours folded (values read into other roles or missing)"
            )
    else:
        failures.append("Darknet's denormalize wrote no file")
    summary["darknet_runs"] = {"partial": partial, "denormalize": denorm}
    resaved_vs_ours = summary.get("resaved_vs_ours", {})
    return {
        "ok": not failures,
        "failures": failures,
        "values_compared": resaved_vs_ours.get("values_compared", 0),
        "max_abs_diff": resaved_vs_ours.get("max_abs_diff"),
        **summary,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check that Darknet's own loader (pjreddie/darknet) reads the backbone file our pretrain "
        "stage writes: a seeded random Darknet-19 classifier's backbone.weights goes through `darknet partial` "
        "(re-saved values must equal ours bit for bit) and `darknet denormalize` (batch norms folded by Darknet "
        "must match ours folded), and Darknet's re-saved file is read back into a detector. Prints JSON.",
        epilog="Exit status: 0 all equal, 1 a mismatch (or Darknet failed or timed out), 2 bad arguments. "
        "Darknet's `partial` cutoff counts every layer: the 18 backbone convs of darknet19.cfg are its layers "
        "0..22, so the tool passes 23 (computed from the cfg). Build darknet with `make` in a checkout of "
        "pjreddie/darknet (GPU=0 CUDNN=0 OPENCV=0 OPENMP=0 is its default).",
    )
    parser.add_argument("--darknet", type=Path, required=True, help="the darknet binary (built from pjreddie/darknet)")
    parser.add_argument(
        "--cfg",
        type=Path,
        default=default_cfg(),
        help="Darknet-19 classifier cfg handed to Darknet (default: %(default)s); our classifier has its classes",
    )
    parser.add_argument("--workdir", type=Path, help="keep the weights files here (default: a temp dir, removed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and BN statistics")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per darknet run (default 120)")
    parser.add_argument(
        "--truncate",
        type=int,
        default=0,
        metavar="BYTES",
        help="give Darknet our file less its last BYTES bytes, to see what it does with a short file "
        "(the check then should fail: Darknet keeps its random init for what is missing)",
    )
    args = parser.parse_args(argv)
    if not (args.darknet.is_file() and os.access(args.darknet, os.X_OK)):
        parser.error(f"--darknet {args.darknet}: not an executable file")
    if not args.cfg.is_file():
        parser.error(f"--cfg {args.cfg}: no such file")
    if args.truncate < 0:
        parser.error("--truncate must be >= 0")
    darknet, cfg = args.darknet.resolve(), args.cfg.resolve()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        summary = run_check(darknet, cfg, args.workdir.resolve(), args.seed, args.timeout, args.truncate)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="darknet-check-"))
        try:
            summary = run_check(darknet, cfg, tmp, args.seed, args.timeout, args.truncate)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
