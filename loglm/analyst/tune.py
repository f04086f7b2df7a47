"""Tuning: continue pretraining a deployed model on its environment's new normal traffic plus the sessions
analysts marked benign, recalibrate, export, and register the result as a new version (``candidate``).

1. The new traffic (``inputs=[...]``) is read the way the model's data was, out of core as prepare reads
   (nothing holds the traffic in memory), with the model's **own** vocabulary.  With ``tune.grow_vocab``
   (the default) templates or flow sentences the model never saw, found in the new traffic's training
   sessions, become new tokens after the old ones (old ids and meanings stay; the new embedding rows start
   from the mean of the known ones); everything else it never saw stays ``[UNK]``, and so does a flow's
   direction-only form (``proto=.. dir=..``), however often it occurs: it is what a flow unlike every known
   service and size is written as, and as a token it would make every later unseen flow of that direction
   read as known.  Without it the vocabulary does not change and the new kinds stay ``[UNK]``.
   Tuning is for new kinds of normal traffic; day-to-day drift is recalibration's (``pipelines.calibrate``):
   tuned on a new day, a ``cic_flowprep`` model's next-day false positives rose (341 against 202 untuned,
   medians of 3 seeds; docs/analyst.md "A day of verdicts").  Then the model scores the new traffic as
   it read it (what the growth added is ``[UNK]`` to it): the sessions it alerts on that no analyst has
   judged are counted (``unvetted_alerting``), with a loud warning when they are far more than its
   threshold promises for normal traffic, since tuning takes them as normal.
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


def _verdicts(benign: set[str], malicious: set[str], counted: dict):
    """prepare's ``adjust``: the new traffic is taken as normal (unlabelled, as recalibration takes it);
    sessions with a ``benign`` verdict train whatever the hash says, ``malicious`` ones are kept out of both."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    def adjust(keys, split, label) -> None:
        label[:] = 0
        bad = pc.is_in(keys, value_set=pa.array(sorted(malicious), pa.string())).to_numpy(zero_copy_only=False)
        good = pc.is_in(keys, value_set=pa.array(sorted(benign), pa.string())).to_numpy(zero_copy_only=False)
        split[good & ~bad] = "train"
        split[bad] = "excluded_malicious"
        counted["kept_out"] = int(np.sum(bad))

    return adjust


def grown_vocabulary(vocab, texts, flows, min_count: int):
    """``vocab`` plus a token for each template (or flow sentence) that the training sessions of the new
    traffic hold at least ``min_count`` times and ``vocab`` reads as ``[UNK]``.  ``texts``: the training
    sessions' distinct messages with counts (Counter), ``flows``: their flows (``TrainingFlows``, or None):
    what prepare counts, so nothing holds the traffic.  Old tokens keep their ids and meaning (new templates
    are mined apart from the old ones and appended; flow forms the codec never wrote become known, by its
    fitting rule); validation sessions and sessions analysts marked malicious add nothing.  Returns
    (vocabulary, what was added)."""
    import copy
    from collections import Counter

    import numpy as np

    from loglm.ingest.partitioned import mine
    from loglm.ingest.templates import TemplateMiner
    from loglm.vocab import UNK, Vocabulary

    def unknown(text: str) -> bool:
        tid = vocab.miner.match(text) if text else None
        return vocab.token(tid) == UNK

    unseen: Counter = Counter({t: c for t, c in texts.items() if unknown(t)})
    n_unseen = sum(unseen.values())
    codec = copy.deepcopy(vocab.flow_codec)
    sentences: set[str] = set()
    if codec is not None and flows is not None and len(flows):
        written, inverse = vocab.flow_codec.written(flows)
        unread = flows.take(np.array([unknown(t) for t in written], bool)[inverse])
        n_unseen += len(unread)
        sentences = codec.grow(unread)
        unseen.update(codec.sentences(unread))  # written as the grown codec writes them
    catch_all = 0
    if codec is not None:
        # a direction-only form (proto=.. dir=..) is what a flow unlike every known service and size is
        # written as: made a token from a few new flows, every later unseen flow of that direction (an attack's
        # among them) would read as known and stop alarming; it stays [UNK] (benchmarks.cic_rolling --tune:
        # rare inbound flows made it a token and Wednesday's DoS recall fell to 0.000 / 0.027)
        catch_all = sum(c for t, c in unseen.items() if codec.catch_all(t))
        unseen = Counter({t: c for t, c in unseen.items() if not codec.catch_all(t)})
    miner = TemplateMiner.from_state(vocab.miner.state())
    known: Counter = Counter()
    fresh_texts: Counter = Counter()
    for text, c in unseen.items():
        if not text:
            continue
        tid = miner.match(text)
        if tid is not None:  # a template the miner has but the vocabulary dropped (rare in training)
            known[tid] += c
        else:
            fresh_texts[text] += c
    fresh = TemplateMiner(miner.sim_threshold, miner.max_templates)
    fresh_ids = mine(fresh_texts, fresh)  # the canonical order prepare mines in
    appended = miner.append(fresh)
    for text, c in fresh_texts.items():
        known[appended[fresh_ids[text]]] += c
    keep = sorted(tid for tid, c in known.items() if c >= min_count and tid not in vocab.token_of)
    grown = Vocabulary(miner, vocab.template_ids + keep, vocab.gap_buckets, vocab.mask_params, codec,
                       vocab.time_resolution_s)
    return grown, {"from_size": vocab.size, "size": grown.size, "new_tokens": len(keep),
                   "new_flow_sentences": len(sentences), "unseen_train_events": n_unseen,
                   "catch_all_events_left_unseen": catch_all,
                   "examples": [miner.templates[t].text[:160] for t in keep[:20]]}


def unvetted_alerting(cfg, loaded, data_dir: Path, judged: set[str]) -> dict:
    """How many of the new traffic's sessions (``data_dir``) the model alerts on now and no analyst has judged
    (``judged``: the sessions with a verdict).  Tuning takes them as normal: whatever they
    hold (a benign drift, or an attack under way) becomes normal to the candidate.  Scored with the model's
    own vocabulary and threshold, a shard at a time: tokens the grown vocabulary added read as ``[UNK]``,
    as the model read those events; a loud warning when their share is far above the rate the model's
    threshold promises for normal traffic (5x its target)."""
    import sys

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from loglm.detect.detector import detect_config_of
    from loglm.detect.score_core import session_max
    from loglm.detect.torch_scoring import score_windows
    from loglm.shards import PIECE_ROWS, split_pieces
    from loglm.vocab import UNK
    from loglm.windows import windows_of

    dcfg = detect_config_of(loaded, cfg.detect)
    judged_ids = pa.array(sorted(judged), pa.string())
    best: dict[str, float] = {}
    n = loaded.vocab.size
    for t in split_pieces(data_dir, max_rows=min(cfg.data.shard_rows, PIECE_ROWS)):  # each session whole
        t = t.filter(pc.invert(pc.is_in(t.column("session_id"), value_set=judged_ids)))
        if not t.num_rows:
            continue
        tokens = t.column("tokens").combine_chunks()
        values = tokens.values.to_numpy(zero_copy_only=False)
        values = np.where(values >= n, UNK, values)  # grown tokens: [UNK] to the model before tuning
        t = t.set_column(t.schema.get_field_index("tokens"), "tokens",
                         pa.ListArray.from_arrays(tokens.offsets, pa.array(values, tokens.type.value_type)))
        ws = score_windows(loaded.encoder, *windows_of(t), dcfg)
        best.update(session_max(t.column("session_id").to_pylist(), ws.score))
    out = {"sessions": len(best), "alerting": 0, "share": 0.0}
    if not best:
        return out
    from loglm.detect.calibration_record import alert_threshold

    threshold = alert_threshold(loaded.calibration)  # sessions, the unit an alert is
    out["alerting"] = int(np.sum(np.fromiter(best.values(), float) > threshold))
    out["share"] = out["alerting"] / len(best)
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
    its training sessions hold and the model never saw when ``tune.grow_vocab``; out of core, as prepare
    reads (:func:`loglm.ingest.partitioned.prepare`).  Then counts the sessions the model alerts on that no
    verdict covers."""
    import time

    from loglm.artifacts import work_folder
    from loglm.ingest.partitioned import NothingAccepted
    from loglm.ingest.prepare import _run_partitioned, ingest_fingerprint, prepared_dir

    extra = {"tuned_from": str(loaded.folder), "feedback_benign": len(benign), "vocab_growth": None}
    counted: dict = {}

    def grow(vocab, texts, flows):
        grown, extra["vocab_growth"] = grown_vocabulary(vocab, texts, flows, cfg.tokenizer.min_count)
        return grown

    out = prepared_dir(cfg.paths.root, cfg.data.name)
    try:
        summary = _run_partitioned(cfg, out, ingest_fingerprint(cfg), time.perf_counter(), work_folder(out, "preparing"),
                                   extra, vocab=loaded.vocab, adjust=_verdicts(benign, malicious, counted),
                                   grow=grow if cfg.tune.grow_vocab else None)
    except NothingAccepted as e:
        raise ValueError(f"tune: {e}") from None
    summary["feedback_malicious_sessions_kept_out"] = counted.get("kept_out", 0)
    return out, {**summary, "unvetted_alerting": unvetted_alerting(cfg, loaded, out, benign | malicious)}


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
    from loglm.ingest.builders import BUILDERS

    model_dir = resolve_model_dir(cfg.ckpt, cfg.paths.root)
    loaded = load_model(model_dir, device=cfg.detect.device)
    benign, malicious = fb.sessions_by_verdict(cfg.tune.feedback) if cfg.tune.feedback else (set(), set())
    cfg = with_model_data(dataclasses.replace(cfg, detect=dataclasses.replace(cfg.detect, data_from="model")), model_dir)
    if cfg.data.format in BUILDERS:
        raise ValueError(f"data.format={cfg.data.format!r} is pre-sequenced: tuning reads raw logs or flows")
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
