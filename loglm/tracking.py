"""MLflow: a local sqlite store by default, artifacts under the project's run folder, one run per job."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path

from loglm.config import flatten, to_plain

SECRET_KEY = re.compile(r"(pass(word)?|secret|token|api[_-]?key|credential|private[_-]?key)", re.I)


def tracking_uri(cfg) -> str:
    if cfg.logger.tracking_uri:
        return cfg.logger.tracking_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(cfg.paths.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def ensure_experiment(cfg, name: str) -> str:
    """Experiment id; a new experiment stores artifacts under <paths.root>/mlartifacts (not the cwd).

    Uses an explicit client: ``mlflow.set_tracking_uri`` would also export MLFLOW_TRACKING_URI to every
    child process, silently redirecting their runs.
    """
    import mlflow

    uri = tracking_uri(cfg)
    with store_init_lock(uri):
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if not uri.startswith("http"):
            location = (Path(cfg.paths.root).resolve() / "mlartifacts" / name).as_uri()
        return client.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def store_init_lock(uri: str):
    """For a local sqlite store, an exclusive file lock (``<db>.lock``) while the store is first opened and
    the experiment created: two jobs started together on a fresh ``paths.root`` otherwise both create the
    schema and one fails (``duplicate column name``), or both create the experiment."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(uri[len("sqlite:///"):] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def start_logger_run(logger) -> str:
    """Start (or reopen) a Lightning MLFlowLogger run and return its id.

    Lightning calls ``mlflow.set_tracking_uri``, which exports MLFLOW_TRACKING_URI to this process and every
    child; restore the environment so later jobs with another store are not redirected.
    """
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        return logger.run_id
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


# column maps name input fields, not credentials: a JSON field called "token" is not a secret
NOT_SECRET_PREFIXES = ("data.fields.", "data.entity_fields.")


def is_secret_key(path: str) -> bool:
    """A dotted config path whose last part looks like a credential (password, secret, token, api key...)."""
    return not path.startswith(NOT_SECRET_PREFIXES) and bool(SECRET_KEY.search(path.split(".")[-1]))


def redacted(tree, prefix: str = ""):
    """A plain config tree with every secret-named value replaced by ``***`` (config.yaml, bundles)."""
    if isinstance(tree, dict):
        return {k: ("***" if is_secret_key(f"{prefix}{k}") and not isinstance(v, dict | list) and v is not None
                    else redacted(v, f"{prefix}{k}.")) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redacted(v, prefix) for v in tree]
    return tree


def loggable_params(cfg) -> dict[str, str]:
    """The resolved config, flattened, with anything that looks like a secret scrubbed."""
    out = {}
    for k, v in flatten(to_plain(cfg)).items():
        out[k] = "***" if is_secret_key(k) else str(v)[:500]
    return out


def metric_name(name: str) -> str:
    """``name`` with every character MLflow refuses in a metric name (say, parentheses in an attack class)
    written as ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_yaml(cfg) -> bytes:
    """The config as written next to a model (config.yaml, copied into bundles): secrets as ``***``."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(redacted(to_plain(cfg)))).encode()


def run_tags(cfg, extra: dict | None = None) -> dict[str, str]:
    tags = {"git_commit": git_commit(), "seed": str(cfg.trainer.seed), "dataset": cfg.data.name}
    tags.update({k: ("***" if is_secret_key(k) else str(v)) for k, v in (cfg.logger.tags or {}).items()})
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags


def mlflow_logger(**kwargs):
    """Lightning's MLFlowLogger whose writes are never cut by Ctrl-C / SIGTERM: a stop that lands inside one
    waits until it is done (a cut SQLAlchemy transaction left the sqlite store locked, so the run could
    not be marked KILLED)."""
    from lightning.pytorch.loggers import MLFlowLogger

    from loglm.signals import deferred_signals

    class SignalSafeMLFlowLogger(MLFlowLogger):
        def log_metrics(self, *args, **kw):
            with deferred_signals():
                return super().log_metrics(*args, **kw)

        def log_hyperparams(self, *args, **kw):
            with deferred_signals():
                return super().log_hyperparams(*args, **kw)

        def finalize(self, *args, **kw):
            with deferred_signals():
                return super().finalize(*args, **kw)

    return SignalSafeMLFlowLogger(**kwargs)
