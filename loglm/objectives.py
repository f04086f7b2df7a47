"""Self-supervised objectives: dynamic masked-event prediction and the hypersphere compactness term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loglm.vocab import MASK, SPECIALS

IGNORE = -100


def mask_events(tokens: torch.Tensor, pad_mask: torch.Tensor, ratio: float, vocab_size: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style dynamic masking of event positions (never position 0, the summary token).

    Of the chosen positions 80% become [MASK], 10% a random event, 10% stay; every sequence with at least
    one event gets at least one prediction target.  Returns (inputs, labels) with IGNORE on non-targets.
    """
    dev = tokens.device
    cand = pad_mask.clone()
    cand[:, 0] = False
    noise = torch.rand(tokens.shape, generator=generator, device=dev)
    chosen = (noise < ratio) & cand
    # force one target in rows that drew none: the candidate with the smallest noise
    none = ~chosen.any(1) & cand.any(1)
    if none.any():
        first = noise.masked_fill(~cand, 2.0).argmin(1)
        chosen[none, first[none]] = True
    labels = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE))
    action = torch.rand(tokens.shape, generator=generator, device=dev)
    inputs = tokens.clone()
    inputs[chosen & (action < 0.8)] = MASK
    n_special = len(SPECIALS)
    if vocab_size > n_special:
        rand_tok = torch.randint(n_special, vocab_size, tokens.shape, generator=generator, device=dev)
        swap = chosen & (action >= 0.8) & (action < 0.9)
        inputs[swap] = rand_tok[swap]
    return inputs, labels


def masked_event_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the target positions only (logits already gathered at them)."""
    return F.cross_entropy(logits, labels)


def hypersphere_loss(summary: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of summary vectors to the centre of normal sessions (LogBERT's VHM)."""
    return ((summary - center) ** 2).sum(-1).mean()
