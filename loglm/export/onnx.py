"""ONNX export of an encoder (dynamo exporter, dynamic batch and sequence) and int8 quantisation.

Two speed choices, both checked by the bundle's parity test (torch vs ONNX through the same scoring code):

- **Fused attention** (``fused_attention=True``): each layer's attention is exported as ONNX Runtime's
  ``com.microsoft.MultiHeadAttention`` kernel (one op with a key-padding mask) instead of the ~20 reshape,
  transpose, mask and softmax nodes the generic exporter writes; ~25% faster on CPU.  Turn it off for a
  runtime without ONNX Runtime's contrib ops.
- **Scores in the graph** for one-pass (replaced-event head) models: the graph returns the replaced logit
  and the top-k expected events with their log-probabilities, not the (B, L, V) logits, so the engine does
  no vocabulary-sized work in numpy.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@torch.library.custom_op("loglm::attention", mutates_args=())
def attention(qkv: torch.Tensor, pad_mask: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Multi-head self-attention on packed projections (B, L, 3D) with a key mask (B, L): True = attend."""
    b, n, d3 = qkv.shape
    q, k, v = qkv.view(b, n, 3, n_heads, d3 // (3 * n_heads)).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=pad_mask[:, None, None, :])
    return y.transpose(1, 2).reshape(b, n, d3 // 3)


@attention.register_fake
def _attention_shape(qkv, pad_mask, n_heads):
    return qkv.new_empty(qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3)


def _attention_to_onnx():
    """The ONNX translation of ``loglm::attention``: Split + com.microsoft.MultiHeadAttention."""
    import onnxscript
    from onnx.defs import OpSchema
    from onnxscript import opset18 as op

    param, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    schema = OpSchema(  # the subset of the contrib op's signature used here (onnx has no schema for it)
        "MultiHeadAttention", "com.microsoft", 1,
        inputs=[param("query", "T"), param("key", "T"), param("value", "T"),
                param("bias", "T", param_option=optional), param("key_padding_mask", "M", param_option=optional)],
        outputs=[param("output", "T")],
        type_constraints=[("T", ["tensor(float)"], ""), ("M", ["tensor(int32)"], "")],
        attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "")])
    mha = onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), "MultiHeadAttention", schema)

    def translate(qkv, pad_mask, n_heads: int):
        q, k, v = op.Split(qkv, num_outputs=3, axis=-1)
        return mha(q, k, v, None, op.Cast(pad_mask, to=6), num_heads=n_heads)  # mask as int32, 1 = attend

    return translate


class FusedSelfAttention(nn.Module):
    """The same weights as ``SelfAttention``, computed through ``loglm::attention`` (one ONNX op)."""

    def __init__(self, attn):
        super().__init__()
        self.qkv, self.proj, self.n_heads = attn.qkv, attn.proj, attn.n_heads

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.ops.loglm.attention(self.qkv(x), attn_mask[:, 0, 0, :], self.n_heads))


class ScoringGraph(nn.Module):
    """tokens, gaps (int64), pad_mask (bool), all (B, L) (gaps (B, L, 1 + facets) with flow facets)  ->
    with a replaced-event head: replaced (B, L), top_tokens (B, L, k), top_logp (B, L, k);
    without: logits (B, L, V) (masked views are scored in numpy); then window_vector (B, d) and
    event_vectors (B, L, 2d), or (B, L, (2 + F) d) with F flow facets (LogEncoder.event_embedding), either way."""

    def __init__(self, encoder, expected: int):
        super().__init__()
        self.encoder = encoder.eval()
        self.expected = min(expected, encoder.cfg.vocab_size)

    def forward(self, tokens: torch.Tensor, gaps: torch.Tensor, pad_mask: torch.Tensor):
        hidden = self.encoder(tokens, gaps, pad_mask)
        logits = self.encoder.logits(hidden)
        vectors = self.encoder.embedding(hidden, pad_mask), self.encoder.event_embedding(hidden, tokens, gaps)
        if self.encoder.rtd is None:
            return logits, *vectors
        top_logp, top = torch.topk(torch.log_softmax(logits, -1), self.expected, dim=-1)
        return self.encoder.replaced_logit(hidden), top, top_logp, *vectors


def output_names(encoder) -> list[str]:
    """The graph's outputs; ``window_vector`` (B, d) is the window's unit vector, ``event_vectors`` (B, L, 2d or
    (2 + F) d) each position's (loglm.analyst.embed); onnxruntime computes only the outputs a caller asks for."""
    return (["replaced", "top_tokens", "top_logp"] if encoder.rtd is not None else ["logits"]) + [
        "window_vector", "event_vectors"]


def export_onnx(encoder, path: Path, expected: int = 3, fused_attention: bool = True, facet_slots: int = 0) -> None:
    """``facet_slots``: facet ids per event in the model's input (the vocabulary's, loglm.ingest.flows); the
    graph's ``gaps`` is then (B, L, 1 + facet_slots), else (B, L).  A student that reads no facets still takes
    them when its vocabulary has them, so the engine feeds every model of a vocabulary the same way."""
    import warnings

    encoder = copy.deepcopy(encoder).eval()
    table = {}
    if fused_attention:
        for block in encoder.blocks:
            block.attn = FusedSelfAttention(block.attn)
        table = {torch.ops.loglm.attention.default: _attention_to_onnx()}
    graph = ScoringGraph(encoder, expected)
    b, n = 4, 12
    example = (torch.full((b, n), 5, dtype=torch.long), torch.zeros((b, n, 1 + facet_slots) if facet_slots else (b, n),
                                                                     dtype=torch.long),
               torch.ones((b, n), dtype=torch.bool))
    batch, seq = torch.export.Dim("batch", min=1, max=65536), torch.export.Dim("seq", min=2, max=encoder.cfg.max_len)
    shapes = {"tokens": {0: batch, 1: seq}, "gaps": {0: batch, 1: seq}, "pad_mask": {0: batch, 1: seq}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, example, str(path), dynamo=True, dynamic_shapes=shapes, external_data=False,
                          input_names=["tokens", "gaps", "pad_mask"], output_names=output_names(encoder),
                          custom_translation_table=table, verbose=False)


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
