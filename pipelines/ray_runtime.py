"""Joining Ray: an existing cluster when there is one (as under `ray submit` / `ray job submit`),
otherwise a local instance on this machine."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Initialise Ray once per process; a no-op when it is already initialised (e.g. in tests)."""
    import ray

    if ray.is_initialized():
        return
    # A local ray.init() and a later `ray start` must agree on authentication, or job submission
    # fails with an authentication error; local instances here bind to 127.0.0.1 only.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address is None and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
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
