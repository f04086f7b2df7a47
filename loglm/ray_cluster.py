"""Joining or starting Ray: a private local instance bound to 127.0.0.1, or an existing cluster by address."""

from __future__ import annotations

import os
from contextlib import contextmanager


def local_ray_env() -> None:
    """Environment Ray needs on a single machine: stay on loopback, no token auth, no usage stats."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # lets Ray bind 127.0.0.1 only
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@contextmanager
def ray_session(ray_cfg):
    """``ray.init`` for the duration of a job; a local instance this call started is shut down after it."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    if ray_cfg.address:
        ray.init(address=ray_cfg.address, logging_level="ERROR", log_to_driver=False)
    else:
        local_ray_env()
        ray.init(num_cpus=ray_cfg.num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}})
    try:
        yield ray
    finally:
        ray.shutdown()
