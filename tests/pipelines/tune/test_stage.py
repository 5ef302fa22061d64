"""The tune stage end to end on the tiny generated data: real Ray Tune over real Ray Train trials, ASHA, MLflow
child runs in the workspace's SQLite store, the outputs, a cached rerun, and a search restored after its driver
was killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from driver_kill import kill_driver_when
from pipelines import full, ray_auth
from pipelines.config import load_config
from pipelines.dag import MANIFEST, fingerprint
from pipelines.stages import stage_named
from pipelines.tune.space import parse_space, sample_trials
from pipelines.tune.stage import SEARCH_NAME
from tiny_pipeline import TINY, set_args

REPO = Path(__file__).resolve().parents[3]
STAGES = "prepare,shard,anchors,tune"
SEARCH = [
    *TINY,
    "tune.num_trials=5",
    "tune.max_epochs=4",
    "tune.grace_period=1",
    "tune.reduction_factor=2",
    "tune.num_workers=1",
    "tune.seed=3",
    "tune.space={train.lr: {loguniform: [1.0e-4, 3.0e-2]}, train.jitter: {uniform: [0.0, 0.3]}, "
    "anchors.k: {choice: [3, 5]}}",
]


def _args(ws: Path, extra: list[str] = ()) -> list[str]:
    return [
        "--config",
        str(REPO / "configs/demo.yaml"),
        "--workspace",
        str(ws),
        "--stages",
        STAGES,
        *set_args([*SEARCH, *extra, "mlflow.experiment=tune-test"]),
    ]


def _tune_dir(ws: Path) -> Path:
    return next(ws.glob(f"tune/*/{MANIFEST}")).parent


def _alive_train_actors() -> set[str]:
    from ray.util.state import list_actors

    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
    return {a.actor_id for a in alive if a.class_name in ("RayTrainWorker", "TrainController")}


@pytest.fixture(scope="module")
def search(ray_local, tmp_path_factory):
    """One search of 5 trials of up to 4 epochs (1 worker each, 2 at a time on the 2 CPUs): its workspace, and
    the train actors alive before it (the session's Ray is shared with other tests)."""
    ws = tmp_path_factory.mktemp("tune") / "ws"
    before = _alive_train_actors()
    assert full.main(_args(ws)) == 0
    ws.joinpath("actors_before.json").write_text(json.dumps(sorted(before)))
    return ws


def _trials(ws: Path) -> list[dict]:
    return pq.read_table(_tune_dir(ws) / "trials.parquet").to_pylist()


def test_asha_stops_some_trials_before_max_t_and_lets_others_finish(search):
    trials = _trials(search)
    assert len(trials) == 5
    stopped = [t for t in trials if t["status"] == "stopped_early"]
    finished = [t for t in trials if t["status"] == "finished"]
    assert stopped, f"ASHA stopped no trial: {[(t['status'], t['metric_by_epoch']) for t in trials]}"
    assert all(t["epochs_run"] < 4 and t["stopped_at_epoch"] == t["epochs_run"] for t in stopped)
    assert finished and all(t["epochs_run"] == 4 for t in finished)
    for t in trials:
        assert len(t["metric_by_epoch"]) == t["epochs_run"] and t["wall_seconds"] > 0 and t["node"]
        assert t["workers"] == 1
        assert t["best_metric"] == pytest.approx(max(v for v in t["metric_by_epoch"] if v is not None))


def test_the_same_seed_gives_the_trials_the_config_samples(search):
    cfg = load_config(REPO / "configs/demo.yaml", SEARCH)
    expected = sample_trials(parse_space(cfg.tune.space, cfg, "test"), 5, 3)
    assert [json.loads(t["config"]) for t in _trials(search)] == [dict(sorted(p.items())) for p in expected]
    assert len({json.dumps(p, sort_keys=True) for p in expected}) == 5  # five different trials


def test_every_trial_is_a_child_run_of_the_tune_run_with_its_outcome(search):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{search / 'mlflow.db'}")
    tune_run_id = json.loads((_tune_dir(search) / MANIFEST).read_text())["mlflow_run_id"]
    experiment = client.get_run(tune_run_id).info.experiment_id
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{tune_run_id}'")
    by_index = {int(r.data.tags["tune.trial_index"]): r for r in children}
    assert sorted(by_index) == [0, 1, 2, 3, 4]
    for t in _trials(search):
        run = by_index[t["trial_index"]]
        assert run.info.run_id == t["mlflow_run_id"] and run.data.tags["tune.trial_id"] == t["trial_id"]
        assert run.data.params["train.lr"] == str(json.loads(t["config"])["train.lr"])
        history = sorted(client.get_metric_history(run.info.run_id, "map50_voc07"), key=lambda m: m.step)
        # logged by the trial's rank 0 every epoch; a stopped trial's workers may finish an epoch or two more
        # before Tune ends them, and MLflow shows those too
        assert len(history) >= t["epochs_run"]
        assert [m.value for m in history[: t["epochs_run"]]] == pytest.approx(t["metric_by_epoch"])
        if t["status"] == "stopped_early":
            assert run.info.status == "KILLED" and run.data.tags["tune.outcome"] == "stopped_early"
            assert run.data.tags["tune.stopped_at_epoch"] == str(t["epochs_run"])
        else:
            assert run.info.status == "FINISHED" and "tune.stopped_at_epoch" not in run.data.tags
    artifacts = {f.path for f in client.list_artifacts(tune_run_id)}
    assert {
        "trials.parquet",
        "best_config.yaml",
        "trial_curves.png",
        "trial_params.png",
        "anchors_by_k.json",
    } <= artifacts


def test_best_config_is_ray_tunes_best_result(search):
    import ray.tune

    from pipelines.tune.trial import run_trial

    folder = _tune_dir(search)
    grid = ray.tune.Tuner.restore(str(folder / "ray" / SEARCH_NAME), run_trial).get_results()
    best = grid.get_best_result(metric="map50_voc07", mode="max", scope="all")
    written = yaml.safe_load((folder / "best_config.yaml").read_text())
    flat = {f"{section}.{key}": value for section, keys in written.items() for key, value in keys.items()}
    assert flat == best.config["trial"]["params"]
    trials = _trials(search)
    top = max(trials, key=lambda t: t["best_metric"])
    assert json.loads(top["config"]) == dict(sorted(flat.items()))
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["best_config"] == flat
    assert manifest["best_anchors"] == manifest["anchors_by_k"][str(flat["anchors.k"])]


def test_no_training_worker_outlives_the_search(search):
    before = set(json.loads((search / "actors_before.json").read_text()))
    assert not _alive_train_actors() - before


def test_a_rerun_with_the_same_config_is_a_cache_hit(search):
    assert full.main(_args(search)) == 0
    summary = json.loads((search / "summary.json").read_text())
    assert summary["stages"]["tune"]["status"] == "cached"


def test_train_from_tune_reads_the_search_and_changes_trains_fingerprint():
    cfg = load_config(REPO / "configs/demo.yaml", SEARCH)
    tuned = load_config(REPO / "configs/demo.yaml", [*SEARCH, "train.from_tune=true"])
    train, tune = stage_named("train"), stage_named("tune")
    assert tune in train.upstream_for(tuned) and tune not in train.upstream_for(cfg)
    assert fingerprint(tuned, train) != fingerprint(cfg, train)
    retuned = load_config(REPO / "configs/demo.yaml", [*SEARCH, "train.from_tune=true", "tune.seed=4"])
    assert fingerprint(retuned, train) != fingerprint(tuned, train)  # another search, another train output
    assert not tune.runs_by_default(cfg) and tune.runs_by_default(tuned)


def test_a_trial_trains_on_several_workers(ray_local, tmp_path):
    """``tune.num_workers: 2``: each trial's train run is data-parallel over two workers (Ray Train's world
    size, reported by rank 0)."""
    ws = tmp_path / "ws"
    assert full.main(_args(ws, ["tune.num_trials=1", "tune.max_epochs=1", "tune.num_workers=2"])) == 0
    [trial] = _trials(ws)
    assert (trial["workers"], trial["status"], trial["epochs_run"]) == (2, "finished", 1)
    assert trial["best_metric"] is not None


@pytest.mark.fault
def test_a_search_whose_driver_was_killed_resumes_and_does_not_rerun_finished_trials(
    ray_local, ray_token_file, tmp_path
):
    import ray.tune

    ws = tmp_path / "ws"
    args = _args(ws)
    log = tmp_path / "driver.log"
    # The driver joins the session's Ray, as a driver joins a cluster: the trials, their train runs and workers
    # are its job's actors and die with it. (A second Ray instance on one machine confuses Ray Train's
    # placement-group cleaner, which then leaves a stopped trial's CPUs taken.)
    env = {
        **{k: v for k, v in os.environ.items() if k != ray_auth.TOKEN_ENV},
        "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
        ray_auth.MODE_ENV: "token",
        ray_auth.TOKEN_PATH_ENV: str(ray_token_file),  # the session Ray's token, whatever other tests exported
    }
    with open(log, "w") as out:
        command = [sys.executable, "-m", "pipelines.full", *args]
        driver = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def a_trial_ended() -> bool:
        experiment = next(ws.glob(f"tune/*/ray/{SEARCH_NAME}"), None)
        return bool(experiment and ray.tune.Tuner.can_restore(str(experiment)) and _ended_trials(experiment))

    kill_driver_when(a_trial_ended, driver, log, timeout=480, poll_s=1)
    experiment = next(ws.glob(f"tune/*/ray/{SEARCH_NAME}"))
    ended = _ended_trials(experiment)
    assert ended and not (experiment.parent.parent / MANIFEST).exists()
    starts_before = _starts(experiment.parent.parent)

    assert full.main(args) == 0  # the same command again: Tuner.restore
    folder = _tune_dir(ws)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["restored"] is True and manifest["trials"] == 5
    starts_after = _starts(folder)
    for name in ended:
        assert starts_after[name] == starts_before[name] == 1, (name, starts_before, starts_after)
    assert sorted(starts_after) == [f"trial_{i:03d}" for i in range(5)]


def _ended_trials(experiment: Path) -> list[str]:
    """The trials the search's saved state has as ended (what a restore keeps)."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(str(experiment))
    except Exception:  # noqa: BLE001  the state file may be half-written while we look
        return []
    return sorted(str(t) for t in analysis.trials if t.status in ("TERMINATED",))


def _starts(tune_dir: Path) -> dict[str, int]:
    """How many times each trial's train run started (trials/<name>/starts.jsonl)."""
    return {p.parent.name: len(p.read_text().splitlines()) for p in tune_dir.glob("trials/*/starts.jsonl")}
