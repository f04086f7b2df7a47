"""python -m pipelines.evaluate data=hdfs_sample ckpt=<model dir|run id>  — test metrics, logged to MLflow.

python -m pipelines.evaluate dataset=hdfs|bgl|zeek_ctu  — the protocol's suite: LogLM beside DeepLog, PCA
and IsolationForest on the same split, one MLflow parent run, reports/eval_<protocol>.md.
"""

from pipelines._main import entry


def _run(cfg):
    if cfg.suite.enabled:
        from loglm.evaluation_suite import run as suite

        result = suite(cfg)
        for model in result["models"].values():
            model.pop("metrics", None)
        return result
    from loglm.evaluation import run

    result = run(cfg)
    result.pop("scores", None)
    result.pop("table", None)
    return result


if __name__ == "__main__":
    entry("evaluate", _run)()
