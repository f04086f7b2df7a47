"""python -m pipelines.distill teacher=<run id|model dir>  — a small CPU student from a pretrained teacher."""

from pipelines._main import entry


def _run(cfg):
    from loglm.training.distill import run

    return run(cfg)


if __name__ == "__main__":
    entry("distill", _run)()
