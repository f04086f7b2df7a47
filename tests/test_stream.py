"""Training batches streamed from the shards: rank-disjoint, the same per (seed, epoch), resumable mid-epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from loglm.ingest.prepare import run as prepare
    from loglm.synth import generate

    tmp = tmp_path_factory.mktemp("stream")
    log = tmp / "hdfs.log"
    generate(log, 8_000, ROOT / "data/hdfs_loglead/HDFS_loglead_early.log.gz",
             ROOT / "data/hdfs_loglead/anomalous_block_ids.txt", seed=4)
    cfg = compose("prepare", [f"paths.root={tmp}", "data=hdfs_loglead", f"data.inputs=[{log}]",
                              f"data.anomalous_ids={log}.anomalous_ids.txt", "data.shard_rows=40"])
    return Path(prepare(cfg)["path"])


def sessions_of(batches) -> list[tuple]:
    """Each session of the batches as its token tuple (with [SUM]/[END], without padding)."""
    out = []
    for b in batches:
        for row, pad in zip(b["tokens"], b["pad_mask"]):
            out.append(tuple(row[pad].tolist()))
    return out


def stream(data_dir, **kw):
    from loglm.shards import session_files
    from loglm.training.stream import ShardStream, row_groups

    units = row_groups(session_files(data_dir), "train")
    args = {"split": "train", "batch_size": 8, "seed": 3, "epoch": 0, "buffer_batches": 4} | kw
    return ShardStream(units, **args)


def test_ranks_read_disjoint_shares_of_equal_length_and_one_rank_reads_everything(data_dir):
    from loglm.shards import read_sessions

    train = read_sessions(data_dir, "train")
    assert len({r for r in train.column("session_id").to_pylist()}) == train.num_rows > 50
    whole = stream(data_dir)
    assert len(whole.units) > 3  # several shards: the order and the shares matter
    everything = sessions_of(list(whole))
    assert len(everything) == train.num_rows and len(list(whole)) == len(whole)
    r0, r1 = (list(stream(data_dir, rank=r, world=2)) for r in (0, 1))
    assert len(r0) == len(r1) == len(stream(data_dir, rank=0, world=2))  # lock-step
    s0, s1 = sessions_of(r0), sessions_of(r1)
    ids0 = {id_ for id_ in s0}
    assert len(s0) + len(s1) <= len(everything)
    # disjoint row groups: no session reaches both ranks (sessions repeat only if their tokens do)
    from collections import Counter

    both = Counter(s0) + Counter(s1)
    assert all(both[k] <= Counter(everything)[k] for k in both) and ids0


def test_the_stream_is_a_function_of_seed_and_epoch(data_dir):
    a = sessions_of(stream(data_dir, epoch=1))
    assert a == sessions_of(stream(data_dir, epoch=1))
    assert a != sessions_of(stream(data_dir, epoch=2)) and sorted(a) == sorted(sessions_of(stream(data_dir, epoch=2)))
    assert a != sessions_of(stream(data_dir, epoch=1, seed=4))


def test_a_resumed_stream_continues_where_the_checkpoint_was(data_dir):
    from loglm.training.stream import StreamLoader

    full = list(stream(data_dir, epoch=2))
    loader = StreamLoader(stream(data_dir, epoch=2))
    it = iter(loader)
    for _ in range(3):  # three batches trained
        next(it)
    state = loader.state_dict()
    assert state["batches"] == 3 and state["epoch"] == 2
    again = StreamLoader(stream(data_dir, epoch=2))
    again.load_state_dict(state)
    rest = list(again)
    assert sessions_of(rest) == sessions_of(full[3:])
    other = StreamLoader(stream(data_dir, epoch=3))  # a state from another epoch is not applied
    other.load_state_dict(state)
    assert len(list(other)) == len(other.stream)


class Recorder:
    """A tiny LightningModule that records the batches it trains on."""

    @staticmethod
    def make(seen: list):
        import lightning.pytorch as pl

        class M(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(1))

            def training_step(self, batch, batch_idx):
                seen.extend(sessions_of([batch]))
                return (self.w * batch["tokens"].float().mean()).sum()

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.0)

        return M()


def test_lightning_resumes_mid_epoch_without_losing_or_repeating_a_batch(data_dir, tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from loglm.training.data import SessionDataModule

    def trainer(**kw):
        return pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                          default_root_dir=tmp_path, **kw)

    full: list = []
    trainer(enable_checkpointing=False).fit(Recorder.make(full), datamodule=SessionDataModule(data_dir, 8, 0, 3))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=5, save_top_k=-1)
    first: list = []
    steps = 35  # an epoch here is about 29 batches: the run stops inside the second epoch
    trainer(callbacks=[ckpt], max_steps=steps).fit(Recorder.make(first), datamodule=SessionDataModule(data_dir, 8, 0, 3))
    last = tmp_path / "ck" / f"epoch=1-step={steps}.ckpt"
    assert last.is_file(), sorted(p.name for p in (tmp_path / "ck").iterdir())
    rest: list = []
    trainer(enable_checkpointing=False).fit(Recorder.make(rest), datamodule=SessionDataModule(data_dir, 8, 0, 3),
                                            ckpt_path=str(last))
    assert first == full[:len(first)] and rest  # the same stream as an uninterrupted run
    assert first + rest == full  # resumed mid-epoch: no batch lost, none trained twice


def test_a_split_in_one_row_group_is_shared_by_every_rank(data_dir, tmp_path):
    """A small prepared split can sit in one row group (the shipped HDFS blocks' 7,083 training sessions do).
    Dealt whole, rank 1 got nothing and, since ranks yield what the smallest share fills, neither rank trained:
    Lightning stopped at once ("No training batches") and a 2-worker Ray run ended without a model. Slices of
    the group's sessions are dealt instead: every rank trains, in lock-step, on disjoint sessions."""
    from collections import Counter

    import pyarrow.parquet as pq

    from loglm.shards import read_sessions
    from loglm.training.data import SessionDataModule
    from loglm.training.stream import ShardStream, row_groups

    train = read_sessions(data_dir, "train")
    one = tmp_path / "shard-00000.parquet"
    pq.write_table(train, one, row_group_size=train.num_rows + 1)
    units = row_groups([one], "train")
    assert len(units) == 1
    args = {"split": "train", "batch_size": 8, "seed": 3, "epoch": 0, "buffer_batches": 4}
    r0, r1 = (list(ShardStream(units, rank=r, world=2, **args)) for r in (0, 1))
    assert len(r0) == len(r1) == len(ShardStream(units, rank=0, world=2, **args)) > 1  # lock-step
    s0, s1 = sessions_of(r0), sessions_of(r1)
    whole = Counter(sessions_of(list(ShardStream(units, **args))))  # one process reads the group whole
    assert sum(whole.values()) == train.num_rows
    assert len(s0) + len(s1) >= train.num_rows - 8  # only the larger share's extra sessions wait for an epoch
    both = Counter(s0) + Counter(s1)
    assert all(both[k] <= whole[k] for k in both)  # disjoint: no session reaches both ranks

    # too few sessions for the ranks: a clear error, not a run that trains nothing
    dm = SessionDataModule(data_dir, 8, 0, 3)
    dm.train_units = [(str(one), 0, 1)]
    dm.trainer = type("Trainer", (), {"global_rank": 0, "world_size": 2, "current_epoch": 0})()
    with pytest.raises(ValueError, match="without a session"):
        dm.train_dataloader()
