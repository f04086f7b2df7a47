"""Artifact files: atomic writes and sha256 manifests checked on load."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

MANIFEST = "MANIFEST.json"


def atomic_write_bytes(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file.  ``data``
    may be an iterable of chunks, written as they come (a file bigger than memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in (data,) if isinstance(data, bytes | bytearray) else data:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: outputs get the mode any new file would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class ParquetAppender:
    """A Parquet file written a table at a time (a row group each) into a hidden file beside ``path`` and
    renamed into place by :meth:`close`; :meth:`abort` removes it.  Without ``schema`` nothing is written
    before the first table (and closing with none refuses); with it, an empty file is a valid result."""

    def __init__(self, path: Path, schema=None):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.writer, self.rows = None, 0
        if schema is not None:
            self._open(schema)

    def _open(self, schema) -> None:
        import pyarrow.parquet as pq

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(self.tmp, schema)

    def write(self, table) -> None:
        if self.writer is None:
            self._open(table.schema)
        self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> Path:
        if self.writer is None:
            raise ValueError(f"nothing to write: {self.path} not written")
        self.writer.close()
        self.tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        """Drop what was written (a stopped or failed run): the hidden file goes, ``path`` is untouched."""
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, extra: dict | None = None) -> dict:
    """Record sha256 and size of every file in ``folder`` (except the manifest itself)."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.startswith("."):
            files[p.relative_to(folder).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {"files": files, **(extra or {})}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def verify_manifest(folder: Path, required: tuple[str, ...] = ()) -> dict:
    """Refuse a folder whose files are missing, truncated or altered, naming the file."""
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise ValueError(f"{folder}: no {MANIFEST}; not a complete LogLM artifact")
    manifest = json.loads(mpath.read_text())
    for name in required:
        if name not in manifest["files"]:
            raise ValueError(f"{folder}: required file {name} is not in the manifest")
    for name, meta in manifest["files"].items():
        if not inside(folder, name):
            raise ValueError(f"{folder}: manifest entry {name!r} points outside the folder; refusing it")
        p = folder / name
        if not p.is_file():
            raise ValueError(f"{folder}: file {name} listed in the manifest is missing")
        if p.stat().st_size != meta["bytes"]:
            raise ValueError(f"{folder}: file {name} has {p.stat().st_size} bytes, manifest says {meta['bytes']} (truncated?)")
        if sha256_file(p) != meta["sha256"]:
            raise ValueError(f"{folder}: file {name} does not match its sha256 in the manifest (tampered?)")
    return manifest


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _started_after(pid: int, when: float) -> bool:
    """Process ``pid`` started after ``when`` (epoch seconds), so it cannot have written anything then: its
    PID was reused.  False when that cannot be told (the process is gone or not ours to inspect)."""
    import psutil

    try:
        return psutil.Process(pid).create_time() > when + 1.0  # 1 s: the two clocks' granularity
    except (psutil.Error, OSError):
        return False


def work_folder(out: Path, kind: str) -> Path:
    """The folder a step writes beside ``out`` before :func:`swap_in`: ``.NAME.KIND-HOST-PID``, emptied.

    A step killed outright (SIGKILL, the OOM killer, a machine shut down) cannot remove its own: such
    folders (gigabytes of spill for a large prepare) would stay beside ``out`` for ever.  So the next run
    removes every ``.NAME.KIND-*`` folder left by a process of this host that is gone, and says so; one whose
    process still runs (another run writing the same output) or that another host wrote is left, with a
    warning.  A folder whose PID now belongs to a process that started after the folder was last changed was
    left by an earlier process with that PID (PIDs are reused, soon in a container) and is removed too.
    Folders named before the host was part of the name (``.NAME.KIND-PID``) count as this host's."""
    import shutil
    import socket
    import sys

    host = socket.gethostname().replace("/", "_")
    mine = out.with_name(f".{out.name}.{kind}-{host}-{os.getpid()}")
    prefix = f".{out.name}.{kind}-"
    for other in sorted(out.parent.glob(f"{prefix}*")) if out.parent.is_dir() else ():
        if other == mine or not other.is_dir():
            continue
        tail = other.name[len(prefix):]
        owner, _, pid = tail.rpartition("-")
        if not pid.isdigit():
            continue
        if owner not in ("", host):
            print(f"loglm: warning: {other} was left by a process on host {owner!r}; not removed (it may still "
                  "be running there)", file=sys.stderr, flush=True)
        elif _pid_alive(int(pid)) and not _started_after(int(pid), other.stat().st_mtime):
            print(f"loglm: warning: {other} belongs to process {pid}, which is still running: another run may be "
                  f"writing {out} at the same time; left as it is", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(other, ignore_errors=True)
            print(f"loglm: removed {other}, the partial folder of process {pid}, which ended without cleaning up "
                  "(killed outright?; its PID may now be another process's, started later)", file=sys.stderr,
                  flush=True)
    shutil.rmtree(mine, ignore_errors=True)
    return mine


def swap_in(new: Path, out: Path) -> None:
    """Put the finished folder ``new`` at ``out`` (same parent): an existing ``out`` is moved aside, ``new``
    renamed in, and only then the old one removed; if the rename fails the old folder is put back.  So a
    step that fails while writing (a full disk, an interrupted job) never leaves a half-written folder where
    a good one was."""
    import shutil

    if not out.exists():
        new.rename(out)
        return
    old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old)


def inside(folder: Path, name: str) -> bool:
    """``name`` is a relative path that stays within ``folder`` (no absolute path, no ``..``, no link out)."""
    p = Path(name)
    if p.is_absolute() or ".." in p.parts:
        return False
    try:
        return (folder / p).resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def check_calibration(cal: dict, where: Path) -> dict:
    """A calibration a detector may use: a finite threshold and a target FPR in (0, 1) (the manifest only
    proves the file is the one written; whoever rewrites both could set a NaN threshold)."""
    import math

    thr, target = cal.get("threshold"), cal.get("target_fpr")
    if not isinstance(thr, int | float) or not math.isfinite(thr):
        raise ValueError(f"{where}: calibration threshold {thr!r} is not a finite number; recalibrate the model")
    if not isinstance(target, int | float) or not 0 < target < 1:
        raise ValueError(f"{where}: calibration target_fpr {target!r} is not in (0, 1)")
    return cal


def check_vocab_size(vocab_size: int, expected: int, where: Path) -> None:
    """The vocabulary must be the one the model's embeddings were built for."""
    if vocab_size != expected:
        raise ValueError(f"{where}: vocab.json has {vocab_size} tokens but the model was built for {expected}; "
                         "the vocabulary does not belong to this model")
