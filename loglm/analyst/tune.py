"""Tuning: continue pretraining a deployed model on its environment's new normal traffic plus the sessions
analysts marked benign, recalibrate, export, and register the result as a new version (``candidate``).

1. The new traffic (``inputs=[...]``) is read the way the model's data was, with the model's **own**
   vocabulary.  With ``tune.grow_vocab`` (the default) templates or flow sentences the model never saw, found
   in the new traffic's training sessions, become new tokens after the old ones (old ids and meanings stay;
   the new embedding rows start from the mean of the known ones); everything else it never saw stays
   ``[UNK]``.  Without it the vocabulary does not change and the new kinds stay ``[UNK]``.
   Before that, the model scores the new traffic: the sessions it alerts on that no analyst has judged are
   counted (``unvetted_alerting``), with a loud warning when they are far more than its threshold promises
   for normal traffic, since tuning takes them as normal.
2. Sessions are split by a seeded hash: ``tune.val_frac`` of them calibrate the new threshold, the rest train.
   Sessions with a ``benign`` verdict (``tune.feedback``) train whatever the hash says; sessions with a
   ``malicious`` verdict are kept out of both.
3. Pretraining starts from the model's weights (``init_from``), ``tune.max_epochs`` at ``tune.lr``, as a new
   MLflow run (experiment ``loglm-tune``, tagged with the model it started from).
4. The new model is exported as a bundle and registered as a new version of ``export.registry_name`` with the
   alias ``tune.alias``; ``loglm model promote`` makes it champion, ``loglm model rollback`` undoes that.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path


def _parse(cfg, vocab, benign: set[str], malicious: set[str]):
    """The new traffic read with ``vocab``, taken as normal, split by the seeded hash; verdicts applied."""
    from loglm.ingest.prepare import parse_inputs
    from loglm.ingest.sessions import assign_splits

    data = cfg.data
    parsed = parse_inputs(list(data.inputs), data, vocab.miner, frozen=True, mask=vocab.mask_params,
                          codec=vocab.flow_codec)
    if parsed.account.accepted == 0:
        raise ValueError(f"tune: no line of {list(data.inputs)} was accepted with data.format={data.format!r}")
    for s in parsed.sessions:
        s.label = 0  # the new traffic is taken as normal (unlabelled), as recalibration does
    assign_splits(parsed.sessions, parsed.events, data.split)
    kept_out = 0
    for s in parsed.sessions:
        if s.session_id in malicious:
            s.split, kept_out = "excluded_malicious", kept_out + 1
        elif s.session_id in benign:
            s.split = "train"
    return parsed, kept_out


def grown_vocabulary(parsed, vocab, min_count: int):
    """``vocab`` plus a token for each template (or flow sentence) that the training sessions of the new
    traffic hold at least ``min_count`` times and ``vocab`` reads as ``[UNK]``.  Old tokens keep their ids and
    meaning (new templates are mined apart from the old ones and appended); validation sessions and sessions
    analysts marked malicious add nothing.  Returns (vocabulary, what was added)."""
    import copy
    from collections import Counter

    from loglm.ingest.templates import TemplateMiner
    from loglm.vocab import UNK, Vocabulary

    ev = parsed.events
    unseen = [j for s in parsed.sessions if s.split == "train" for j in s.event_idx
              if vocab.token(ev.template[j] if ev.template[j] >= 0 else None) == UNK]
    codec = copy.deepcopy(vocab.flow_codec)
    sentences = codec.grow([ev.fields[j] for j in unseen]) if codec is not None else set()
    texts = [codec.sentence(ev.fields[j]) if codec is not None else ev.masked[j] for j in unseen]
    miner = TemplateMiner.from_state(vocab.miner.state())
    counts: Counter = Counter()
    fresh = TemplateMiner(miner.sim_threshold, miner.max_templates)
    for text in texts:
        if not text:
            continue
        tid = miner.match(text)
        if tid is not None:  # a template the miner has but the vocabulary dropped (rare in training)
            counts[tid] += 1
        else:
            counts[("new", fresh.add(text))] += 1
    appended = miner.append(fresh)
    keep: list[int] = []
    for key, c in counts.items():
        tid = appended[key[1]] if isinstance(key, tuple) else key
        if c >= min_count and tid not in vocab.token_of and tid not in keep:
            keep.append(tid)
    keep.sort()
    grown = Vocabulary(miner, vocab.template_ids + keep, vocab.gap_buckets, vocab.mask_params, codec,
                       vocab.time_resolution_s)
    return grown, {"from_size": vocab.size, "size": grown.size, "new_tokens": len(keep),
                   "new_flow_sentences": len(sentences), "unseen_train_events": len(unseen),
                   "examples": [miner.templates[t].text[:160] for t in keep[:20]]}


def retemplate(parsed, vocab) -> None:
    """Every event matched again against ``vocab``'s grown miner and flow codec, in place, as reading the
    inputs with it would (a flow may now be written in a newly known form); sessions and splits do not
    depend on templates, so nothing is read again."""
    ev, codec = parsed.events, vocab.flow_codec
    for j in range(len(ev.template)):
        text = codec.sentence(ev.fields[j]) if codec is not None and ev.fields[j] is not None else ev.masked[j]
        found = vocab.miner.match(text) if text else None
        ev.template[j], ev.masked[j] = (-1 if found is None else found), text


def unvetted_alerting(cfg, loaded, parsed, benign: set[str], malicious: set[str]) -> dict:
    """How many of the new traffic's sessions the model alerts on now and no analyst has judged.  Tuning takes
    them as normal: whatever they hold (a benign drift, or an attack under way) becomes normal to the
    candidate.  Scored with the model's own vocabulary and threshold, before any growth; a loud warning when
    their share is far above the rate the model's threshold promises for normal traffic (5x its target)."""
    import sys

    import numpy as np

    from loglm.detect.detector import detect_config_of
    from loglm.detect.score_core import session_max
    from loglm.detect.torch_scoring import score_windows
    from loglm.shards import session_table
    from loglm.windows import windows_of

    sessions = [s for s in parsed.sessions if s.session_id not in benign and s.session_id not in malicious]
    out = {"sessions": len(sessions), "alerting": 0, "share": 0.0}
    if not sessions:
        return out
    dcfg = detect_config_of(loaded, cfg.detect)
    table = session_table(sessions, parsed.events, loaded.vocab)
    ws = score_windows(loaded.encoder, *windows_of(table), dcfg)
    best = session_max(table.column("session_id").to_pylist(), ws.score)
    threshold = float(loaded.calibration["threshold"])
    out["alerting"] = int(np.sum(np.fromiter(best.values(), float) > threshold))
    out["share"] = out["alerting"] / len(best)
    out["sessions"] = len(best)
    target = float(loaded.calibration["target_fpr"])
    if out["share"] > 5 * target:
        print(f"loglm tune: WARNING: the model alerts on {out['alerting']:,} of the {len(best):,} sessions it is "
              f"about to be tuned on ({out['share']:.1%}, against the {target:g} its threshold promises for normal "
              "traffic), and no analyst has judged them: tuning takes them as normal, so whatever they hold, an "
              "attack under way included, becomes normal to the candidate. Give verdicts on them (tune.feedback: "
              "malicious sessions are kept out) or tune on traffic you have vetted.", file=sys.stderr, flush=True)
    return out


def prepare_with_vocab(cfg, loaded, benign: set[str], malicious: set[str]) -> tuple[Path, dict]:
    """Write ``cfg.data`` (the new traffic) as a prepared dataset in ``loaded``'s vocabulary, grown by what
    its training sessions hold and the model never saw when ``tune.grow_vocab``."""
    from loglm.ingest.prepare import ingest_fingerprint, prepared_dir, write_prepared_in_place

    vocab, growth = loaded.vocab, None
    parsed, kept_out = _parse(cfg, vocab, benign, malicious)
    unvetted = unvetted_alerting(cfg, loaded, parsed, benign, malicious)
    if cfg.tune.grow_vocab:
        vocab, growth = grown_vocabulary(parsed, vocab, cfg.tokenizer.min_count)
        if growth["new_tokens"]:  # the new tokens replace [UNK] in every split
            retemplate(parsed, vocab)
    out = prepared_dir(cfg.paths.root, cfg.data.name)
    summary = write_prepared_in_place(out, parsed, vocab, cfg.data, {
        "fingerprint": ingest_fingerprint(cfg), "tuned_from": str(loaded.folder), "feedback_benign": len(benign),
        "feedback_malicious_sessions_kept_out": kept_out, "vocab_growth": growth})
    return out, {**summary, "unvetted_alerting": unvetted}


def run(cfg) -> dict:
    from loglm.analyst import feedback as fb
    from loglm.detect.detector import with_model_data
    from loglm.export.writer import run as export
    from loglm.model.store import load_model, resolve_model_dir
    from loglm.training.pretrain import run as pretrain

    if not cfg.ckpt:
        raise ValueError("give the model to tune: ckpt=<model dir | run id | models:/loglm-detector@champion>")
    if not cfg.inputs:
        raise ValueError("give the environment's recent traffic: inputs=[file or directory, ...]")
    model_dir = resolve_model_dir(cfg.ckpt, cfg.paths.root)
    loaded = load_model(model_dir)
    verdicts = fb.read(cfg.tune.feedback) if cfg.tune.feedback else {}
    benign = {r["session_id"] for r in verdicts.values() if r["verdict"] == "benign"}
    malicious = {r["session_id"] for r in verdicts.values() if r["verdict"] == "malicious"}
    cfg = with_model_data(dataclasses.replace(cfg, detect=dataclasses.replace(cfg.detect, data_from="model")), model_dir)
    tag = hashlib.sha256(("|".join(sorted(map(str, cfg.inputs))) + str(model_dir)).encode()).hexdigest()[:8]
    data = dataclasses.replace(
        cfg.data, name=f"tune-{loaded.meta.get('dataset', 'model')}-{tag}", inputs=list(cfg.inputs),
        anomalous_ids=None, train_normal_only=False,
        split=dataclasses.replace(cfg.data.split, method="seeded", train_frac=1 - cfg.tune.val_frac,
                                  val_frac=cfg.tune.val_frac, test_from=None))
    enc = loaded.encoder.cfg
    model = dataclasses.replace(cfg.model, d_model=enc.d_model, n_layers=enc.n_layers, n_heads=enc.n_heads,
                                d_ff=enc.d_ff, max_len=enc.max_len, dropout=enc.dropout)
    tcfg = dataclasses.replace(cfg, data=data, model=model, init_from=str(model_dir),
                               trainer=dataclasses.replace(cfg.trainer, max_epochs=cfg.tune.max_epochs, lr=cfg.tune.lr),
                               logger=dataclasses.replace(cfg.logger, experiment="loglm-tune",
                                                          run_name=f"tune-{loaded.meta.get('dataset', 'model')}",
                                                          tags={**cfg.logger.tags, "tuned_from": str(model_dir)}),
                               detect=dataclasses.replace(cfg.detect, small_validation="warn"))
    data_dir, summary = prepare_with_vocab(tcfg, loaded, benign, malicious)
    trained = pretrain(tcfg)
    out = {"model_dir": trained["model_dir"], "run_id": trained["run_id"], "tuned_from": str(model_dir),
           "data_dir": str(data_dir), "sessions_by_split": summary["sessions_by_split"],
           "feedback": {"benign": len(benign), "malicious": len(malicious)},
           "vocab_growth": summary.get("vocab_growth"),
           # sessions the model alerted on before tuning that no verdict covered: taken as normal all the same
           "unvetted_alerting": summary["unvetted_alerting"],
           "threshold": {"before": loaded.calibration["threshold"], "after": trained["calibration"]["threshold"]},
           "validation_items": trained["calibration"].get("n_val_sessions"),
           # too little new traffic validates the new threshold: say so where the result is read
           "calibration_warning": trained["calibration"].get("warning")}
    if out["calibration_warning"]:
        import sys

        print(f"loglm tune: the candidate's threshold is not trustworthy: {out['calibration_warning']}", file=sys.stderr)
    if cfg.tune.export:
        ecfg = dataclasses.replace(tcfg, ckpt=trained["model_dir"],
                                   export=dataclasses.replace(tcfg.export, alias=cfg.tune.alias, out=None))
        out["export"] = export(ecfg)
    return out
