"""pipelines/ray_runtime.py: how much of Ray's own output the console shows. By default Ray Train's internal
lines ("Reporting training result ..." per epoch and rank, worker group start-up, the C++ warning about
actor restarts) are gone while our workers' lines and Ray's warnings stay; ``verbose`` brings Ray's lines
back. The live check runs a real two-worker Ray Train job in a fresh process, as a stage command does.
(Joining and token authentication: tests/test_security.py, tests/pipelines/test_ray_auth.py.)"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import ray_runtime

REPO = Path(__file__).resolve().parents[2]
REPORT_LINE = "Reporting training result"
CPP_NOISE = (
    "[2026-12-04 05:35:05,111 E 27498 27557] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and "
    "ID: '2e18' has constructor arguments in the object store and max_restarts > 0. If the arguments in the object "
    "store go out of scope or are lost, the actor restart will fail."
)


def test_quiet_by_default_verbose_on_request():
    quiet, verbose = ray_runtime.init_options(False), ray_runtime.init_options(True)
    assert quiet["log_to_driver"] and verbose["log_to_driver"], "our workers' lines reach the console either way"
    assert quiet["logging_level"] == logging.WARNING and "logging_level" not in verbose
    assert quiet["runtime_env"] == {"worker_process_setup_hook": ray_runtime.quiet_worker_logs}
    assert "runtime_env" not in verbose


def test_train_logging_config_follows_the_ray_this_process_joined():
    import ray.train  # noqa: F401  its first import sets up the "ray" logger; connect() has imported it already

    ray_logger = logging.getLogger("ray")  # ray.init(logging_level=...) sets it; connect() chooses the level
    saved = ray_logger.level
    try:
        ray_logger.setLevel(ray_runtime.init_options(False)["logging_level"])
        assert ray_runtime.train_logging_config().log_level == "WARNING"
        ray_logger.setLevel(logging.INFO)  # ray.init's default, which verbose keeps
        assert ray_runtime.train_logging_config().log_level == "INFO"
    finally:
        ray_logger.setLevel(saved)


def test_the_worker_hook_quiets_the_logger_of_ray_trains_report_line():
    from ray.train.v2._internal.execution import context  # where Ray Train 2.60 logs REPORT_LINE

    assert context.logger.name == ray_runtime.train_report_logger_name(), "Ray Train moved its report line"
    saved = context.logger.level
    try:
        context.logger.setLevel(logging.NOTSET)
        ray_runtime.quiet_worker_logs()
        assert not context.logger.isEnabledFor(logging.INFO)
        assert context.logger.isEnabledFor(logging.WARNING)
    finally:
        context.logger.setLevel(saved)


def test_the_driver_drops_only_the_cpp_actor_restart_warning():
    printed: list[dict] = []
    batch = {"pid": 7, "is_err": True, "lines": ["[train] step 1/4", CPP_NOISE, "Traceback (most recent call last):"]}
    ray_runtime.print_without_noise(printed.append, batch)
    assert printed == [{**batch, "lines": ["[train] step 1/4", "Traceback (most recent call last):"]}]
    ray_runtime.print_without_noise(printed.append, {**batch, "lines": [CPP_NOISE]})
    assert len(printed) == 1, "a batch of noise only prints nothing"


# A stage command's Ray in a fresh process (quiet, or verbose with the argument "verbose"), running a real
# two-worker Ray Train job that reports three results; its workers print a line as our progress lines are
# printed and log one INFO line as pipelines.train.worker does.
_TRAIN_JOB = r"""
import logging, sys, tempfile
import ray, ray.train
from ray.train.torch import TorchTrainer
from pipelines import ray_runtime

def loop(config):
    print("[train] our progress line", file=sys.__stdout__, flush=True)
    logging.getLogger("pipelines.train.worker").info("our worker log line")
    for epoch in range(3):
        ray.train.report({"epoch": epoch})

ray_runtime.connect(None, 2, verbose=sys.argv[1:] == ["verbose"])
trainer = TorchTrainer(
    loop,
    scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
    run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp(), logging_config=ray_runtime.train_logging_config()),
)
trainer.fit()
ray.shutdown()  # prints what the workers printed last
print("=== done ===", flush=True)
"""


def _console_of_train_job(tmp_path: Path, *args: str) -> str:
    """Everything the job's driver printed, stdout and stderr interleaved as on a console."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO), RAY_COLOR_PREFIX="0")
    run = subprocess.run(
        [sys.executable, "-c", _TRAIN_JOB, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=480,
    )
    assert run.returncode == 0 and "=== done ===" in run.stdout, run.stdout[-5000:]
    return run.stdout


def test_a_real_ray_train_job_shows_our_lines_and_not_ray_trains_by_default(tmp_path):
    console = _console_of_train_job(tmp_path)
    assert "[train] our progress line" in console and "our worker log line" in console, console
    assert REPORT_LINE not in console, console
    assert "Started training worker group" not in console and "Setting up process group" not in console, console
    assert "max_restarts > 0" not in console, console


@pytest.mark.slow  # ~60 s on 2 busy cores (Ray's start and worker group); the quiet run above is the default
def test_a_real_ray_train_job_shows_ray_trains_lines_when_verbose(tmp_path):
    console = _console_of_train_job(tmp_path, "verbose")
    assert "[train] our progress line" in console, console
    assert REPORT_LINE in console and "Started training worker group" in console, console


def test_ray_datas_note_that_progress_bars_are_off_is_dropped_and_its_other_warnings_kept():
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("ray.data", logging.WARNING, __file__, 1, message, None, None)

    assert not ray_runtime._without_progress_bars_note(record("Progress bars disabled. To enable, set ..."))
    assert ray_runtime._without_progress_bars_note(record("not enough resources for the requested actor pool"))
