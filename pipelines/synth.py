"""python -m pipelines.synth synth.lines=16000000 out=<file>  — a generated raw HDFS corpus of any size."""

from pipelines._main import entry


def _run(cfg):
    from loglm.synth import run

    return run(cfg)


if __name__ == "__main__":
    entry("synth", _run)()
