"""python -m pipelines.prepare data=hdfs_sample  — raw logs -> Parquet token shards + vocabulary."""

from pipelines._main import entry


def _run(cfg):
    from loglm.ingest.prepare import run

    return run(cfg)


if __name__ == "__main__":
    entry("prepare", _run)()
