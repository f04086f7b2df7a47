"""prepare backend=ray (Ray Data on a real local 2-CPU Ray instance) gives exactly what backend=local gives;
that local Ray, which LogLM starts itself (prepare backend=ray, launcher=ray without ray.address), listens on
loopback only and is stopped after: every listening socket of this process and of every process it started
is on 127.0.0.1, and none of those processes outlives the session."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from conftest import compose
from flow_fixtures import write_zeek

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray cluster at a time (conftest)


@pytest.fixture(scope="module")
def ray_local():
    """The local Ray of this module's tests; at the end, every process Ray started is gone (checked here,
    after the session closes: a failure shows as this fixture's teardown error)."""
    from omegaconf import OmegaConf

    from loglm.ray_cluster import ray_session

    me = psutil.Process()
    # what this process had already started (e.g. multiprocessing's resource tracker, which lives as long as
    # its parent) is not Ray's to stop
    before = {p.pid for p in me.children(recursive=True)}
    with ray_session(OmegaConf.create({"address": None, "num_cpus": 2})) as ray:
        assert ray.cluster_resources().get("CPU") == 2
        yield ray, before
        started = [p for p in me.children(recursive=True) if p.pid not in before]
    assert started, "no process of Ray's was seen"
    gone, alive = psutil.wait_procs(started, timeout=30)
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], alive


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


def test_local_ray_binds_only_loopback(ray_local):
    ray, before = ray_local

    @ray.remote
    def square(x):
        return x * x

    assert ray.get([square.remote(i) for i in range(8)]) == [i * i for i in range(8)]  # workers are up
    me = psutil.Process()
    found = listeners([me, *[p for p in me.children(recursive=True) if p.pid not in before]])
    names = {name for _, name, _, _ in found}
    assert "gcs_server" in names and "raylet" in names, found  # the check sees Ray's own listeners
    exposed = [x for x in found if not is_loopback(x[2])]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"


def both_backends(tmp_path: Path, overrides: list[str]) -> dict:
    from loglm.ingest.prepare import run as prepare

    out = {}
    for backend in ("local", "ray"):
        cfg = compose("prepare", [f"paths.root={tmp_path / backend}", f"backend={backend}", "ray.lines_per_task=500",
                                  *overrides])
        summary = prepare(cfg)
        folder = Path(summary["path"])
        out[backend] = {
            "summary": summary,
            "sessions": pq.read_table(folder / "sessions").sort_by([("session_id", "ascending"), ("chunk", "ascending")]),
            "events": pq.read_table(folder / "events.parquet"),
            "rejected": (folder / "rejected.jsonl").read_text(),
            "vocab": (folder / "vocab.json").read_bytes(),
        }
    return out


def assert_same(out: dict) -> None:
    local, ray = out["local"], out["ray"]
    assert ray["summary"]["backend"] == "ray"
    assert local["summary"]["lines"] == ray["summary"]["lines"]
    assert local["summary"]["data_sha256"] == ray["summary"]["data_sha256"]
    assert local["sessions"].equals(ray["sessions"])  # same token ids, gaps, splits, labels, sessions
    assert local["events"].equals(ray["events"])
    assert local["rejected"] == ray["rejected"] and local["vocab"] == ray["vocab"]


def test_ray_data_ingest_of_raw_lines_with_bad_input_equals_local(ray_local, tmp_path, hdfs_head):
    lines = hdfs_head.read_bytes().split(b"\n")
    lines.insert(700, b"\xff\xfe not utf-8")
    lines.insert(1200, b"")
    lines.insert(1800, b"081109 203615 148 INFO dfs.DataNode: " + b"x" * 70_000)
    raw = tmp_path / "hdfs.log"
    raw.write_bytes(b"\n".join(lines))  # no newline after the last line
    cr = tmp_path / "hdfs_cr.log"  # the same records ending in bare CRs (one whole-file task on Ray)
    cr.write_bytes(b"\r".join(hdfs_head.read_bytes().split(b"\n")[:500]))
    out = both_backends(tmp_path, ["data=hdfs_raw", f"data.inputs=[{raw},{cr}]", "data.anomalous_ids=null"])
    assert_same(out)
    lines_acct = out["ray"]["summary"]["lines"]
    assert lines_acct["read"] == 3003 + 500 and lines_acct["rejected"] == 3 + lines_acct["rejected_by_reason"].get(
        "no block_id in line", 0)


def test_ray_data_ingest_of_zeek_flows_equals_local(ray_local, tmp_path):
    path = tmp_path / "conn.log.labeled"
    write_zeek(path, 1500, 200)  # several 500-line ranges: later ranges need the #fields header
    out = both_backends(tmp_path, ["data=zeek_ctu", f"data.inputs=[{path}]", "data.local_networks=[10.0.0.0/8]"])
    assert_same(out)
    assert out["ray"]["summary"]["lines"]["metadata"] == 9


def test_ray_data_ingest_of_damaged_files_equals_local(ray_local, tmp_path, hdfs_head):
    """A truncated and a corrupt .gz among good files: both backends reject them by name and go on."""
    from test_hostile_input import damaged_inputs

    paths, _ = damaged_inputs(tmp_path, hdfs_head)
    out = both_backends(tmp_path, ["data=hdfs_raw", f"data.inputs=[{','.join(paths)}]", "data.anomalous_ids=null"])
    assert_same(out)
    assert out["ray"]["rejected"].count("unreadable file") == 2
