"""Joining Ray: an existing cluster when there is one (as under `ray submit` / `ray job submit`),
otherwise a local instance on this machine. Either way with token authentication (pipelines/ray_auth.py).

Ray's own console lines are turned down unless ``verbose`` (the ``--verbose`` of every stage command and
``full.py``): they drown our progress lines (a "Reporting training result ..." per epoch and rank, worker
group start-up, a C++ warning about actor restarts). Warnings and errors of Ray still show, and everything
stays in Ray's log files (``/tmp/ray/session_latest/logs``). One switch per source of noise:

- the driver's ``ray`` logger (``ray.init(logging_level=...)``): start-up lines;
- Ray Train's ``ray.train`` loggers on its controller and workers: ``RunConfig(logging_config=``
  :func:`train_logging_config` ``())``, Ray Train's own knob (its log files keep every level);
- Ray Train's "Reporting training result" line, logged by a logger named after its file, so no level of
  ``ray.train`` reaches it: :func:`quiet_worker_logs`, run in every worker process of the job
  (``runtime_env`` ``worker_process_setup_hook``);
- Ray Data's progress bars and INFO lines in the driver (:func:`_quiet_ray_data`);
- a C++ warning about actor restarts that no setting turns off, dropped from what the driver prints of its
  workers' output (:func:`_hide_driver_noise`); the driver's own copy of it (once per evaluate, when it
  starts its actor pool) goes straight to the process's stderr and still shows.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines import ray_auth

if TYPE_CHECKING:
    import ray.train

log = logging.getLogger(__name__)

QUIET_LEVEL = logging.WARNING
# Ray Train 2.60 logs "Reporting training result ..." through logging.getLogger(__file__) of this module.
TRAIN_REPORT_MODULE = ("train", "v2", "_internal", "execution", "context.py")
# Worker output the driver never prints unless verbose: C++ lines of Ray's with no setting of their own.
DRIVER_NOISE = re.compile(r"has constructor arguments in the object store and max_restarts > 0")
PROGRESS_BARS_OFF_NOTE = "Progress bars disabled"  # Ray Data's warning when they are off
_PRINTER = "ray_print_logs"  # the name under which ray.init registers the printer of worker output


def connect(address: str | None = None, num_cpus: int | None = None, verbose: bool = False) -> None:
    """Initialise Ray once per process; a no-op when it is already initialised (e.g. in tests).

    ``verbose``: show Ray's own console lines (see the module docstring); by default only warnings and errors.
    Raises ``ray_auth.RayAuthError`` when the token setup is wrong or the cluster refuses this driver's token; the
    message says which token was presented and how to pass the cluster's."""
    import ray

    if ray.is_initialized():
        return
    if address is None and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    auth = ray_auth.configure(starts_local=address in (None, "local"))
    try:
        _init(address, num_cpus, init_options(verbose))
    except Exception as e:
        if ray_auth.is_refusal(e):
            raise ray_auth.refused(address, auth) from e
        raise
    if not verbose:
        _quiet_ray_data()
        _hide_driver_noise()


def init_options(verbose: bool) -> dict[str, Any]:
    """The ``ray.init`` arguments that set how much of Ray's own output the console shows."""
    if verbose:
        return {"log_to_driver": True}
    return {
        "log_to_driver": True,  # our workers' progress lines and errors still reach the console
        "logging_level": QUIET_LEVEL,
        "runtime_env": {"worker_process_setup_hook": quiet_worker_logs},
    }


def is_verbose() -> bool:
    """Whether the Ray this process joined is verbose (read from the level :func:`connect` gave the ``ray`` logger)."""
    return logging.getLogger("ray").getEffectiveLevel() < QUIET_LEVEL


def train_logging_config() -> ray.train.LoggingConfig:
    """For Ray Train's ``RunConfig(logging_config=...)``: its ``ray.train`` console lines at WARNING and up,
    unless :func:`is_verbose`."""
    import ray.train

    return ray.train.LoggingConfig(log_level="INFO" if is_verbose() else logging.getLevelName(QUIET_LEVEL))


def train_report_logger_name() -> str:
    """The name of the logger of Ray Train's "Reporting training result" line: its module's file."""
    import ray

    return str(Path(ray.__file__).parent.joinpath(*TRAIN_REPORT_MODULE))


def quiet_worker_logs() -> None:
    """Ray's ``worker_process_setup_hook``: runs in every worker process of the job, at its start.

    Ray Train later sets the worker's root logger to INFO, which its per-report line goes through; a level on
    that line's own logger survives (it is not under ``ray.train``, so Ray Train's set-up leaves it alone).
    Never raises: a failing hook makes Ray stop the worker."""
    try:
        logging.getLogger(train_report_logger_name()).setLevel(QUIET_LEVEL)
    except Exception:  # noqa: BLE001  quieter logs are not worth a worker
        pass


def _quiet_ray_data() -> None:
    """No progress bars (the stages print their own progress lines), and only Ray Data's warnings on the console
    (its log file keeps every line). Imports ``ray.data`` (half a second; full.py and the train and evaluate
    commands have imported it already)."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console; its files are plain Handlers
            handler.setLevel(QUIET_LEVEL)
            handler.addFilter(_without_progress_bars_note)


def _without_progress_bars_note(record: logging.LogRecord) -> bool:
    """False for Ray Data's warning that progress bars are off (we turned them off)."""
    return not record.getMessage().startswith(PROGRESS_BARS_OFF_NOTE)


def _hide_driver_noise() -> None:
    """Wrap Ray's printer of worker output (a private hook of Ray's; left alone when it is not found) so that
    lines matching :data:`DRIVER_NOISE` are dropped."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    printer = dict(dispatcher.handlers).get(_PRINTER)
    if printer is None:
        log.debug("Ray's printer of worker output (%s) not found: its noise is not filtered", _PRINTER)
        return
    dispatcher.remove_handler(_PRINTER)
    dispatcher.add_handler(_PRINTER, functools.partial(print_without_noise, printer))


def print_without_noise(printer: Callable[[dict[str, Any]], None], batch: dict[str, Any]) -> None:
    """Ray's ``printer`` for a batch of a worker's output lines, without those matching :data:`DRIVER_NOISE`."""
    lines = [line for line in batch.get("lines", []) if not DRIVER_NOISE.search(line)]
    if lines:
        printer({**batch, "lines": lines})


def _init(address: str | None, num_cpus: int | None, options: dict[str, Any]) -> None:
    import ray

    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, **options)
        return
    # Plain ray.init() joins the cluster a `ray start` on this machine recorded, else starts a local one
    # (it never joins some other process's private ray.init() instance, unlike address="auto").
    # The dashboard serves Ray's state API, which Ray Train's placement-group cleaner polls every second:
    # without it the train stage prints "Failed to query Ray Train Controller actor state" each time, and a
    # lookup that finds nothing is taken for a dead controller: the cleaner removed the workers' placement
    # group mid-run (seen in the demo under load; the run restarted from its checkpoint). 127.0.0.1 only.
    try:
        context = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **options)
    except ValueError:  # num_cpus is refused when joining an existing cluster
        context = ray.init(**options)
    dashboard = getattr(context, "dashboard_url", None)
    log.info("Ray is up%s", f" (dashboard http://{dashboard})" if dashboard else "")
