"""python -m pipelines.prepare data=hdfs_sample  — raw logs -> Parquet token shards + vocabulary."""

import os

# before pyarrow loads: Arrow buffers from the system allocator (loglm.ingest.partitioned._system_allocator)
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from pipelines._main import entry  # noqa: E402


def _run(cfg):
    if cfg.preview is not None:
        from loglm.ingest.preview import preview

        return preview(cfg, cfg.preview)
    from loglm.ingest.prepare import run

    return run(cfg)


if __name__ == "__main__":
    entry("prepare", _run)()
