"""python -m pipelines.tune ckpt=<model> 'inputs=[new normal traffic]' [tune.feedback=...]  — tune, register a candidate."""

from pipelines._main import entry


def _run(cfg):
    from loglm.analyst.tune import run

    return run(cfg)


if __name__ == "__main__":
    entry("tune", _run)()
