"""DeepSpeed ZeRO checkpoints (sharded across ranks) -> one fp32 safetensors model folder.

Distillation, export and detection read only safetensors model folders; a ZeRO-2/3 checkpoint written by
Lightning's DeepSpeed strategy (``<name>.ckpt/`` with ``latest`` and per-rank shards) is gathered here.
DeepSpeed's gatherer unpickles its own shard files: use it only on checkpoints your own job wrote.
"""

from __future__ import annotations

from pathlib import Path

PREFIXES = ("_forward_module.", "module.")


def zero_state_dict(checkpoint_dir: Path) -> dict:
    """The full fp32 state dict of the LightningModule saved in a ZeRO checkpoint folder."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / "latest").is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is not a DeepSpeed checkpoint folder (no 'latest' file)")
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir))
    out = {}
    for key, value in state.items():
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def zero_checkpoint_to_model(checkpoint_dir: Path, model_dir: Path, ctx, meta: dict | None = None) -> Path:
    """Write ``model.safetensors`` + ``model.json`` of the encoder in a ZeRO checkpoint into ``model_dir``."""
    import torch

    from loglm.model.encoder import EncoderConfig, LogEncoder
    from loglm.model.store import save_weights

    state = zero_state_dict(checkpoint_dir)
    encoder = LogEncoder(EncoderConfig(**ctx.encoder))
    missing, unexpected = encoder.load_state_dict(
        {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}, strict=False)
    if missing:
        raise ValueError(f"ZeRO checkpoint {checkpoint_dir} lacks encoder weights {missing[:5]}")
    center = state.get("center", torch.zeros(encoder.cfg.d_model))
    save_weights(Path(model_dir), encoder, center, {"run_id": ctx.run_id, "data_sha256": ctx.data_sha256,
                                                    "source": f"zero checkpoint {checkpoint_dir}", **(meta or {})})
    return Path(model_dir)
