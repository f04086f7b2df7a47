"""Lightning checkpoint I/O that is atomic, sha256-verified and never unpickles code (the files and
their check: :mod:`loglm.training.checkpoint_files`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from loglm.artifacts import atomic_write_json, sha256_file
from loglm.signals import deferred_signals
from loglm.training.checkpoint_files import sidecar, verify_checkpoint


class VerifiedCheckpointIO(TorchCheckpointIO):
    """Writes ``<ckpt>`` via temporary file + rename plus ``<ckpt>.sha256.json``; loads only verified files,
    with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        # a checkpoint being written is finished first, and it and its digest change together: Ctrl-C / SIGTERM
        # wait until both are in place (a stop raised inside torch.save broke its zip writer, "unexpected pos",
        # and surfaced as that error instead of a stop; the watchdog still ends a write that hangs)
        with deferred_signals():
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            digest = sha256_file(tmp)
            os.replace(tmp, path)
            atomic_write_json(sidecar(path), {"sha256": digest, "bytes": path.stat().st_size})

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        verify_checkpoint(Path(path))
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        sidecar(Path(path)).unlink(missing_ok=True)
