"""Where the time of a YOLOv2 step goes on CPU, ONNX Runtime against torch eager inference, and the network in
each precision and layout.

Prints one JSON object. yolov2_voc (Darknet-19 + passthrough, 20 classes; ``--model``), batch 16 at 416x416,
torch and ONNX Runtime both limited to the same number of threads (2 by default). The JSON states the CPU's
kind (``cpu_capability``) and whether it computes bf16 natively. The loss, postprocess and ONNX Runtime figures
are in float32, NCHW; ``precisions`` covers the others.

Measurements are interleaved: each round times the model, then right after it the part compared
with it (loss after the training step; postprocess and ONNX Runtime after the eval forward), so
each ratio is taken under the same machine load. The figures are medians over ``--iters`` training
and ``--infer-iters`` inference rounds after ``--warmup`` untimed ones, each ratio the median of the
per-round ratios (``*_min_times``: the ratio of the fastest runs, the least disturbed estimate).
The load average at the start is reported: on a shared machine the absolute times are noisy, and
oversubscribed threads slow small operations far more than large convolutions.

- model: forward + backward of the bare network (train mode), the gradient of the output given.
- region loss: forward + backward of ``region_loss`` on that output (a leaf), with 1-6 random
  truths per image and ``seen=0`` (Darknet's prior term on: the most work the loss does). Its
  share is loss / (model + loss), the step without the optimizer.
- postprocess: ``postprocess`` (decode, letterbox undo, score > 0.005 as in evaluation, per-class
  NMS, top 100) on the eval-mode output. A randomly initialised head puts every (box, class) pair
  above 0.005 (objectness ~0.5 x p(class) ~0.05): 16,900 candidates per image, the worst case for
  the NMS. A trained head leaves most of its 845 boxes near zero objectness, so the same output is
  also measured with all objectness logits shifted down (by bisection) until about 1,000 and 100
  candidates per image pass. Share = postprocess / (eval forward + postprocess).
- ONNX Runtime: the same network exported by ``yolov2.export.export_onnx`` (dynamic axes, raw
  output), CPU provider, all graph optimisations, ``intra_op_num_threads`` = torch's threads.
- precisions (last, after everything above): the bare network's training forward + backward (``--iters``
  rounds) and eval forward (``--infer-iters`` rounds) in float32 and bf16 autocast, each in NCHW and
  channels_last; which one ``auto`` picks on this machine (:func:`yolov2.engine.precision.choose_precision`)
  and its time against the fastest, with the target ``auto`` within 5% of it. A variant over 5x the fastest so
  far in process CPU time on its first timed iteration (emulated bf16 on CPUs without native bf16) keeps that
  one iteration and is marked ``capped`` (see ``machine.py``).

    python benchmarks/model.py [--model yolov2_voc] [--batch 16] [--size 416] [--threads 2] [--iters 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import Timing, machine_facts, precision_section, precision_table, timed  # noqa: E402

from yolov2.engine.precision import Precision  # noqa: E402

CONF_THRESH = 0.005  # Darknet's validation threshold, as in our evaluation
CANDIDATE_TARGETS = (None, 1000, 100)  # postprocess inputs: the random head as is, then ~1000 and ~100 per image


def seconds(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def random_targets(batch: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Tensor[B, 6, 5] rows [label, cx, cy, w, h] normalised, 1-6 boxes per image, padding rows -1."""
    targets = torch.full((batch, 6, 5), -1.0)
    for b in range(batch):
        n = int(torch.randint(1, 7, (1,), generator=generator))
        wh = torch.rand(n, 2, generator=generator) * 0.6 + 0.05
        centre = wh / 2 + torch.rand(n, 2, generator=generator) * (1 - wh)
        labels = torch.randint(0, num_classes, (n, 1), generator=generator).float()
        targets[b, :n] = torch.cat([labels, centre, wh], 1)
    return targets


def shift_objectness(output: torch.Tensor, num_anchors: int, shift: float) -> torch.Tensor:
    """A copy of output (Tensor[B, A*(5+C), H, W]) with every anchor's objectness logit plus ``shift``."""
    shifted = output.clone()
    shifted[:, 4 :: output.shape[1] // num_anchors] += shift
    return shifted


def candidates_per_image(output: torch.Tensor, num_anchors: int, thresh: float) -> float:
    """Mean number of (box, class) pairs per image with objectness x p(class) > thresh."""
    b = output.shape[0]
    out = output.reshape(b, num_anchors, output.shape[1] // num_anchors, -1)
    scores = torch.sigmoid(out[:, :, 4:5]) * torch.softmax(out[:, :, 5:], 2)
    return int((scores > thresh).sum()) / b


def shift_for_candidates(output: torch.Tensor, num_anchors: int, thresh: float, target: float) -> float:
    """The objectness shift (<= 0) that leaves about ``target`` candidates per image (bisection)."""
    low, high = -30.0, 0.0
    for _ in range(40):
        mid = (low + high) / 2
        if candidates_per_image(shift_objectness(output, num_anchors, mid), num_anchors, thresh) > target:
            high = mid
        else:
            low = mid
    return (low + high) / 2


def stats(times: list[float]) -> dict[str, float | list[float]]:
    return {
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "runs_s": [round(t, 4) for t in times],
    }


def median_ratio(parts: list[float], wholes: list[float]) -> float:
    return round(statistics.median(p / w for p, w in zip(parts, wholes)), 5)


def precision_tables(
    model: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, train_rounds: int, infer_rounds: int
) -> dict:
    """Training forward + backward and eval forward of the bare network in each precision and layout."""

    def train_iters(precision: Precision, n: int) -> list[Timing]:
        model.train().to(memory_format=precision.memory_format)
        xp = x.contiguous(memory_format=precision.memory_format)

        def step() -> None:
            model.zero_grad(set_to_none=True)
            with precision.autocast("cpu"):
                out = model(xp)
            out.backward(grad.to(out.dtype))

        return [timed(step) for _ in range(n)]

    def eval_iters(precision: Precision, n: int) -> list[Timing]:
        model.eval().to(memory_format=precision.memory_format)
        xp = x.contiguous(memory_format=precision.memory_format)
        with torch.inference_mode(), precision.autocast("cpu"):
            return [timed(lambda: model(xp)) for _ in range(n)]

    tables = {
        "train_forward_backward": precision_table("cpu", train_iters, train_rounds, 1),
        "eval_forward": precision_table("cpu", eval_iters, infer_rounds, 1),
    }
    model.zero_grad(set_to_none=True)
    return precision_section("cpu", tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolov2_voc")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="timed training rounds")
    parser.add_argument("--infer-iters", type=int, default=5, help="timed inference rounds")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    import onnxruntime as ort

    from yolov2.export import export_onnx
    from yolov2.loss import region_loss
    from yolov2.models import build_model
    from yolov2.postprocess import postprocess

    load_at_start = os.getloadavg()[0]
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build_model(args.model, args.classes)
    anchors = torch.tensor(model.default_anchors, dtype=torch.float32)
    num_anchors = len(anchors)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=gen)
    targets = random_targets(args.batch, args.classes, gen)

    # ---- training: bare model forward + backward, then the loss forward + backward on its output --------
    model.train()
    with torch.no_grad():
        raw = model(x)
    grad = torch.randn(raw.shape, generator=gen) * 1e-3

    def model_step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).backward(grad)

    def loss_step() -> None:
        region_loss(raw.detach().requires_grad_(True), targets, anchors, args.classes, seen=0).total.backward()

    model_times, loss_times = [], []
    for i in range(args.warmup + args.iters):
        t_model = seconds(model_step)
        t_loss = statistics.median(seconds(loss_step) for _ in range(3))
        if i >= args.warmup:
            model_times.append(t_model)
            loss_times.append(t_loss)
    model.zero_grad(set_to_none=True)

    # ---- inference: eval forward, then postprocess (three heads) and ONNX Runtime on the same batch ------
    model.eval()
    image_sizes = torch.tensor([[500, 375]] * args.batch)
    with torch.inference_mode():
        eval_out = model(x)
        shifts = [
            0.0 if t is None else shift_for_candidates(eval_out, num_anchors, CONF_THRESH, t) for t in CANDIDATE_TARGETS
        ]
        heads = [shift_objectness(eval_out, num_anchors, s) for s in shifts]

    def post(head: torch.Tensor) -> list:
        return postprocess(
            head,
            anchors,
            args.classes,
            (args.size, args.size),
            image_sizes,
            conf_thresh=CONF_THRESH,
            nms_thresh=0.45,
            max_det=100,
        )

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", input_size=args.size)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"images": x.numpy()}
    max_abs_diff = float(abs(torch.from_numpy(session.run(None, feed)[0]) - eval_out).max())

    forward_times, ort_times, post_times = [], [], [[] for _ in heads]
    with torch.inference_mode():
        for i in range(args.warmup + args.infer_iters):
            t_forward = seconds(lambda: model(x))
            t_post = [seconds(lambda h=h: post(h)) for h in heads]
            t_ort = seconds(lambda: session.run(None, feed))
            if i >= args.warmup:
                forward_times.append(t_forward)
                ort_times.append(t_ort)
                for times, t in zip(post_times, t_post):
                    times.append(t)
        post_rows = [
            {
                "head": "random init" if target is None else f"objectness logits {shift:+.2f}",
                "candidates_per_image": candidates_per_image(head, num_anchors, CONF_THRESH),
                "detections_per_image": sum(len(d.scores) for d in post(head)) / args.batch,
                **stats(times),
                "share_of_inference": median_ratio(times, [f + t for f, t in zip(forward_times, times)]),
                "share_of_inference_min_times": round(min(times) / (min(forward_times) + min(times)), 5),
            }
            for target, shift, head, times in zip(CANDIDATE_TARGETS, shifts, heads, post_times)
        ]

    forward_s, ort_s = statistics.median(forward_times), statistics.median(ort_times)
    result = {
        "benchmark": "model",
        "model": args.model,
        "batch": args.batch,
        "input_size": args.size,
        "num_classes": args.classes,
        "dtype": "float32",
        "device": "cpu",
        **machine_facts(
            args.threads,
            "float32, NCHW (loss, postprocess, ONNX Runtime); 'precisions': each variant",
            "torch intra-op threads = ONNX Runtime intra_op_num_threads",
        ),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": round(load_at_start, 2),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "iters": args.iters,
        "infer_iters": args.infer_iters,
        "warmup": args.warmup,
        "train_model_forward_backward": stats(model_times),
        "region_loss_forward_backward": stats(loss_times),
        "region_loss_share_of_step": median_ratio(loss_times, [m + s for m, s in zip(model_times, loss_times)]),
        "region_loss_share_of_step_min_times": round(min(loss_times) / (min(model_times) + min(loss_times)), 5),
        "region_loss_target_share": 0.01,
        "eval_forward": stats(forward_times),
        "postprocess_conf_thresh": CONF_THRESH,
        "postprocess": post_rows,
        "postprocess_target_share": 0.05,
        "onnxruntime_forward": stats(ort_times),
        "torch_eager_images_per_s": round(args.batch / forward_s, 3),
        "onnxruntime_images_per_s": round(args.batch / ort_s, 3),
        "onnxruntime_speedup": median_ratio(forward_times, ort_times),
        "onnxruntime_speedup_min_times": round(min(forward_times) / min(ort_times), 3),
        "onnxruntime_target_speedup": 1.3,
        "onnxruntime_max_abs_diff": max_abs_diff,
    }
    result["precisions"] = precision_tables(model, x, grad, args.iters, args.infer_iters)
    result["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
