from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_HDFS = ROOT / "data" / "hdfs_sample" / "HDFS_20000.log.gz"
SHIPPED_ANOMALOUS = ROOT / "data" / "hdfs_sample" / "anomalous_block_ids.txt"
sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers share the cores: one intra-op thread each (and in the pipelines they start), not two
    # spinning threads per process (the serial suite's DeepLog test took 10x longer under two workers)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)


from loglm.config import compose  # noqa: E402,F401  (tests import it from here)

LONGEST_FIRST = ("ray", "test_e2e", "test_interrupt", "test_ingest_scale", "test_streaming", "test_launch", "test_export",
                 "test_analyst", "test_hostile_input", "test_pipeline", "test_security", "test_own_logs")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Under ``make test`` (pytest-xdist, ``--dist loadgroup``) a module's tests stay on one worker, so its
    module fixtures (a trained model, a demo run) are built once; tests that start Ray carry
    ``xdist_group("ray")`` and run one after another on one worker (two clusters' free-port picks and CPU
    reservations must not race)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    # the longest groups first (``--durations`` of the suite; make test passes --no-loadscope-reorder), so no
    # worker is left alone with a long one at the end; the others keep their collection order
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.get_closest_marker("xdist_group").args[0], len(rank)))


def pytest_configure(config):
    """Refuse a parallel run whose grouping would silently fail: on pytest 9.2 xdist's ``--dist loadgroup``
    ignores ``xdist_group`` (pytest-dev/pytest-xdist#1386), so Ray tests would race and module fixtures run twice."""
    from packaging.version import Version

    if getattr(config.option, "dist", "no") == "loadgroup" and Version(pytest.__version__) >= Version("9.2"):
        raise pytest.UsageError(f"pytest {pytest.__version__} breaks --dist loadgroup (pytest-dev/pytest-xdist#1386): "
                                "run `make setup` (pyproject.toml pins pytest<9.2) or TEST_JOBS=0")


def pytest_collection_finish(session):
    """The same failure seen from a worker, whatever the version: a test without its group suffix."""
    if getattr(session.config.option, "loadgroup", False):
        loose = [i.nodeid for i in session.items if "@" not in i.nodeid.rpartition("]")[2]]
        if loose:
            raise pytest.UsageError(f"pytest-xdist did not group {loose[0]} (and {len(loose) - 1} more)")


@pytest.fixture
def hdfs_head(tmp_path) -> Path:
    """The first 3,000 lines of the shipped real HDFS sample."""
    out = tmp_path / "hdfs_head.log"
    with gzip.open(SHIPPED_HDFS, "rt") as src, open(out, "w") as dst:
        for i, line in enumerate(src):
            if i >= 3000:
                break
            dst.write(line)
    return out


def sigterm_at(proc, marker: str, ready=None) -> str:
    """Wait for ``proc`` (stdout and stderr piped, text) to print ``marker``, check ``ready()`` (the state it
    should be in), send SIGTERM and return its stderr once it has exited; killed if it has not in 60 s."""
    import signal

    try:
        assert proc.stdout.readline().strip() == marker, proc.stderr.read()[-2000:]
        if ready is not None:
            assert ready()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return err
