"""The torch backend of the numpy scoring core (loglm.detect.score_core): window scoring with a torch encoder."""

from __future__ import annotations

import numpy as np
import torch

from loglm.config import DetectConfig
from loglm.detect.score_core import (  # noqa: F401  (re-exported for callers of the torch path)
    SCORES,
    WindowScores,
    score_windows_rtd_with,
    score_windows_with,
    session_max,
)
from loglm.detect.thresholds import threshold_for_fpr  # noqa: F401


def on_device_of(encoder):
    """numpy arrays in, on the encoder's device (the CPU, or the GPU ``detect.device`` put it on)."""
    device = next(encoder.parameters()).device
    return lambda a: torch.from_numpy(a).to(device)


def torch_logp_fn(encoder):
    encoder.eval()
    t = on_device_of(encoder)

    @torch.inference_mode()
    def logp(tok: np.ndarray, gap: np.ndarray, pad: np.ndarray, target: np.ndarray) -> np.ndarray:
        hidden = encoder(t(tok), t(gap), t(pad))
        logits = encoder.logits(hidden[t(target)])
        return torch.log_softmax(logits.float(), -1).cpu().numpy()

    return logp


def torch_rtd_fn(encoder, k: int):
    encoder.eval()
    t = on_device_of(encoder)

    @torch.inference_mode()
    def fn(tok: np.ndarray, gap: np.ndarray, pad: np.ndarray):
        hidden = encoder(t(tok), t(gap), t(pad))
        logp = torch.log_softmax(encoder.logits(hidden).float(), -1)
        top_logp, top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
        return encoder.replaced_logit(hidden).float().cpu().numpy(), top.cpu().numpy(), top_logp.cpu().numpy()

    return fn


def score_windows(encoder, tokens: list[np.ndarray], gaps: list[np.ndarray], closed: list[bool],
                  cfg: DetectConfig) -> WindowScores:
    if cfg.scorer == "rtd":
        return score_windows_rtd_with(torch_rtd_fn(encoder, cfg.expected_per_event), tokens, gaps, closed, cfg)
    if cfg.scorer != "views":
        raise ValueError(f"detect.scorer must be 'views' or 'rtd', got {cfg.scorer!r}")
    return score_windows_with(torch_logp_fn(encoder), tokens, gaps, closed, cfg)
