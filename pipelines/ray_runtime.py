"""Joining Ray: an existing cluster when there is one (as under `ray submit` / `ray job submit`),
otherwise a local instance on this machine. Either way with token authentication (pipelines/ray_auth.py)."""

from __future__ import annotations

import logging
import os

from pipelines import ray_auth

log = logging.getLogger(__name__)


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Initialise Ray once per process; a no-op when it is already initialised (e.g. in tests).

    Raises ``ray_auth.RayAuthError`` when the token setup is wrong or the cluster refuses this driver's token; the
    message says which token was presented and how to pass the cluster's."""
    import ray

    if ray.is_initialized():
        return
    if address is None and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    auth = ray_auth.configure(starts_local=address in (None, "local"))
    try:
        _init(address, num_cpus)
    except Exception as e:
        if ray_auth.is_refusal(e):
            raise ray_auth.refused(address, auth) from e
        raise


def _init(address: str | None, num_cpus: int | None) -> None:
    import ray

    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    # Plain ray.init() joins the cluster a `ray start` on this machine recorded, else starts a local one
    # (it never joins some other process's private ray.init() instance, unlike address="auto").
    # The dashboard serves Ray's state API, which Ray Train's placement-group cleaner polls every second:
    # without it the train stage prints "Failed to query Ray Train Controller actor state" each time, and a
    # lookup that finds nothing is taken for a dead controller: the cleaner removed the workers' placement
    # group mid-run (seen in the demo under load; the run restarted from its checkpoint). 127.0.0.1 only.
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)
    except ValueError:  # num_cpus is refused when joining an existing cluster
        ray.init(log_to_driver=True)
