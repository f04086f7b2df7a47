"""The log vocabulary: special tokens, one token per training template, time-gap buckets.

It carries the template miner's state, so the same file turns new raw lines into the same token ids at
detection time; a template absent from training becomes the explicit ``[UNK]`` token.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from loglm.ingest.templates import TemplateMiner

SPECIALS = ["[PAD]", "[MASK]", "[UNK]", "[SUM]", "[END]"]
# [SUM] opens every session (its summary vector); [END] closes it, so the model also predicts where a
# session should end and a session cut short (missing events) becomes surprising.
PAD, MASK, UNK, SUM, END = range(len(SPECIALS))


def gap_bucket(gap_s: float, n_buckets: int) -> int:
    """0 for no gap, then logarithmic buckets: (0,1) s -> 1, [1,3) s -> 2, [3,7) s -> 3, ..."""
    if not gap_s > 0:
        return 0
    return min(n_buckets - 1, 1 + int(math.log2(1.0 + gap_s)))


class Vocabulary:
    def __init__(self, miner: TemplateMiner, template_ids: list[int], gap_buckets: int, mask_params: bool,
                 flow_codec=None, time_resolution_s: float = 0.0):
        self.miner = miner
        self.flow_codec = flow_codec  # loglm.ingest.flows.FlowCodec for flow datasets
        self.template_ids = list(template_ids)  # token SUM+1+i  <->  template_ids[i]
        self.token_of = {tid: len(SPECIALS) + i for i, tid in enumerate(self.template_ids)}
        self.gap_buckets = gap_buckets
        self.mask_params = mask_params
        # timestamps are floored to this clock before gaps are measured (0: as read), so data logged at a
        # coarser resolution than training (minutes against seconds) does not read as a new kind of timing
        self.time_resolution_s = float(time_resolution_s or 0.0)
        if self.time_resolution_s < 0:
            raise ValueError(f"tokenizer.time_resolution_s must be >= 0, got {time_resolution_s}")

    @property
    def size(self) -> int:
        return len(SPECIALS) + len(self.template_ids)

    @property
    def n_facets(self) -> int:
        """Facet vocabulary size of a flow vocabulary with facets (loglm.ingest.flows), else 0."""
        return self.flow_codec.n_facets if self.flow_codec is not None else 0

    def facets(self, fields: list[dict | None]) -> list[int]:
        """The events' facet ids, flattened (FACET_FIELDS per event); [] when this vocabulary has none."""
        if not self.n_facets:
            return []
        return [f for flow in fields for f in self.flow_codec.facet_ids(flow)]

    def clock(self, ts):
        """Timestamps (a sequence or an array) on this vocabulary's clock: floored to ``time_resolution_s``."""
        if not self.time_resolution_s:
            return ts
        r = self.time_resolution_s
        return np.floor(np.asarray(ts, dtype=np.float64) / r) * r

    def gaps(self, ts) -> list[int]:
        """Gap buckets of one session's event timestamps (0 for the first event), on this vocabulary's clock."""
        ts = self.clock(ts)
        return [0] + [gap_bucket(float(b - a), self.gap_buckets) for a, b in zip(ts[:-1], ts[1:])]

    def token(self, template_id: int | None) -> int:
        if template_id is None:
            return UNK
        return self.token_of.get(template_id, UNK)

    def token_text(self, token: int) -> str:
        if token < len(SPECIALS):
            return SPECIALS[token]
        return self.miner.templates[self.template_ids[token - len(SPECIALS)]].text

    def to_dict(self) -> dict:
        return {"format": "loglm-vocab/1", "specials": SPECIALS, "template_ids": self.template_ids,
                "gap_buckets": self.gap_buckets, "mask_params": self.mask_params, "miner": self.miner.state(),
                "flow_codec": self.flow_codec.state() if self.flow_codec is not None else None,
                # written only when set: vocabularies without it stay byte-identical to before
                **({"time_resolution_s": self.time_resolution_s} if self.time_resolution_s else {})}

    def save(self, path: str | Path) -> str:
        from loglm.artifacts import atomic_write_bytes

        data = json.dumps(self.to_dict(), sort_keys=True).encode()
        atomic_write_bytes(Path(path), data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read vocabulary {path}: {e}") from e
        return cls.from_dict(d, str(path))

    @classmethod
    def from_dict(cls, d: dict, where: str = "vocabulary") -> Vocabulary:
        """The inverse of :meth:`to_dict` (``where`` names the source in errors)."""
        if d.get("format") != "loglm-vocab/1":
            raise ValueError(f"{where} is not a LogLM vocabulary (format={d.get('format')!r})")
        codec = None
        if d.get("flow_codec"):
            from loglm.ingest.flows import FlowCodec

            codec = FlowCodec.from_state(d["flow_codec"])
        return cls(TemplateMiner.from_state(d["miner"]), d["template_ids"], d["gap_buckets"], d["mask_params"], codec,
                   d.get("time_resolution_s", 0.0))
