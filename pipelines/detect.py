"""python -m pipelines.detect ckpt=<model dir|run id> inputs=[file,...]  — alerts as JSON lines."""

from pipelines._main import entry


def _run(cfg):
    from loglm.detect.detector import run

    return run(cfg)


if __name__ == "__main__":
    entry("detect", _run)()
