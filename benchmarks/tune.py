"""The cost of the search machinery: a tune search of N trials against N sequential runs of the plain train
stage with the same settings, both measured in this run; one JSON object out.

Input: generated data (``--images`` train images, 16 val, 160x120), the demo's tiny model at a quarter width,
input 128, batch 8, one worker per run. Each of the N configs is a trial's (its sampled learning rate and
jitter over the trial settings the search uses: validation and a checkpoint every epoch), and every run stops
after ``--steps`` optimizer steps. Tracking is off in both, so the figures are Ray Tune's and Ray Train's.

* ``sequential`` (the baseline): the train stage (``run_stage(train.SPEC)``) once per config, one after another;
* ``tune_one_at_a_time``: the tune stage with ``max_concurrent_trials: 1`` and ASHA's grace period at the trial's
  full length (no trial stops early, so the work is the same): ``overhead`` = its wall time / the baseline's;
  the issue's target is at most 1.10; ``overhead_s_per_trial`` is the extra time per trial, about fixed, so the
  ratio falls as trials get longer;
* ``tune_concurrent``: ``max_concurrent_trials`` = the CPUs (one CPU per one-worker trial): ``speedup`` = the
  baseline / its wall time, against ``ideal`` = min(N, CPUs).

    python benchmarks/tune.py [--trials 4] [--steps 96] [--images 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ray  # noqa: E402
from machine import machine_facts  # noqa: E402

from pipelines import anchors, prepare, ray_auth, shard  # noqa: E402
from pipelines.config import PipelineConfig, load_config  # noqa: E402
from pipelines.dag import run_stage  # noqa: E402
from pipelines.train import driver as train  # noqa: E402
from pipelines.tune import stage as tune  # noqa: E402
from pipelines.tune.space import parse_space, sample_trials, trial_config  # noqa: E402
from pipelines.tune.trial import trial_settings  # noqa: E402
from pipelines.workspace import Workspace  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPACE = "{train.lr: {loguniform: [1.0e-3, 1.0e-2]}, train.jitter: {uniform: [0.0, 0.3]}}"


def config(images: int, steps: int, trials: int, concurrent: int) -> PipelineConfig:
    epochs = 1000  # max_steps ends every run; ASHA's grace period is the whole trial, so no trial stops early
    overrides = [
        f"data.synthetic.num_train={images}",
        "data.synthetic.num_val=16",
        "data.synthetic.num_test=4",
        "data.synthetic.image_size=[160, 120]",
        "anchors.n_init=1",
        "model.width_multiplier=0.25",
        f"train.epochs={epochs}",
        f"train.max_steps={steps}",
        "train.num_workers=1",
        "train.batch_size=8",
        "train.effective_batch=8",
        "train.input_size=128",
        "train.multiscale_sizes=[96, 160, 32]",
        "train.register_name=null",
        "evaluate.batch_size=8",
        f"tune.num_trials={trials}",
        f"tune.grace_period={epochs}",
        f"tune.max_concurrent_trials={concurrent}",
        f"tune.space={SPACE}",
    ]
    return load_config(REPO / "configs/demo.yaml", overrides)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return round(time.perf_counter() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4, help="trials in the search, and sequential train runs")
    parser.add_argument("--steps", type=int, default=96, help="optimizer steps of every run (train.max_steps)")
    parser.add_argument("--images", type=int, default=64, help="generated training images")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    ray_auth.configure(starts_local=True)  # as pipelines/ray_runtime.py, with the workers' output kept off stdout
    ray.init(num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    with tempfile.TemporaryDirectory() as folder:
        workspace = Workspace(folder)
        cfg = config(args.images, args.steps, args.trials, 1)
        upstream = {}
        for spec in (prepare.SPEC, shard.SPEC, anchors.SPEC):
            upstream[spec.name] = run_stage(spec, cfg, workspace, tracking_enabled=False)
        trials = sample_trials(parse_space(cfg.tune.space, cfg, "tune.space"), args.trials, cfg.tune.seed)
        base = trial_settings(cfg)

        def sequential() -> None:
            for params in trials:
                run_cfg = trial_config(base, params, "benchmark")
                run_stage(train.SPEC, run_cfg, workspace, tracking_enabled=False, force=True)

        def search(concurrent: int) -> None:
            run_stage(
                tune.SPEC, config(args.images, args.steps, args.trials, concurrent), workspace, tracking_enabled=False
            )

        baseline = timed(sequential)
        one = timed(lambda: search(1))
        concurrent = max(1, min(args.trials, cpus))
        many = timed(lambda: search(concurrent))
    report = {
        "benchmark": "tune",
        "trials": args.trials,
        "steps_per_trial": args.steps,
        "train_images": args.images,
        "sequential_s": baseline,
        "tune_one_at_a_time_s": one,
        "overhead": round(one / baseline, 3),
        "overhead_target": 1.10,
        # the machinery's cost is about fixed per trial (a trial's driver process, Tune's bookkeeping), so the
        # ratio falls as trials get longer: this is the figure to carry to other trial lengths
        "overhead_s_per_trial": round((one - baseline) / args.trials, 2),
        "tune_concurrent_s": many,
        "concurrent_trials": concurrent,
        "speedup": round(baseline / many, 3),
        "ideal_speedup": concurrent,
        "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()],
        **machine_facts(1, "auto", "torch intra-op threads per worker"),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
