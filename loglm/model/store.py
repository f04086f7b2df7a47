"""Model directories: weights (safetensors), architecture, vocabulary, calibration, sha256 manifest.

A model directory describes itself, so detection needs nothing but the folder.  It is checked against
its manifest on load: a missing, truncated or altered file is refused with its name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from loglm.artifacts import (
    atomic_write_json,
    check_calibration,
    check_vocab_size,
    verify_manifest,
    write_manifest,
)
from loglm.detect.calibration_record import CALIBRATION  # noqa: F401  (one name for the file, re-exported)
from loglm.model.encoder import EncoderConfig, LogEncoder

WEIGHTS = "model.safetensors"
ARCH = "model.json"
VOCAB = "vocab.json"


def _fp32(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    return (t.float() if t.is_floating_point() else t).contiguous()


def save_weights(folder: Path, encoder: LogEncoder, center: torch.Tensor, meta: dict,
                 state: dict[str, torch.Tensor] | None = None) -> None:
    """``state``: the encoder's weights where they are not its module's own (DeepSpeed's fp32 master copy)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    # fp32 on disk whatever the training precision (bf16 under DeepSpeed): distill/export/CPU read it
    tensors = {f"encoder.{k}": _fp32(v) for k, v in (encoder.state_dict() if state is None else state).items()}
    tensors["center"] = _fp32(center)
    tmp = folder / f".{WEIGHTS}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "loglm-encoder/1"})
    tmp.replace(folder / WEIGHTS)
    atomic_write_json(folder / ARCH, {"encoder": encoder.cfg.to_dict(), **meta})


def finalize(folder: Path, vocab_path: Path, extra: dict | None = None) -> dict:
    """Copy the vocabulary in and seal the folder with a manifest."""
    if vocab_path.resolve() != (folder / VOCAB).resolve():
        shutil.copyfile(vocab_path, folder / VOCAB)
    return write_manifest(folder, extra)


class LoadedModel:
    def __init__(self, folder: Path, encoder: LogEncoder, center: torch.Tensor, meta: dict):
        from loglm.vocab import Vocabulary

        self.folder = folder
        self.encoder = encoder.eval()
        self.center = center
        self.meta = meta
        self.vocab = Vocabulary.load(folder / VOCAB)
        check_vocab_size(self.vocab.size, encoder.cfg.vocab_size, folder)
        cal = folder / CALIBRATION
        self.calibration = check_calibration(json.loads(cal.read_text()), cal) if cal.is_file() else None


def scoring_device(name: str) -> torch.device:
    """``detect.device``: "cpu", "cuda" / "cuda:N", or "auto" (the first CUDA GPU where there is one, else the
    CPU). A CUDA device asked for where none is usable is an error that says so."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"detect.device={name}: no CUDA GPU is usable here (torch {torch.__version__}); "
                         "use detect.device=cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"detect.device={name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def load_model(folder: str | Path, verify: bool = True, device: str = "cpu") -> LoadedModel:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model directory not found: {folder}")
    if verify:
        verify_manifest(folder, required=(WEIGHTS, ARCH, VOCAB))
    meta = json.loads((folder / ARCH).read_text())
    encoder = LogEncoder(EncoderConfig(**meta["encoder"]))
    tensors = load_file(str(folder / WEIGHTS))
    state = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    encoder.load_state_dict(state)
    dev = scoring_device(device)
    if dev.type == "cuda":
        # scores in full fp32, as on the CPU: a training process may have let fp32 matmuls use TF32
        torch.set_float32_matmul_precision("highest")
    return LoadedModel(folder, encoder.to(dev), tensors["center"], meta)


def resolve_model_dir(ckpt: str, root: str | Path) -> Path:
    """A model directory path, an MLflow run id whose run recorded one, or a registered version
    (``models:/loglm-detector@champion``: its bundle folder, which holds the weights too)."""
    if ckpt.startswith("models:/"):
        from loglm.analyst.registry import resolve

        return resolve(ckpt, root)
    p = Path(ckpt).expanduser()
    if p.is_dir():
        return p.resolve()
    candidate = Path(root).resolve() / "models" / ckpt
    if candidate.is_dir():
        return candidate
    raise FileNotFoundError(
        f"ckpt={ckpt!r} is neither a model directory nor a run id with a folder under {Path(root).resolve() / 'models'}")
