"""Pretraining: prepared shards -> masked-event LogLM -> best weights + calibration, tracked in MLflow.

The job itself (run, Trainer, Ray, resume, stops, finish-up) is :mod:`loglm.training.job`; this module says
what pretraining does differently: the encoder it builds from the data's vocabulary, the masked-event module
(optionally started from a trained model: tuning), and calibration on the data's validation split.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from loglm.config import RootConfig
from loglm.training.job import RunContext, Setup, Stage
from loglm.training.job import run as run_job


def encoder_config(cfg: RootConfig, vocab_size: int, gap_buckets: int, n_facets: int = 0) -> dict:
    m = cfg.model
    if cfg.data.session.max_events + 2 > m.max_len:  # + [SUM] and [END]
        raise ValueError(f"data.session.max_events={cfg.data.session.max_events} needs model.max_len >= "
                         f"{cfg.data.session.max_events + 2} (got {m.max_len})")
    return {"vocab_size": vocab_size, "d_model": m.d_model, "n_layers": m.n_layers, "n_heads": m.n_heads,
            "d_ff": m.d_ff, "dropout": m.dropout, "max_len": m.max_len, "gap_buckets": gap_buckets,
            "n_facets": n_facets}


def build_module(cfg, ctx: RunContext):
    from loglm.training.module import LogLMModule
    from loglm.training.strategies import unpad_share

    module = LogLMModule(ctx.encoder, cfg.objective.mask_ratio, cfg.objective.hypersphere_weight,
                         cfg.objective.center_momentum, cfg.objective.top_k, cfg.trainer.lr,
                         cfg.trainer.weight_decay, cfg.trainer.warmup_steps, cfg.objective.facet_dropout,
                         cfg.objective.unk_rate, cfg.objective.facet_loss_weight)
    module.encoder.unpad_share = unpad_share(cfg.strategy, cfg.trainer)
    if cfg.init_from:  # tuning: a trained model's weights are the starting point
        from loglm.model.store import load_model

        start = load_model(cfg.init_from)
        module.encoder.load_state_dict(grown_state(start, ctx, cfg.init_from))
        module.center.copy_(start.center)
        module.center_ready.fill_(True)
    return module


def grown_state(start, ctx: RunContext, where: str) -> dict:
    """``start``'s encoder weights for this run's encoder: the same, or, where this run's vocabulary extends
    the model's (tuning with ``tune.grow_vocab``), with a row per new token in the tied embedding and the
    output bias, started from the mean of the model's template rows (a token the model has never seen is
    predicted like an average one until training moves it)."""
    import torch

    from loglm.vocab import SPECIALS, Vocabulary

    old, new = start.encoder.cfg.to_dict(), {**start.encoder.cfg.to_dict(), **ctx.encoder}
    state = start.encoder.state_dict()
    if old == new:
        return state
    if {k: v for k, v in old.items() if k != "vocab_size"} != {k: v for k, v in new.items() if k != "vocab_size"} \
            or new["vocab_size"] < old["vocab_size"]:
        raise ValueError(f"init_from={where}: its encoder {old} does not match this run's {ctx.encoder} "
                         "(same model size, and the same or a grown vocabulary, needed)")
    ours = Vocabulary.load(Path(ctx.data_dir) / "vocab.json")
    if ours.template_ids[:len(start.vocab.template_ids)] != start.vocab.template_ids:
        raise ValueError(f"init_from={where}: this run's vocabulary does not extend the model's (its first "
                         f"{len(start.vocab.template_ids)} templates differ): prepare the data with the model's "
                         "vocabulary (pipelines.tune does)")
    extra = new["vocab_size"] - old["vocab_size"]
    for key in ("tok.weight", "head_bias"):
        rows = state[key]
        known = rows[len(SPECIALS):] if len(rows) > len(SPECIALS) else rows
        state[key] = torch.cat([rows, known.mean(0, keepdim=True).expand(extra, *rows.shape[1:])])
    return state


class Pretrain(Stage):
    name = "pretrain"
    sets_latest = True

    def experiment(self, cfg) -> str:
        return cfg.logger.experiment

    def setup(self, cfg) -> Setup:
        from loglm.artifacts import verify_manifest
        from loglm.detect.calibrate import check_validation
        from loglm.ingest.prepare import prepared_dir, stale_reason
        from loglm.vocab import Vocabulary

        data_dir = prepared_dir(cfg.paths.root, cfg.data.name)
        if not (data_dir / "vocab.json").is_file():
            raise FileNotFoundError(f"{data_dir} has no prepared data: run `python -m pipelines.prepare data={cfg.data.name}`")
        summary = verify_manifest(data_dir)["summary"]
        stale = stale_reason(data_dir, cfg)
        if stale:
            raise ValueError(f"{stale}: prepare it again (python -m pipelines.prepare with the same data overrides) "
                             "before training on it")
        small_validation = check_validation(data_dir, cfg.detect, cfg.data)  # refused here, before any training
        if small_validation:
            print(f"loglm: WARNING: {small_validation}", flush=True)
        vocab = Vocabulary.load(data_dir / "vocab.json")
        tags = {"data_sha256": summary["data_sha256"], "model_size": cfg.model.name}
        if small_validation:
            tags["calibration_warning"] = small_validation
        return Setup(data_dir, data_dir / "vocab.json", encoder_config(cfg, vocab.size, vocab.gap_buckets, vocab.n_facets),
                     tags)

    def build_module(self, cfg, ctx: RunContext):
        return build_module(cfg, ctx)

    def weights_meta(self, cfg, ctx: RunContext) -> dict:
        return {"objective": dataclasses.asdict(cfg.objective)}

    def finish(self, cfg, ctx: RunContext, model) -> tuple[dict, dict, dict]:
        from loglm.detect.calibrate import calibrate

        return calibrate(model.encoder, Path(ctx.data_dir), cfg.detect, Path(ctx.model_dir), cfg.data), {}, {}


STAGE = Pretrain()


def run(cfg: RootConfig) -> dict:
    """Pretrain ``cfg.data`` with ``cfg.launcher`` (local | ray) and ``cfg.strategy``; returns the run's summary."""
    return run_job(cfg, STAGE)
