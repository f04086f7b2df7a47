"""Self-supervised objectives: dynamic masked-event prediction and the hypersphere compactness term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loglm.vocab import MASK, SPECIALS, UNK

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


def hide_as_unseen(inputs: torch.Tensor, pad_mask: torch.Tensor, target: torch.Tensor, rate: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Training: each event that is not a prediction target (nor the summary token, nor padding) reads as
    [UNK] with chance ``rate``.  Detection shows an event type training never saw (or saw fewer than
    ``tokenizer.min_count`` times) as [UNK] beside the events it scores; training windows rarely hold one, so
    without this the model never learns what one means as context (the tied embedding learns it only as an
    output)."""
    if rate <= 0:
        return inputs
    context = pad_mask & ~target
    context[:, 0] = False
    hide = (torch.rand(inputs.shape, generator=generator, device=inputs.device) < rate) & context
    return inputs.masked_fill(hide, UNK)


def hide_facets(gaps: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``gaps`` with the flow facets of ``positions`` ((B, L) bool) set to none: a prediction target shows no
    facets, whether ``mask_events`` made its token [MASK], a random event or left it (the encoder hides the
    facets of [MASK] positions itself, which covers scoring).  Gaps without facets come back as they are."""
    if gaps.dim() == positions.dim():
        return gaps
    out = gaps.clone()
    out[..., 1:].masked_fill_(positions.unsqueeze(-1), 0)
    return out


def drop_facets(gaps: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training: each facet of a flow (not padding) becomes UNSEEN_FACET with chance ``p``."""
    if p <= 0 or gaps.dim() == 2:
        return gaps
    from loglm.ingest.flows import UNSEEN_FACET

    facets = gaps[..., 1:]
    drop = (torch.rand(facets.shape, generator=generator, device=gaps.device) < p) & (facets > 0)
    out = gaps.clone()
    out[..., 1:] = torch.where(drop, torch.full_like(facets, UNSEEN_FACET), facets)
    return out


def masked_event_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the target positions only (logits already gathered at them)."""
    return F.cross_entropy(logits, labels)


def masked_facet_loss(queries: torch.Tensor, table: torch.Tensor, facets: torch.Tensor) -> torch.Tensor:
    """Per-field masked prediction for flows: ``queries`` (N, F * d), one query per field of each target flow
    (a projection of its hidden state), scored against the facet embedding ``table`` (n_facets, d): the
    cross-entropy of each field's true facet id (``facets``, (N, F), read before facet dropout), averaged over
    the fields that have one (ids 0, none, and 1, a value training never saw, are not targets)."""
    n, f = facets.shape
    logits = queries.view(n, f, -1) @ table.T
    from loglm.ingest.flows import UNSEEN_FACET

    gold = facets.long().masked_fill(facets <= UNSEEN_FACET, IGNORE)
    # a sum over the count (at least 1): no target gives 0, not NaN, without a host sync to ask first
    total = F.cross_entropy(logits.reshape(n * f, -1).float(), gold.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return total / (gold != IGNORE).sum().clamp_min(1)


def hypersphere_loss(summary: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of summary vectors to the centre of normal sessions (LogBERT's VHM)."""
    return ((summary - center) ** 2).sum(-1).mean()
