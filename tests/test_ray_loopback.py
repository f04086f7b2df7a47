"""A local Ray that LogLM starts (prepare backend=ray, launcher=ray without ray.address) listens on loopback
only: every listening socket of this process and of every process it started is on 127.0.0.1."""

from __future__ import annotations

import ipaddress

import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray cluster at a time (conftest)


def listeners(procs) -> list[tuple[int, str, str, int]]:
    out = []
    for p in procs:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.append((p.pid, p.name(), c.laddr.ip, c.laddr.port))
        except psutil.Error:  # a worker that exited meanwhile
            pass
    return out


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def test_local_ray_binds_only_loopback_and_is_stopped_after():
    from omegaconf import OmegaConf

    from loglm.ray_cluster import ray_session

    me = psutil.Process()
    # what this process had already started (e.g. multiprocessing's resource tracker, which lives as long as
    # its parent) is not Ray's to stop
    before = {p.pid for p in me.children(recursive=True)}
    with ray_session(OmegaConf.create({"address": None, "num_cpus": 2})) as ray:
        @ray.remote
        def square(x):
            return x * x

        assert ray.get([square.remote(i) for i in range(8)]) == [i * i for i in range(8)]  # workers are up
        tree = [p for p in me.children(recursive=True) if p.pid not in before]
        found = listeners([me, *tree])
        names = {name for _, name, _, _ in found}
        assert "gcs_server" in names and "raylet" in names, found  # the check sees Ray's own listeners
        exposed = [x for x in found if not is_loopback(x[2])]
        assert not exposed, f"Ray listens beyond loopback: {exposed}"
    gone, alive = psutil.wait_procs(tree, timeout=30)
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], alive
