"""LightningDataModule over the prepared Parquet session shards: training streamed (loglm.training.stream),
validation (normal sessions of the val split) in memory, both in length-bucketed batches."""

from __future__ import annotations

import math
import random
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from loglm.windows import pad_windows, windows_of


class SessionDataset(Dataset):
    """Sessions as (tokens, gaps) arrays; the summary token is prepended at collate time."""

    def __init__(self, tokens: list[np.ndarray], gaps: list[np.ndarray], closed: list[bool]):
        self.tokens = tokens
        self.gaps = gaps
        self.closed = closed

    @classmethod
    def from_table(cls, table) -> SessionDataset:
        return cls(*windows_of(table))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, bool]:
        return self.tokens[i], self.gaps[i], self.closed[i]

    def lengths(self) -> list[int]:
        return [len(t) + c for t, c in zip(self.tokens, self.closed)]


def collate(items: list[tuple[np.ndarray, np.ndarray, bool]]) -> dict[str, torch.Tensor]:
    """Pad to the longest session of the batch: [SUM] at position 0, the events, [END] if closed."""
    tokens, gaps, pad = pad_windows(items)
    return {"tokens": torch.from_numpy(tokens), "gaps": torch.from_numpy(gaps), "pad_mask": torch.from_numpy(pad)}


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length (little padding), shuffled per epoch, split evenly across ranks.

    Rank and world size are read at iteration time, so the same sampler serves one process, DDP and
    DeepSpeed; the Trainer runs with ``use_distributed_sampler=False``.
    """

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0, pool: int = 50):
        self.lengths = lengths
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pool = pool
        self.epoch = 0

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _batches(self) -> list[list[int]]:
        idx = list(range(len(self.lengths)))
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(idx)
        chunk = self.batch_size * self.pool
        batches = []
        for c in range(0, len(idx), chunk):
            part = sorted(idx[c:c + chunk], key=lambda i: self.lengths[i])
            batches.extend(part[b:b + self.batch_size] for b in range(0, len(part), self.batch_size))
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self):
        rank, world = self._rank_world()
        batches = self._batches()
        per_rank = math.ceil(len(batches) / world)
        # pad by repeating the first batches so every rank runs the same number of steps
        while batches and len(batches) < per_rank * world:
            batches = batches + batches[: per_rank * world - len(batches)]
        self.epoch += 1
        return iter(batches[rank::world])

    def __len__(self) -> int:
        _, world = self._rank_world()
        n = math.ceil(len(self.lengths) / self.batch_size) if self.lengths else 0
        return math.ceil(n / world)


class SessionDataModule(pl.LightningDataModule):
    def __init__(self, data_dir: str | Path, batch_size: int, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.data_dir = str(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_units: list | None = None  # (shard, row group, training sessions): streamed, never loaded
        self.val_set: SessionDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        from loglm.shards import read_sessions, session_files
        from loglm.training.stream import row_groups

        if self.train_units is None:
            self.train_units = row_groups(session_files(self.data_dir), "train")
            val = read_sessions(self.data_dir, "val")
            # validation loss is measured on normal (or unlabelled) sessions only
            labels = np.asarray(val.column("label").to_numpy())
            import pyarrow as pa

            self.val_set = SessionDataset.from_table(val.filter(pa.array(labels != 1)))
            if not self.train_units:
                raise ValueError(f"{self.data_dir}: no training sessions (check data.split)")

    def _loader(self, ds: SessionDataset, shuffle: bool) -> DataLoader:
        sampler = BucketBatchSampler(ds.lengths(), self.batch_size, shuffle, self.seed)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """The training split streamed from the shards (loglm.training.stream), this rank's share."""
        from loglm.training.stream import ShardStream, StreamLoader

        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        epoch = (lambda: trainer.current_epoch) if trainer is not None else 0
        stream = ShardStream(self.train_units, "train", self.batch_size, self.seed, epoch, rank, world)
        if len(stream) == 0:  # Lightning would stop at once ("No training batches") and the run end without a model
            n = sum(u[2] for u in self.train_units)
            raise ValueError(f"{self.data_dir}: the training split's {n} sessions leave some of the {world} "
                             "training processes without a session: train on fewer processes or more data")
        return StreamLoader(stream)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)
