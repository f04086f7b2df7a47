"""A real two-node Ray cluster on this machine (two raylets on 127.0.0.1, one CPU each): prepare runs its
tasks on both nodes and gives the local dataset; pretraining places one Ray Train worker on each node."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose
from test_ingest_scale import ROOT, assert_same, prepared

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray cluster at a time (conftest)


@pytest.fixture(scope="module")
def cluster():
    from loglm.ray_cluster import LocalHead, LocalNode

    head = LocalHead(num_cpus=1, multi_node=True)
    try:
        node = LocalNode(head.address, num_cpus=1)
    except BaseException:
        head.stop()
        raise
    try:
        yield head.address
    finally:
        node.stop()
        head.stop()


def test_prepare_and_pretrain_across_two_nodes(cluster, tmp_path):
    from loglm.synth import generate
    from loglm.training.pretrain import run as pretrain

    corpus = tmp_path / "hdfs.log"
    generate(corpus, 12_000, ROOT / "data/hdfs_loglead/HDFS_loglead_early.log.gz",
             ROOT / "data/hdfs_loglead/anomalous_block_ids.txt", anomaly_rate=0.05, seed=9)
    local = prepared(tmp_path / "local", corpus, "workers=1")
    on_ray = prepared(tmp_path / "ray", corpus, "backend=ray", f"ray.address={cluster}", "ray.lines_per_task=1500")
    assert on_ray["summary"]["tasks"] >= 8 and on_ray["summary"]["nodes"] == 2  # tasks ran on both nodes
    assert_same(local, on_ray)
    assert on_ray["summary"]["data_sha256"] == local["summary"]["data_sha256"]

    data = ["data=hdfs_loglead", f"data.inputs=[{corpus}]", f"data.anomalous_ids={corpus}.anomalous_ids.txt",
            f"paths.root={tmp_path / 'ray'}", "ray.lines_per_task=1500"]
    result = pretrain(compose("pretrain", data + [
        "launcher=ray", f"ray.address={cluster}", "ray.num_workers=2", "ray.placement_strategy=SPREAD",
        "strategy=ddp", "trainer.max_epochs=1", "trainer.batch_size=16", "model.d_model=32", "model.d_ff=64",
        "model.n_layers=1", "trainer.progress_bar=false", "detect.small_validation=warn"]))
    assert result["worker_group_starts"] == 1 and len(result["worker_nodes"]) == 2  # one worker per node
    assert Path(result["model_dir"]).is_dir()
