"""MLflow: a local sqlite store by default, artifacts under the project's run folder, one run per job."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path

from loglm.config import flatten, to_plain

# "token" as a credential (hf_token, auth_token), not a count of tokens (detect.max_batch_tokens)
SECRET_KEY = re.compile(r"(pass(word)?|secret|token(?!s)|api[_-]?key|credential|private[_-]?key)", re.I)


def tracking_uri(cfg) -> str:
    if cfg.logger.tracking_uri:
        return cfg.logger.tracking_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(cfg.paths.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


class MLflowTracking:
    """``logger=mlflow`` (the default): every job is an MLflow run in the store of :func:`tracking_uri`."""

    enabled = True

    def client(self, cfg):
        import mlflow

        return mlflow.MlflowClient(tracking_uri(cfg))

    def job_logger(self, cfg, experiment: str, run_name: str, run_id: str | None = None, tags: dict | None = None):
        return mlflow_logger(experiment_name=experiment, tracking_uri=tracking_uri(cfg), run_name=run_name,
                             run_id=run_id, tags=tags)


class NoTracking:
    """``logger=none``: nothing is sent anywhere; a job still gets a (random) run id."""

    enabled = False

    def client(self, cfg):
        return NullClient()

    def job_logger(self, cfg, experiment: str, run_name: str, run_id: str | None = None, tags: dict | None = None):
        return NullJobLogger(run_id)


def backend(cfg):
    """The tracking backend ``logger._target_`` names (checked when the config is composed)."""
    from loglm.config import _importable

    return _importable(cfg.logger._target_)()


def enabled(cfg) -> bool:
    """False with ``logger=none``: nothing is sent to MLflow."""
    return bool(backend(cfg).enabled)


class _Stub:
    """Answers any attribute with itself and any call with itself (``client.get_run(r).info.status`` ...)."""

    def __init__(self, **known):
        self.__dict__.update(known)

    def __getattr__(self, name):
        return _Stub()

    def __call__(self, *args, **kwargs):
        return _Stub()


class NullClient:
    """What a job talks to with ``logger=none``: MlflowClient's calls, all no-ops; a new run gets a random id."""

    def create_run(self, *args, **kwargs):
        import uuid

        return _Stub(info=_Stub(run_id=uuid.uuid4().hex, status="RUNNING"))

    def get_run(self, run_id):
        return _Stub(info=_Stub(run_id=run_id, status="FINISHED", artifact_uri=""), data=_Stub(metrics={}, params={}, tags={}))

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def client(cfg):
    """The tracking client of this job's config: MLflow's, or a no-op one with ``logger=none``."""
    return backend(cfg).client(cfg)


def ensure_experiment(cfg, name: str) -> str:
    """Experiment id; a new experiment stores artifacts under <paths.root>/mlartifacts (not the cwd).

    Uses an explicit client: ``mlflow.set_tracking_uri`` would also export MLFLOW_TRACKING_URI to every
    child process, silently redirecting their runs.
    """
    import mlflow

    if not enabled(cfg):
        return "none"
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

    db = Path(uri[len("sqlite:///"):])
    lock = Path(str(db) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if not db.exists():
                seed_sqlite_store(db)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def store_template_path() -> Path:
    """Where this machine keeps the empty store of the installed MLflow version (``$XDG_CACHE_HOME/loglm``,
    by default ``~/.cache/loglm``); its name carries the version, so an upgrade builds a new one."""
    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loglm"
    return cache / f"mlflow-{mlflow.__version__}-empty.db"


def seed_sqlite_store(db: Path) -> bool:
    """Start a new local store as a copy of an empty one of the installed MLflow version: MLflow otherwise
    replays its schema migrations for every new ``paths.root`` (about 4 s here, measured per store in the
    test suite). The empty store is built once per machine by MLflow itself, then its experiments are
    removed, so MLflow creates the Default one on first open with the location it would give it in a store
    it made. Returns False, leaving MLflow to create the store, when the cache cannot be used."""
    import sqlite3
    import uuid

    import mlflow

    template = store_template_path()
    tmp = None
    try:
        if not template.is_file():
            template.parent.mkdir(parents=True, exist_ok=True)
            tmp = template.with_name(f".{template.name}.{uuid.uuid4().hex}")
            mlflow.MlflowClient(f"sqlite:///{tmp}").search_experiments()  # MLflow builds and migrates its schema
            with contextlib.closing(sqlite3.connect(tmp)) as con, con:
                con.execute("DELETE FROM experiment_tags")
                con.execute("DELETE FROM experiments")
            os.replace(tmp, template)  # atomic: another job sees no template or a whole one
        tmp = db.with_name(f".{db.name}.{uuid.uuid4().hex}")
        tmp.write_bytes(template.read_bytes())
        os.replace(tmp, db)
        return True
    except Exception:  # any failure falls back to what MLflow does without a copy
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        return False


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


class NullJobLogger:
    """The job's logger with ``logger=none``: a run id (the one given, or a random one) and nothing else."""

    def __init__(self, run_id: str | None = None):
        import uuid

        self.run_id = run_id or uuid.uuid4().hex

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass


def job_logger(cfg, experiment: str, run_name: str, run_id: str | None = None, tags: dict | None = None):
    """A job's Lightning MLFlowLogger, or a NullJobLogger with ``logger=none``."""
    return backend(cfg).job_logger(cfg, experiment, run_name, run_id, tags)


def lightning_logger(cfg, run_id: str, experiment: str, stage: str):
    """What ``Trainer(logger=...)`` gets in a training process: the run's MLFlowLogger, or False."""
    b = backend(cfg)
    return b.job_logger(cfg, experiment, default_run_name(cfg, stage), run_id) if b.enabled else False


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


def log_dataset_input(client, run_id: str, data_dir: str | Path, summary: dict, context: str) -> None:
    """Record the prepared dataset a run read as an MLflow dataset input (the run page's "Datasets used"):
    name, the digest of every token shard plus the vocabulary, where it lies, and its counts per split."""
    import json

    if isinstance(client, NullClient):
        return
    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = {k: summary[k] for k in ("events", "sessions", "sessions_by_split", "vocab_size") if k in summary}
    ds = Dataset(name=str(summary.get("dataset") or Path(data_dir).name), digest=str(summary["data_sha256"])[:36],
                 source_type="local", source=json.dumps({"uri": Path(data_dir).resolve().as_uri()}),
                 profile=json.dumps(profile))
    client.log_inputs(run_id, [DatasetInput(ds, [InputTag("mlflow.data.context", context)])])


def log_model_folder(client, run_id: str, model_dir: str | Path, name: str, params: dict | None = None,
                     step: int = 0) -> str:
    """Register ``model_dir`` (safetensors weights, vocabulary, calibration, config) as an MLflow logged model
    produced by ``run_id`` (the run page's "Logged models"; the experiment's Models tab); returns its id.
    Plain files, nothing pickled: load it with ``loglm.model.store.load_model`` on the downloaded folder."""
    if isinstance(client, NullClient):
        return ""
    from mlflow.entities import LoggedModelOutput

    exp_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(exp_id, name=name, source_run_id=run_id, model_type="loglm",
                                       params={k: str(v)[:500] for k, v in (params or {}).items()})
    try:
        client.log_model_artifacts(model.model_id, str(model_dir))
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    client.set_tag(run_id, "logged_model_id", model.model_id)
    return model.model_id


def default_run_name(cfg, stage: str) -> str:
    """``logger.run_name`` when set, else ``<stage>-<dataset>`` (runs on custom data get a readable name)."""
    return cfg.logger.run_name or f"{stage}-{cfg.data.name}"


@contextlib.contextmanager
def run_outcome(client, run_id: str):
    """The body's outcome as the run's status: FINISHED when it returns, KILLED on Ctrl-C / SIGTERM, FAILED
    (with the error as the ``error`` tag) on any other exception; a failed job never shows as Finished."""
    try:
        yield
    except BaseException as e:
        stop = isinstance(e, KeyboardInterrupt) or (isinstance(e, SystemExit) and e.code not in (0, None))
        try:
            client.set_tag(run_id, "error", f"{type(e).__name__}: {e}"[:5000])
            client.set_terminated(run_id, "KILLED" if stop else "FAILED")
        except Exception as bookkeeping:  # report the original error, not the bookkeeping one
            print(f"loglm: could not mark MLflow run {run_id} failed: {bookkeeping}", flush=True)
        raise
    client.set_terminated(run_id, "FINISHED")
