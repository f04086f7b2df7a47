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
os.environ.pop("MLFLOW_TRACKING_URI", None)


from loglm.config import compose  # noqa: E402,F401  (tests import it from here)


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
