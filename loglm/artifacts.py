"""Artifact files: atomic writes and sha256 manifests checked on load."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

MANIFEST = "MANIFEST.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        p = folder / name
        if not p.is_file():
            raise ValueError(f"{folder}: file {name} listed in the manifest is missing")
        if p.stat().st_size != meta["bytes"]:
            raise ValueError(f"{folder}: file {name} has {p.stat().st_size} bytes, manifest says {meta['bytes']} (truncated?)")
        if sha256_file(p) != meta["sha256"]:
            raise ValueError(f"{folder}: file {name} does not match its sha256 in the manifest (tampered?)")
    return manifest
