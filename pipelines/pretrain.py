"""python -m pipelines.pretrain experiment=hdfs_demo  — masked-event pretraining, tracked in MLflow."""

from pipelines._main import entry


def _run(cfg):
    from loglm.training.pretrain import run

    return run(cfg)


if __name__ == "__main__":
    entry("pretrain", _run)()
