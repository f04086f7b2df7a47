"""python -m pipelines.evaluate data=hdfs_sample ckpt=<model dir|run id>  — test metrics, logged to MLflow."""

from pipelines._main import entry


def _run(cfg):
    from loglm.evaluation import run

    result = run(cfg)
    result.pop("scores", None)
    result.pop("table", None)
    return result


if __name__ == "__main__":
    entry("evaluate", _run)()
