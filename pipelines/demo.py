"""python -m pipelines.demo  — the whole job on the shipped HDFS samples (what `make demo` runs)."""

from pipelines._main import entry


def _run(cfg):
    from loglm.demo import run

    return run(cfg)


if __name__ == "__main__":
    entry("demo", _run, show=lambda result: None)()
