"""Submit a pretraining job to a running Ray cluster through the Ray Jobs API, follow its logs, and report
the job id and the MLflow run it created.

The job runs ``python -m pipelines.pretrain <overrides> launcher=ray ray.address=auto`` (after
``python -m pipelines.prepare <overrides> backend=ray`` with ``prepare=True``) on the cluster with
this checkout as its ``working_dir`` (so the code the cluster runs is the code you have), the package
itself coming from the cluster's image (``cluster/Dockerfile``) or from ``pip`` in the runtime env.
"""

from __future__ import annotations

import re
import shlex
import sys
import time

from loglm.config import PROJECT_ROOT

# never shipped to the cluster: environments, run outputs, VCS data, build caches
EXCLUDES = [".venv", "runs", ".git", "reports", "outputs", ".pytest_cache", ".hypothesis", "**/__pycache__",
            "*.onnx", "*.safetensors", "*.ckpt"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
RUN_ID = re.compile(r'"run_id":\s*"([0-9a-f]{32})"')


def entrypoint(overrides: list[str], prepare: bool = False) -> str:
    """The job's command: pretraining on the cluster's Ray, after ingest on Ray Data when ``prepare``."""
    extra = [] if any(o.startswith("ray.address=") for o in overrides) else ["ray.address=auto"]
    train = [] if any(o.startswith("launcher=") for o in overrides) else ["launcher=ray"]
    quoted = [shlex.quote(o) for o in [*overrides, *extra]]
    command = " ".join(["python", "-m", "pipelines.pretrain", *quoted, *train])
    if prepare:
        backend = [] if any(o.startswith("backend=") for o in overrides) else ["backend=ray"]
        command = " ".join(["python", "-m", "pipelines.prepare", *quoted, *backend]) + " && " + command
    return command


def submit(address: str, overrides: list[str], follow: bool = True, prepare: bool = False,
           pip: list[str] | None = None, env: dict[str, str] | None = None, timeout_s: float | None = None,
           out=sys.stdout) -> dict:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    runtime_env: dict = {"working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES}
    if pip:
        runtime_env["pip"] = list(pip)
    if env:
        runtime_env["env_vars"] = dict(env)
    command = entrypoint(overrides, prepare)
    job_id = client.submit_job(entrypoint=command, runtime_env=runtime_env,
                               metadata={"submitted_by": "loglm.launch", "stage": "pretrain"})
    print(f"submitted Ray job {job_id} to {address}: {command}", file=out, flush=True)
    result = {"job_id": job_id, "address": address, "entrypoint": command, "status": "PENDING", "run_id": None}
    if not follow:
        return result
    seen, start = 0, time.monotonic()
    while True:
        status = client.get_job_status(job_id)
        status = str(getattr(status, "value", status))
        logs = client.get_job_logs(job_id)
        if len(logs) > seen:
            out.write(logs[seen:])
            out.flush()
            seen = len(logs)
        if status in TERMINAL:
            break
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            client.stop_job(job_id)
            status = "STOPPED (timeout)"
            break
        time.sleep(1.0)
    ids = RUN_ID.findall(logs)
    result.update(status=status, run_id=ids[-1] if ids else None)
    print(f"Ray job {job_id}: {status}; MLflow run {result['run_id']}", file=out, flush=True)
    return result
