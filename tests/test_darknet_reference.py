"""Darknet-exact, against Darknet itself: numbers computed by pjreddie's Darknet binary
(``shared/data/darknet_reference``, see its README) for two narrow networks with yolov2-voc's and
yolov2-tiny-voc's exact topologies, random weights whose batch-norm statistics make the formula matter,
and two VOC images (one with an odd letterbox padding).

Each case goes through the project's public path: ``yolov2 convert-weights`` from the cfg, the model file,
the network on Darknet's letterboxed input, :func:`yolov2.postprocess.decode` and
:func:`yolov2.postprocess.postprocess`. Tolerances are the README's: 1e-4 of the output scale on the conv
output, the region output and the scores; 0.05 px on boxes; identical (box, class) detection sets, except
decisions within the numerical error of a threshold.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from yolov2.boxes import letterbox_params
from yolov2.cli import main
from yolov2.inference import load_model_file
from yolov2.postprocess import decode, postprocess

NETWORKS = ("yolov2-mini", "yolov2-tiny-mini")
IMAGES = ("2007_000039", "2007_000032")
WIDTH = "0.125"  # the cfgs are yolov2-voc / yolov2-tiny-voc at 1/8 of their widths
NMS = 0.45
BOX_TOL_PX = 0.05
IOU_TIE = 2e-5  # an NMS decision this close to the threshold may go either way on float rounding


@dataclass
class Case:
    network: str
    image: str
    arrays: dict[str, np.ndarray]
    facts: dict

    @property
    def bound(self) -> float:
        """README: max |diff| <= 1e-4 x max(1, max |conv_out|)."""
        return 1e-4 * max(1.0, float(np.abs(self.arrays["conv_out"]).max()))

    @property
    def image_size(self) -> tuple[int, int]:
        w, h = self.facts["image_size"]
        return int(w), int(h)


@pytest.fixture(scope="module")
def reference(shared_data: Path) -> Path:
    root = shared_data / "darknet_reference"
    if not (root / "README.md").is_file():
        pytest.skip(f"Darknet reference data not found at {root}")
    return root


@pytest.fixture(scope="module")
def model_files(reference: Path, tmp_path_factory) -> dict[str, Path]:
    """Each network converted once, by the command a user runs."""
    out = tmp_path_factory.mktemp("darknet_reference")
    files = {}
    for network in NETWORKS:
        files[network] = convert(reference, network, out / f"{network}.pt")
    return files


def convert(reference: Path, network: str, output: Path, *extra: str, weights: Path | None = None) -> Path:
    weights = weights or reference / f"{network}.weights"
    argv = [
        "convert-weights",
        "--input",
        str(weights),
        "--cfg",
        str(reference / f"{network}.cfg"),
        "--width-multiplier",
        WIDTH,
        "--output",
        str(output),
        *extra,
    ]
    assert main(argv) == 0
    return output


def load_case(reference: Path, network: str, image: str) -> Case:
    with np.load(reference / network / f"{image}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return Case(network, image, arrays, json.loads((reference / network / f"{image}.json").read_text()))


def run_network(model_file: Path, case: Case) -> torch.Tensor:
    model, _ = load_model_file(model_file)
    with torch.inference_mode():
        return model(torch.from_numpy(case.arrays["input"])[None])


def model_anchors(model_file: Path) -> torch.Tensor:
    return torch.tensor(load_model_file(model_file)[1].anchors, dtype=torch.float32)


def conv_difference(model_file: Path, case: Case) -> float:
    return float((run_network(model_file, case)[0].numpy() - case.arrays["conv_out"]).__abs__().max())


CASES = [(n, i) for n in NETWORKS for i in IMAGES]


@pytest.mark.parametrize(("network", "image"), CASES)
def test_conv_and_region_outputs_match_darknet(reference, model_files, network, image) -> None:
    case = load_case(reference, network, image)
    _, spec = load_model_file(model_files[network])
    assert spec.batch_norm == "darknet" and len(spec.anchors) == case.facts["num"]
    np.testing.assert_allclose(np.ravel(spec.anchors), case.facts["anchors"], rtol=0, atol=1e-6)
    output = run_network(model_files[network], case)
    assert output.shape == (1, *case.arrays["conv_out"].shape)
    np.testing.assert_allclose(output[0].numpy(), case.arrays["conv_out"], rtol=0, atol=case.bound)

    anchors = torch.tensor(spec.anchors, dtype=torch.float32)
    boxes, objectness, class_probs = (t[0].numpy() for t in decode(output, anchors, spec.num_classes))
    region = case.arrays["region_out"]  # (anchor, entry, row, column); ours are (anchor, row, column)-major
    np.testing.assert_allclose(objectness, region[:, 4].reshape(-1), rtol=0, atol=case.bound)
    np.testing.assert_allclose(
        class_probs, region[:, 5:].transpose(0, 2, 3, 1).reshape(-1, 20), rtol=0, atol=case.bound
    )
    decoded = case.arrays["decoded"]
    net_w, net_h = case.facts["network_size"]
    xywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    scale = np.array([net_w, net_h, net_w, net_h])
    expected_px, got_px = decoded[:, :4] * scale, xywh * scale
    assert np.all(np.abs(got_px - expected_px) <= BOX_TOL_PX + 1e-4 * np.abs(expected_px))
    np.testing.assert_allclose(objectness, decoded[:, 4], rtol=0, atol=case.bound)
    np.testing.assert_allclose(objectness[:, None] * class_probs, decoded[:, 5:], rtol=0, atol=case.bound)


def test_letterbox_geometry_is_darknets(reference) -> None:
    for image in IMAGES:
        facts = load_case(reference, NETWORKS[0], image).facts
        box = facts["letterbox"]
        w, h = facts["image_size"]
        assert tuple(letterbox_params(w, h, 416, 416)) == (box["new_w"], box["new_h"], box["paste_x"], box["paste_y"])
    assert load_case(reference, NETWORKS[0], "2007_000032").facts["letterbox"]["correct_offset_y"] == 91.5


def detection_pairs(output: torch.Tensor, anchors: torch.Tensor, case: Case, thresh: float):
    """Our detections at ``thresh`` as {(box index, class): (clipped xyxy, score)}.

    The box index is found by the score: each detection's score is exactly one of decode's
    objectness x p(class) products of the same output (checked unique), so no geometric matching is needed.
    """
    (det,) = postprocess(
        output,
        anchors,
        20,
        (416, 416),
        torch.tensor([case.image_size]),
        conf_thresh=thresh,
        nms_thresh=NMS,
        max_det=None,
    )
    _, objectness, class_probs = decode(output, anchors, 20)
    scores = (objectness[0][:, None] * class_probs[0]).numpy()
    pairs = {}
    for box, score, label in zip(det.boxes.numpy(), det.scores.numpy(), det.labels.numpy()):
        (index,) = np.nonzero(scores[:, label] == score)
        assert len(index) == 1, "a score shared by two boxes of one class: cannot tell them apart"
        pairs[(int(index[0]), int(label))] = (box, float(score))
    return pairs


def darknet_pairs(case: Case, thresh: float):
    (result,) = [r for r in case.facts["results"] if abs(r["thresh"] - thresh) < 1e-9]
    w, h = case.image_size
    pairs = {}
    for d in result["detections"]:
        x1, y1, x2, y2 = d["box"]
        clipped = np.array([min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)])
        pairs[(d["box_index"], d["class"])] = (clipped, d["score"])
    assert len(pairs) == result["detection_count"]
    return pairs


def iou(a, b) -> float:
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def is_threshold_tie(pair, case: Case, thresh: float, bound: float) -> bool:
    """A (box, class) decision that float rounding may flip: its score within ``bound`` of the confidence
    threshold, or its unclipped box at IoU 0.45 +- IOU_TIE with another candidate of its class."""
    index, label = pair
    a = case.arrays
    here = (a["cand_box_index"] == index) & (a["cand_class"] == label)
    if not here.any():
        return False
    if abs(float(a["cand_score"][here][0]) - thresh) <= bound:
        return True
    xywh = a["cand_xywh"]
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    mine = boxes[here][0]
    same_class = (a["cand_class"] == label) & ~here & (a["cand_score"] > thresh)
    return any(abs(iou(mine, other) - NMS) <= IOU_TIE for other in boxes[same_class])


def compare_detections(ours, theirs, case: Case, thresh: float, bound: float, ties_allowed: bool) -> None:
    differing = set(ours) ^ set(theirs)
    if ties_allowed:
        differing = {p for p in differing if not is_threshold_tie(p, case, thresh, bound)}
    assert not differing, f"{len(differing)} (box, class) pairs differ from Darknet's, e.g. {sorted(differing)[:5]}"
    for pair in set(ours) & set(theirs):
        (box, score), (dk_box, dk_score) = ours[pair], theirs[pair]
        assert np.abs(box - dk_box).max() <= BOX_TOL_PX, (pair, box, dk_box)
        assert abs(score - dk_score) <= bound, (pair, score, dk_score)


@pytest.mark.parametrize("thresh", [0.005, 0.25])
@pytest.mark.parametrize(("network", "image"), CASES)
def test_detections_match_darknet(reference, model_files, network, image, thresh) -> None:
    """Our network and post-processing: the same detections up to decisions at a threshold."""
    case = load_case(reference, network, image)
    ours = detection_pairs(run_network(model_files[network], case), model_anchors(model_files[network]), case, thresh)
    theirs = darknet_pairs(case, thresh)
    assert len(theirs) > 100
    compare_detections(ours, theirs, case, thresh, case.bound, ties_allowed=True)


@pytest.mark.parametrize("thresh", [0.005, 0.25])
@pytest.mark.parametrize(("network", "image"), CASES)
def test_postprocess_of_darknets_own_output_is_darknets(reference, model_files, network, image, thresh) -> None:
    """Our post-processing alone, on Darknet's conv output: exactly Darknet's detection set."""
    case = load_case(reference, network, image)
    output = torch.from_numpy(case.arrays["conv_out"])[None]
    ours = detection_pairs(output, model_anchors(model_files[network]), case, thresh)
    compare_detections(ours, darknet_pairs(case, thresh), case, thresh, 1e-6, ties_allowed=False)


def test_one_changed_weight_breaks_the_match(reference, tmp_path: Path) -> None:
    """The comparison can fail: one float of the .weights file (a conv weight of the third layer) changed."""
    case = load_case(reference, "yolov2-tiny-mini", IMAGES[0])
    weights = tmp_path / "changed.weights"
    shutil.copyfile(reference / "yolov2-tiny-mini.weights", weights)
    data = np.fromfile(weights, dtype=np.uint8)
    floats = data[20:].view(np.float32)  # after the 20-byte header (3 int32 + uint64 seen)
    # layer 1: 8 biases, 8 scales, 8 means, 8 variances, 8x3x3x3 weights; layer 2 likewise with 8 inputs
    layer3 = (4 * 8 + 8 * 3 * 9) + (4 * 8 + 8 * 8 * 9)
    floats[layer3 + 4 * 16 + 100] += 0.5  # a weight of layer 3 (16 filters), after its four BN vectors
    data.tofile(weights)
    model_file = convert(reference, "yolov2-tiny-mini", tmp_path / "changed.pt", weights=weights)
    assert conv_difference(model_file, case) > 10 * case.bound


def test_pytorch_or_alexeyab_batch_norm_does_not_match(reference, model_files, tmp_path: Path) -> None:
    """The formula matters on these weights: AlexeyAB's sqrt(var + 1e-5) misses by far more than the bound."""
    case = load_case(reference, "yolov2-mini", IMAGES[0])
    alexeyab = convert(reference, "yolov2-mini", tmp_path / "alexeyab.pt", "--batch-norm", "alexeyab")
    assert load_model_file(alexeyab)[1].batch_norm == "alexeyab"
    assert conv_difference(alexeyab, case) > 10 * case.bound
    assert conv_difference(model_files["yolov2-mini"], case) <= case.bound


@pytest.mark.parametrize("network", NETWORKS)
def test_onnx_export_computes_darknets_output(reference, model_files, network, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from yolov2.export import export_onnx

    case = load_case(reference, network, IMAGES[1])
    model, _ = load_model_file(model_files[network])
    path = export_onnx(model, tmp_path / f"{network}.onnx", input_size=416)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"images": case.arrays["input"][None]})
    np.testing.assert_allclose(output[0], case.arrays["conv_out"], rtol=0, atol=case.bound)
