"""DeepSpeed ZeRO checkpoints (sharded across ranks) -> one fp32 state dict.

Distillation, export and detection read only safetensors model folders, which training writes at its best
epoch from the optimizer's fp32 weights (loglm.training.callbacks.trained_weights, ZeRO-3 included); a ZeRO-2/3
checkpoint written by Lightning's DeepSpeed strategy (``<name>.ckpt/`` with ``latest`` and per-rank shards) is
gathered here, to read or check what a run's checkpoint holds.
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
