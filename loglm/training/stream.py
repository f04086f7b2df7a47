"""Training batches streamed from the session shards: no process holds the training split.

The split's shards are read a row group at a time.  Each epoch the row groups are put in an order drawn from
(seed, epoch) and dealt to the ranks in turn, so ranks read disjoint data; every rank yields the same number
of batches (what the smallest share fills), so DDP and DeepSpeed steps stay in lock-step.  Inside a rank,
sessions go through a bounded buffer (``buffer_batches`` batches of sessions): shuffled, sorted by length,
cut into batches (little padding, as :class:`loglm.training.data.BucketBatchSampler` does for a split held in
memory: the same rule, applied per buffer) and the batches shuffled.  The default buffer (1,024 batches,
about 65k sessions of tens of events: tens of MB) holds a small split whole, so it trains as before.  The stream is a pure function of (seed, epoch, rank, world), so a job
resumed mid-epoch skips the batches it already trained on (:class:`StreamLoader` is Lightning-stateful).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from torch.utils.data import DataLoader, IterableDataset

from loglm.windows import windows_of

POOL = 50  # batches sorted by length together (as loglm.training.data.BucketBatchSampler)


def row_groups(files: list[Path], split: str) -> list[tuple[str, int, int]]:
    """(file, row group, sessions of ``split`` in it) for every row group holding any: one pass over the
    ``split`` column only."""
    units = []
    for f in files:
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):
            col = pf.read_row_group(g, columns=["split"]).column("split")
            n = int(pc.sum(pc.equal(col, split)).as_py() or 0)
            if n:
                units.append((str(f), g, n))
    return units


UNITS_PER_RANK = 4  # with several ranks, a split of fewer row groups than this per rank is dealt in slices


def dealt_units(units: list[tuple[str, int, int]], world: int) -> list[tuple[str, int, int, int, int]]:
    """The units dealt to the ranks: (file, row group, sessions, first, end), ``first``/``end`` indexing the
    group's sessions of the split.  One process reads whole row groups.  With several ranks and fewer than
    ``UNITS_PER_RANK`` row groups per rank, each group is cut into slices of its sessions, so every rank gets a
    share: dealt whole, a split of one row group (the shipped HDFS blocks: 7,083 sessions in one) gave rank 1
    nothing, and since every rank yields what the smallest share fills, no rank trained at all ("No training
    batches"), silently."""
    if world <= 1 or len(units) >= UNITS_PER_RANK * world:
        return [(path, g, n, 0, n) for path, g, n in units]
    parts = math.ceil(UNITS_PER_RANK * world / max(1, len(units)))
    out = []
    for path, g, n in units:
        k = min(parts, n)
        for i in range(k):
            lo, hi = i * n // k, (i + 1) * n // k
            out.append((path, g, hi - lo, lo, hi))
    return out


class ShardStream(IterableDataset):
    """Batches (dicts of padded tensors) of one rank's share of one epoch."""

    def __init__(self, units: list[tuple[str, int, int]], split: str, batch_size: int, seed: int, epoch,
                 rank: int = 0, world: int = 1, buffer_batches: int = 1024, skip: int = 0):
        """``epoch``: a number, or a function giving the current one (the Trainer's, read as each epoch starts)."""
        self.units, self.split, self.batch_size = units, split, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self._epoch = epoch
        self.buffer = buffer_batches * batch_size
        self.skip = skip
        self.yielded = skip  # batches of this epoch handed out so far (counting skipped ones)
        self._iter_epoch: int | None = None

    @property
    def epoch(self) -> int:
        return int(self._epoch() if callable(self._epoch) else self._epoch)

    def _order(self) -> list[tuple[str, int, int, int, int]]:
        order = dealt_units(self.units, self.world)
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def __len__(self) -> int:
        """Batches per rank: every rank yields what the smallest share fills, so steps stay in lock-step."""
        order = self._order()
        shares = [sum(u[2] for u in order[r::self.world]) for r in range(self.world)]
        return math.ceil(min(shares) / self.batch_size) if shares else 0

    def _sessions(self):
        for path, g, _, lo, hi in self._order()[self.rank::self.world]:
            f = pq.ParquetFile(path)
            extra = ["facets"] if "facets" in f.schema_arrow.names else []
            t = f.read_row_group(g, columns=["tokens", "gaps", "closed", "split", *extra])
            t = t.filter(pc.equal(t.column("split"), self.split)).slice(lo, hi - lo)
            yield from zip(*windows_of(t))

    def _batches(self):
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 1009 + self.rank)
        buf: list = []

        def cut(items):
            """BucketBatchSampler's rule inside the buffer: shuffle, sort pools of POOL batches by length,
            batch, shuffle the batches (a buffer holding the whole split is that sampler exactly)."""
            rng.shuffle(items)
            pool = POOL * self.batch_size
            batches = []
            for c in range(0, len(items), pool):
                part = sorted(items[c:c + pool], key=lambda s: len(s[0]) + s[2])
                batches.extend(part[b:b + self.batch_size] for b in range(0, len(part), self.batch_size))
            rng.shuffle(batches)
            return batches

        for s in self._sessions():
            buf.append(s)
            if len(buf) >= self.buffer:
                yield from cut(buf)
                buf = []
        if buf:
            yield from cut(buf)

    def __iter__(self):
        from loglm.training.data import collate

        if self._iter_epoch is not None and self._iter_epoch != self.epoch:  # a new epoch: nothing to skip
            self.skip = 0
        self._iter_epoch = self.epoch
        self.yielded = self.skip
        total = len(self)
        for i, batch in enumerate(self._batches()):
            if i >= total:
                return
            if i < self.skip:
                continue
            self.yielded = i + 1
            yield collate(batch)

    def state(self) -> dict:
        return {"epoch": self.epoch, "batches": self.yielded, "seed": self.seed, "rank": self.rank, "world": self.world}


class StreamLoader(DataLoader):
    """The DataLoader of a :class:`ShardStream`, stateful for Lightning: its checkpoint records how many
    batches of the epoch were trained on, and a resumed run skips them."""

    def __init__(self, stream: ShardStream):
        super().__init__(stream, batch_size=None, num_workers=0)
        self.stream = stream
        self.resume: dict | None = None

    def state_dict(self) -> dict:
        # Lightning asks for a batch when its step starts (the loader has a length: no fetching ahead), so
        # the batches handed out are the batches trained on (tests/test_stream.py checks it against Lightning)
        return self.stream.state()

    def load_state_dict(self, state: dict) -> None:
        if state.get("epoch") == self.stream.epoch and (state.get("world"), state.get("seed")) == \
                (self.stream.world, self.stream.seed):
            self.stream.skip = self.stream.yielded = int(state.get("batches", 0))
