"""ONNX export of an encoder (dynamo exporter, dynamic batch and sequence) and int8 quantisation."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class LogitsGraph(nn.Module):
    """tokens, gaps (int64), pad_mask (bool), all (B, L)  ->  logits (B, L, V)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder.eval()

    def forward(self, tokens: torch.Tensor, gaps: torch.Tensor, pad_mask: torch.Tensor):
        hidden = self.encoder(tokens, gaps, pad_mask)
        if self.encoder.rtd is not None:
            return self.encoder.logits(hidden), self.encoder.replaced_logit(hidden)
        return self.encoder.logits(hidden)


def export_onnx(encoder, path: Path) -> None:
    import warnings

    graph = LogitsGraph(encoder)
    b, n = 4, 12
    example = (torch.full((b, n), 5, dtype=torch.long), torch.zeros((b, n), dtype=torch.long),
               torch.ones((b, n), dtype=torch.bool))
    batch, seq = torch.export.Dim("batch", min=1, max=65536), torch.export.Dim("seq", min=2, max=encoder.cfg.max_len)
    shapes = {"tokens": {0: batch, 1: seq}, "gaps": {0: batch, 1: seq}, "pad_mask": {0: batch, 1: seq}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, example, str(path), dynamo=True, dynamic_shapes=shapes, external_data=False,
                          input_names=["tokens", "gaps", "pad_mask"],
                          output_names=["logits", "replaced"] if encoder.rtd is not None else ["logits"], verbose=False)


def quantize_int8(src: Path, dst: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # the quantizer logs every tensor at INFO
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
