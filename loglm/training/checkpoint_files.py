"""A checkpoint file and its ``<ckpt>.sha256.json`` sidecar: checked before anything loads it.

Apart from the Lightning plugin that writes them (:mod:`loglm.training.checkpoint_io`): a job checks the
checkpoint it resumes from, and its data, before Lightning loads (about 10 s of CPU), so a mistake is
reported at once.
"""

from __future__ import annotations

import json
from pathlib import Path

from loglm.artifacts import sha256_file


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def verify_checkpoint(path: Path) -> None:
    meta_path = sidecar(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not meta_path.is_file():
        raise ValueError(f"checkpoint {path} has no {meta_path.name}: refusing an unverified checkpoint")
    meta = json.loads(meta_path.read_text())
    if path.stat().st_size != meta["bytes"] or sha256_file(path) != meta["sha256"]:
        raise ValueError(f"checkpoint {path} does not match its sha256 ({meta_path.name}): truncated or tampered")
