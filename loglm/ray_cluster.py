"""Joining or starting Ray: a private local instance bound to 127.0.0.1, or an existing cluster by address.

A local instance is a private head started with ``ray start --head --block`` on loopback and joined by
address, then stopped by its PID.  An in-process ``ray.init()`` is not used: it leaves the GCS, the raylet,
the dashboard agent and the workers listening on every interface with authentication off (measured with
``ss -ltnp``; docs/security.md), while ``ray start --node-ip-address=127.0.0.1`` binds each to loopback.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

LOOPBACK = "127.0.0.1"


def local_ray_env() -> None:
    """Environment Ray needs on a single machine: stay on loopback, no token auth, no usage stats."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # lets Ray bind 127.0.0.1 only
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class LocalHead:
    """A private single-node Ray head on 127.0.0.1 (``ray start --head --block``), stopped by its PID."""

    def __init__(self, num_cpus: int | None = None, start_timeout_s: float = 90.0, multi_node: bool = False):
        """``multi_node``: other raylets on this machine may join (LocalNode); every process still binds 127.0.0.1."""
        local_ray_env()
        # Ray's socket paths must stay under 107 bytes: a short folder under /tmp
        self.temp_dir = tempfile.mkdtemp(prefix="loglm-ray-", dir="/tmp")
        self.port = free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        ray_bin = Path(sys.executable).parent / "ray"
        cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", "--head", "--block",
               f"--port={self.port}", f"--node-ip-address={LOOPBACK}", "--include-dashboard=false",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--temp-dir={self.temp_dir}", "--disable-usage-stats"]
        if num_cpus:
            cmd.append(f"--num-cpus={num_cpus}")
        # Ray refuses a second node on one machine unless told this is a cluster
        self._start(cmd, "head.log", start_timeout_s, {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"} if multi_node else {})

    def _start(self, cmd: list[str], log_name: str, timeout_s: float, env_extra: dict) -> None:
        """``ray start ... --block`` in its own process group, logged to ``log_name``, until it is ready."""
        self.log = Path(self.temp_dir) / log_name
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               **env_extra}
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"local Ray head exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=1):
                    pass
                if b"Ray runtime started" in self.log.read_bytes():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"local Ray head did not come up within {timeout_s:.0f} s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to `ray start --block` stops the processes of its cluster; SIGKILL the group if it hangs
        (after ``timeout_s``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)  # measured 3 s when idle; a head still draining Ray Data took 30
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class LocalNode(LocalHead):
    """A second raylet on this machine joining ``address`` (``ray start --address --block``): with a LocalHead,
    a two-node Ray cluster on 127.0.0.1 (tasks and Train workers placed on either node); stopped by its PID."""

    def __init__(self, address: str, num_cpus: int | None = None, start_timeout_s: float = 90.0):
        local_ray_env()
        self.temp_dir = tempfile.mkdtemp(prefix="loglm-raynode-", dir="/tmp")
        self.address = address
        ray_bin = Path(sys.executable).parent / "ray"
        cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", f"--address={address}", "--block",
               f"--node-ip-address={LOOPBACK}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--metrics-export-port={free_port()}", "--disable-usage-stats"]
        if num_cpus:
            cmd.append(f"--num-cpus={num_cpus}")
        self._start(cmd, "node.log", start_timeout_s, {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"})

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Ray node exited with {self.proc.returncode}:\n{self._log_tail()}")
            if b"Ray runtime started" in self.log.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"Ray node did not join {self.address} within {timeout_s:.0f} s:\n{self._log_tail()}")


@contextmanager
def ray_session(ray_cfg):
    """``ray.init`` for the duration of a job; a local head this call started is stopped after it."""
    if not ray_cfg.address:
        local_ray_env()  # before `import ray`: it reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import
    import ray

    if ray.is_initialized():
        yield ray
        return
    if ray_cfg.address:
        ray.init(address=ray_cfg.address, logging_level="ERROR", log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()
        return
    from ray._private import ray_constants

    # if ray was imported before local_ray_env(), it would map 127.0.0.1 to this host's network address
    ray_constants.ENABLE_RAY_CLUSTER = False
    head = LocalHead(ray_cfg.num_cpus)
    try:
        ray.init(address=head.address, _node_ip_address=LOOPBACK, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}})
        try:
            yield ray
        finally:
            ray.shutdown()
    finally:
        head.stop()
