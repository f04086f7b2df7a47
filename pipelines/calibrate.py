"""python -m pipelines.calibrate ckpt=<model dir|run id> inputs=[file,...] [detect.target_fpr=0.01] [out=DIR]
— the model's threshold set again from a new environment's own recent, unlabelled traffic (a new model folder)."""

from pipelines._main import entry


def _run(cfg):
    from loglm.detect.recalibrate import run

    return run(cfg)


if __name__ == "__main__":
    entry("calibrate", _run)()
