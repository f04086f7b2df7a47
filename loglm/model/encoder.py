"""The LogLM encoder: a compact pre-LN transformer over event tokens, on fused SDPA attention.

Input position 0 is the ``[SUM]`` summary token; every other position is one event, embedded as
event token + position + time-gap bucket (+ the sum of its facet embeddings, for flows: loglm.ingest.flows).
A position whose token is ``[MASK]`` shows no facets, so a masked flow is predicted from its context only.  No framework code here: a plain ``nn.Module`` with a config
dataclass, so the same file serves training, distillation and ONNX export.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from loglm.vocab import MASK


@dataclass
class EncoderConfig:
    vocab_size: int
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.1
    max_len: int = 257
    gap_buckets: int = 16
    rtd_head: bool = False  # per-position "was this event replaced?" logit (one-pass scoring)
    n_facets: int = 0  # flow facet vocabulary (0: none; then gaps is (B, L), else (B, L, 1 + facets per event))

    def to_dict(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"model.d_model={cfg.d_model} must be divisible by model.n_heads={cfg.n_heads}")
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))

    def forward_unpadded(self, h: torch.Tensor, real: torch.Tensor, b: int, n: int, attn_mask: torch.Tensor
                         ) -> torch.Tensor:
        """The same attention for the real positions only: ``h`` (N real, d), ``real`` their flat indices in the
        (b, n) layout.  Projections run on the real rows; only the score/weighted-sum step sees the padded
        layout.  (Splitting that step into groups of similar length measured slower: 13.4k vs 14.0k tokens/s.)"""
        d = h.shape[-1]
        # the zeros take the projection's dtype: under autocast (precision=bf16-mixed) it is bf16 while h is fp32
        proj = self.qkv(h)
        qkv = proj.new_zeros(b * n, 3 * d).index_copy(0, real, proj)
        q, k, v = qkv.view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b * n, d).index_select(0, real))


class Block(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), attn_mask))
        return x + self.drop(self.ff(self.ln2(x)))

    def forward_unpadded(self, x: torch.Tensor, real: torch.Tensor, b: int, n: int, attn_mask: torch.Tensor
                         ) -> torch.Tensor:
        x = x + fast_dropout(self.attn.forward_unpadded(self.ln1(x), real, b, n, attn_mask), self.drop)
        return x + fast_dropout(self.ff(self.ln2(x)), self.drop)


def fast_dropout(x: torch.Tensor, drop: nn.Dropout) -> torch.Tensor:
    """``drop(x)`` with its mask drawn by ``rand`` instead of ``bernoulli_`` (a third cheaper on CPU, forward and
    backward): the same distribution, other draws.  Used on the unpadded path only, so default training keeps
    its exact random stream.  The mask takes ``x``'s dtype: a bool mask times a Python float is float32, which
    turned a bf16 model's activations (DeepSpeed bf16 casts the weights) into float32 and broke the next layer."""
    if not drop.training or drop.p == 0:
        return x
    return x * ((torch.rand_like(x) >= drop.p).to(x.dtype) * (1.0 / (1.0 - drop.p)))


class LogEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.gap = nn.Embedding(cfg.gap_buckets, cfg.d_model)
        self.facet = nn.Embedding(cfg.n_facets, cfg.d_model, padding_idx=0) if cfg.n_facets else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        # masked-event head, output matrix tied to the input embedding
        self.head_transform = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(), nn.LayerNorm(cfg.d_model))
        self.head_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.rtd = nn.Linear(cfg.d_model, 1) if cfg.rtd_head else None
        # training batches with at least this share of padding skip it in every layer but attention's score
        # step (trainer.unpad_share, 0.1 by default; None: never).  It pays from about 10% padding (1.37x HF BERT
        # at 39%, random batches); length-bucketed batches (about 2%) are faster padded.  Not part of the saved
        # model; a bare encoder (inference, export, tests) keeps None.
        self.unpad_share: float | None = None
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def _side(self, tokens: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """Gap-bucket embedding, plus the facets' (hidden where the token is [MASK]) for a facet model."""
        if gaps.dim() == tokens.dim():
            return self.gap(gaps)
        side = self.gap(gaps[..., 0])
        if self.facet is not None:
            side = side + self._facets(tokens, gaps).sum(-2)
        return side

    def _facets(self, tokens: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """Each facet's embedding, (..., F, d), hidden (zero) where the token is [MASK]."""
        return self.facet(gaps[..., 1:] * (tokens != MASK).unsqueeze(-1).to(gaps.dtype))

    def forward(self, tokens: torch.Tensor, gaps: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """tokens: (B, L) int; gaps: (B, L) gap buckets, or (B, L, 1 + F) gap bucket then facet ids (loglm.windows);
        pad_mask: (B, L) bool, True on real positions. Returns (B, L, d)."""
        n = tokens.shape[1]
        if n > self.cfg.max_len:
            raise ValueError(f"sequence length {n} exceeds model.max_len={self.cfg.max_len}")
        attn_mask = pad_mask[:, None, None, :]
        b = tokens.shape[0]
        share = self.unpad_share
        if self.training and share is not None and 1 - float(pad_mask.float().mean()) >= share:
            # a padded training batch: embeddings and every layer but attention's score step run on the real
            # positions only (padded positions come out as zeros; nothing reads them)
            real = pad_mask.reshape(-1).nonzero().squeeze(1)
            flat = tokens.reshape(-1)[real]
            xr = self.tok(flat) + self.pos(real % n) + self._side(flat, gaps.reshape(b * n, *gaps.shape[2:])[real])
            xr = fast_dropout(xr, self.drop)
            for block in self.blocks:
                xr = block.forward_unpadded(xr, real, b, n, attn_mask)
            out = self.ln_f(xr)
            return out.new_zeros(b * n, out.shape[-1]).index_copy(0, real, out).view(b, n, -1)
        pos = torch.arange(n, device=tokens.device)
        x = self.drop(self.tok(tokens) + self.pos(pos)[None] + self._side(tokens, gaps))
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head_transform(hidden) @ self.tok.weight.T + self.head_bias

    def replaced_logit(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.rtd is None:
            raise ValueError("this encoder has no replaced-event-detection head (distill with distill.rtd_weight > 0)")
        return self.rtd(hidden).squeeze(-1)

    @staticmethod
    def embedding(hidden: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """One unit vector per window: the mean of its positions' final hidden states ([SUM], events, [END]),
        L2-normalised, so cosine similarity is a dot product.  (B, L, d), (B, L) -> (B, d)."""
        m = pad_mask.to(hidden.dtype).unsqueeze(-1)
        mean = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return mean / mean.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def event_embedding(self, hidden: torch.Tensor, tokens: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """Each position as a vector of pieces, each normalised and scaled by 1/sqrt(pieces): its final hidden
        state (the event in its context), its own input embedding (what the event is: token, time gap and, for
        flows, facets; no position), and, for a flow model with facets, each facet's embedding on its own
        (F more pieces: (B, L, (2 + F) d), else (B, L, 2d)).  The context half alone lets events of one window
        look alike whatever they are; the own half keeps them apart; the facets one by one let a few-shot
        classifier weigh a flow's port, sizes and duration each (in the own half they are summed): on
        ``cic_flowprep`` window-disjoint k = 5 rose from 0.69-0.70 to 0.79 (docs/analyst.md).  A
        piece that is zero (the facets of a position without any) stays zero."""
        def unit(x: torch.Tensor, n: int) -> torch.Tensor:
            return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * (1.0 / math.sqrt(n))

        if self.facet is None or gaps.dim() == tokens.dim():
            own = (self.tok(tokens) + self._side(tokens, gaps)).to(hidden.dtype)
            return torch.cat([unit(hidden, 2), unit(own, 2)], -1)
        facets = self._facets(tokens, gaps)  # once: the own half sums them, the pieces keep them apart
        own = (self.tok(tokens) + self.gap(gaps[..., 0]) + facets.sum(-2)).to(hidden.dtype)
        n = 2 + facets.shape[-2]
        return torch.cat([unit(hidden, n), unit(own, n), unit(facets.to(hidden.dtype), n).flatten(-2)], -1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def train_flops(self, batch: int, length: int, masked_share: float) -> float:
        """Matmul FLOPs of one training step (forward + backward) on ``batch`` windows of ``length`` positions
        (padding included: it is computed): 6 x the non-embedding parameters per position, embeddings left out
        (a lookup costs no matmul), the tied output head counted at the masked positions only, plus attention's
        scores and weighted sum (12 x layers x d_model x length per position)."""
        if getattr(self, "_matmul_params", None) is None:  # counted once: training calls this every step
            embed = sum(p.numel() for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
            self._matmul_params = self.num_parameters() - embed
        head = masked_share * self.cfg.vocab_size * self.cfg.d_model
        per_position = 6 * (self._matmul_params + head) + 12 * self.cfg.n_layers * self.cfg.d_model * length
        return float(batch * length * per_position)
