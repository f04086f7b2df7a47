"""DeepLog-style baseline (Du et al., CCS 2017): an LSTM predicts each event from the ``window`` events
before it, trained on normal training sessions; a session's score is its most surprising event
(max -log p of the event that happened).  Same token ids, [END] and splits as LogLM.

With ``top_g`` the score is the paper's rule instead: an event outside the model's ``top_g`` most likely next
events is a miss (an unseen event always is), and a window scores its share of misses, the mean surprisal
(capped, scaled far below one miss) breaking ties, as LogLM's ``miss_ratio``; :attr:`DeepLog.quiet_top` is the
highest score a window without a miss can have, which the suite's threshold never falls below.
"""

from __future__ import annotations

import numpy as np

from loglm.vocab import PAD, SUM, UNK

TIE_CAP, TIE_SCALE = 99.0, 1e6  # the tie-breaking mean surprisal of the top-g rule: capped, then divided


class Contexts:
    """Every (context window, next event) pair of a list of sequences, gathered a batch at a time.

    Each sequence is read as ``[SUM] + seq``; the pair at position ``t`` is the ``window`` events before it,
    left-padded with ``[PAD]``, and the event at ``t``.  Only the events themselves (one flat array) and two
    integers per pair are held: the windows, ``window`` times the events, are built per batch
    (:meth:`batch`), so training and scoring memory follow the split's events, not ``window`` times them."""

    def __init__(self, seqs, window: int):
        lens = np.fromiter((len(q) + 1 for q in seqs), np.int64, len(seqs))
        starts = np.zeros(len(lens), np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        self.flat = np.empty(int(lens.sum()), np.int64)
        for at, q in zip(starts.tolist(), seqs):
            self.flat[at] = SUM
            self.flat[at + 1:at + 1 + len(q)] = q
        self.window = window
        self.owner = np.repeat(np.arange(len(lens), dtype=np.int64), lens - 1)  # the sequence of each pair
        targets = np.ones(len(self.flat), bool)
        targets[starts] = False  # [SUM] is context, never predicted
        self.pos = np.flatnonzero(targets)  # where each pair's next event sits in ``flat``
        self.first = starts  # where each sequence's [SUM] sits

    def __len__(self) -> int:
        return len(self.pos)

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(context windows, next events) of the pairs ``idx``."""
        pos = self.pos[idx]
        cols = pos[:, None] - self.window + np.arange(self.window)[None, :]
        x = self.flat[np.maximum(cols, 0)]
        x[cols < self.first[self.owner[idx]][:, None]] = PAD  # before the sequence's [SUM]: padding
        return x, self.flat[pos]


class DeepLog:
    def __init__(self, vocab_size: int, window: int = 10, hidden: int = 64, layers: int = 2, epochs: int = 10,
                 batch_size: int = 512, lr: float = 3e-3, seed: int = 0, top_g: int | None = None):
        import torch

        if top_g is not None and top_g < 1:
            raise ValueError(f"DeepLog top_g must be at least 1 (or None for the max-surprisal score), got {top_g}")
        self.vocab_size, self.window, self.epochs, self.batch_size, self.lr = vocab_size, window, epochs, batch_size, lr
        self.top_g = top_g
        torch.manual_seed(seed)
        self.seed = seed

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(vocab_size, hidden, padding_idx=PAD)
                self.lstm = torch.nn.LSTM(hidden, hidden, layers, batch_first=True)
                self.out = torch.nn.Linear(hidden, vocab_size)

            def forward(self, x):
                h, _ = self.lstm(self.emb(x))
                return self.out(h[:, -1])

        self.net = Net()

    @staticmethod
    def sequences(tokens: list, closed: list[bool]) -> list[np.ndarray]:
        """Each window's events, ``[END]`` after a closed one: an int64 array each (a Python list of ints
        would cost several times the events' own bytes)."""
        from loglm.windows import with_end

        return with_end(tokens, closed)

    def fit(self, seqs: list[list[int]], val_seqs: list[list[int]] | None = None, patience: int | None = None
            ) -> DeepLog:
        """Up to ``epochs`` passes; with ``val_seqs``, early stopping on their next-event loss (``patience``
        epochs without improvement) and the best epoch's weights kept: the budget and rule LogLM trains under."""
        import copy

        import torch

        pairs = Contexts(seqs, self.window)
        val = Contexts(val_seqs, self.window) if val_seqs else None
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        best, best_state, waited = float("inf"), None, 0
        self.epochs_run = 0
        for _ in range(self.epochs):
            self.net.train()
            order = torch.randperm(len(pairs), generator=gen).numpy()
            for b in range(0, len(order), self.batch_size):
                x, y = pairs.batch(order[b:b + self.batch_size])
                loss = torch.nn.functional.cross_entropy(self.net(torch.from_numpy(x)), torch.from_numpy(y))
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.epochs_run += 1
            if not val_seqs:
                continue
            self.net.eval()
            v = 0.0
            with torch.no_grad():
                for b in range(0, len(val), 8192):
                    x, y = val.batch(np.arange(b, min(b + 8192, len(val))))
                    v += float(torch.nn.functional.cross_entropy(self.net(torch.from_numpy(x)), torch.from_numpy(y),
                                                                 reduction="sum"))
            v /= max(1, len(val))
            if v < best - 1e-4:
                best, best_state, waited = v, copy.deepcopy(self.net.state_dict()), 0
            else:
                waited += 1
                if patience is not None and waited > patience:
                    break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.best_val_loss = best
        return self

    @property
    def quiet_top(self) -> float | None:
        """The highest score of a window without a miss (the top-g rule), None for the max-surprisal score."""
        return None if self.top_g is None else TIE_CAP / TIE_SCALE

    def score(self, seqs: list[list[int]], unk_surprisal: float = 20.0) -> np.ndarray:
        import torch

        pairs = Contexts(seqs, self.window)
        out = np.zeros(len(seqs))
        misses, total, surprisal = np.zeros(len(seqs)), np.zeros(len(seqs)), np.zeros(len(seqs))
        self.net.eval()
        with torch.no_grad():
            for b in range(0, len(pairs), 8192):
                idx = np.arange(b, min(b + 8192, len(pairs)))
                xb, yb = pairs.batch(idx)
                ob = pairs.owner[idx]
                logp = torch.log_softmax(self.net(torch.from_numpy(xb)), -1).numpy()
                gold = logp[np.arange(len(logp)), yb]
                s = np.where(yb == UNK, unk_surprisal, -gold)  # an event training never saw
                np.maximum.at(out, ob, s)
                if self.top_g is not None:
                    miss = ((logp > gold[:, None]).sum(1) >= self.top_g) | (yb == UNK)
                    np.add.at(misses, ob, miss)
                    np.add.at(total, ob, 1.0)
                    np.add.at(surprisal, ob, s)
        if self.top_g is None:
            return out
        n = np.maximum(total, 1.0)
        return misses / n + np.minimum(surprisal / n, TIE_CAP) / TIE_SCALE
