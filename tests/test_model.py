from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from loglm.config import DetectConfig
from loglm.detect.metrics import detection_metrics, f1_ceiling, reweighted_f1, unique_items
from loglm.detect.score_core import calibrated_config
from loglm.detect.torch_scoring import score_windows, threshold_for_fpr
from loglm.model.encoder import EncoderConfig, LogEncoder
from loglm.objectives import IGNORE, hide_as_unseen, mask_events
from loglm.training.data import BucketBatchSampler, collate
from loglm.vocab import END, MASK, PAD, SUM, UNK, gap_bucket
from loglm.windows import length_batches


def tiny(vocab=20) -> LogEncoder:
    torch.manual_seed(0)
    return LogEncoder(EncoderConfig(vocab_size=vocab, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0,
                                    max_len=64)).eval()


def test_collate_adds_summary_and_end_only_for_closed():
    b = collate([(np.array([7, 8, 9]), np.array([0, 1, 2]), True), (np.array([7]), np.array([0]), False)])
    assert b["tokens"].tolist() == [[SUM, 7, 8, 9, END], [SUM, 7, PAD, PAD, PAD]]
    assert b["pad_mask"].sum(1).tolist() == [5, 2]


def test_padding_does_not_change_outputs():
    enc = tiny()
    short = collate([(np.array([5, 6, 7]), np.array([0, 0, 1]), True)])
    padded = collate([(np.array([5, 6, 7]), np.array([0, 0, 1]), True), (np.arange(5, 15), np.zeros(10, int), True)])
    with torch.no_grad():
        a = enc(short["tokens"], short["gaps"], short["pad_mask"])[0]
        b = enc(padded["tokens"], padded["gaps"], padded["pad_mask"])[0, : a.shape[0]]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_too_long_sequence_is_a_clear_error():
    enc = tiny()
    t = torch.full((1, 65), 5)
    with pytest.raises(ValueError, match="max_len"):
        enc(t, torch.zeros_like(t), torch.ones_like(t, dtype=torch.bool))


def test_masking_targets_only_event_positions_and_at_least_one():
    b = collate([(np.array([5, 6]), np.array([0, 0]), True), (np.arange(5, 25), np.zeros(20, int), False)])
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        inputs, labels = mask_events(b["tokens"], b["pad_mask"], 0.15, 30, gen)
        target = labels != IGNORE
        assert not target[:, 0].any()  # never the summary token
        assert not (target & ~b["pad_mask"]).any()  # never padding
        assert target.any(1).all()  # every sequence has a target
        assert (inputs[target] == MASK).float().mean() > 0.3


def test_unseen_events_in_training_context_never_hide_targets_summary_or_padding():
    """objective.unk_rate: context events read as [UNK] at about the asked rate; the events the loss predicts,
    the summary token and padding never do, and a rate of 0 changes nothing."""
    b = collate([(np.arange(5, 205) % 25 + 5, np.zeros(200, int), True), (np.array([7, 8]), np.zeros(2, int), False)])
    gen = torch.Generator().manual_seed(0)
    inputs, labels = mask_events(b["tokens"], b["pad_mask"], 0.15, 30, gen)
    target = labels != IGNORE
    assert torch.equal(hide_as_unseen(inputs, b["pad_mask"], target, 0.0, gen), inputs)
    hidden = hide_as_unseen(inputs, b["pad_mask"], target, 0.2, gen) == UNK
    assert not (hidden & target).any() and not hidden[:, 0].any() and not (hidden & ~b["pad_mask"]).any()
    context = b["pad_mask"] & ~target
    context[:, 0] = False
    assert 0.12 < hidden.sum() / context.sum() < 0.28
    assert (inputs != UNK).all()  # the only [UNK] are the hidden ones


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_training_shows_the_encoder_unseen_events_only_with_unk_rate(rate):
    """A batch of known events shows the encoder no [UNK] without objective.unk_rate; with it, training
    batches do, and validation batches never."""
    from loglm.training.module import LogLMModule

    torch.manual_seed(0)
    module = LogLMModule({"vocab_size": 30, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "dropout": 0.0,
                          "max_len": 64}, hypersphere_weight=0.0, unk_rate=rate)
    seen = []
    forward = module.encoder.forward
    module.encoder.forward = lambda tokens, *a, **k: seen.append(tokens.clone()) or forward(tokens, *a, **k)
    b = collate([(np.arange(5, 45) % 25 + 5, np.zeros(40, int), True) for _ in range(4)])
    module.train()._step(b)
    module.eval()._step(b, torch.Generator().manual_seed(0))
    assert bool((seen[0] == UNK).any()) == (rate > 0)
    assert not (seen[1] == UNK).any()

    # distillation trains the student under the teacher's rule (pipelines.distill passes its objective's rate)
    from loglm.training.distill_module import DistillModule

    del module.encoder.forward  # the teacher: its own forward again

    student = DistillModule(module.encoder, {"vocab_size": 30, "d_model": 8, "n_layers": 1, "n_heads": 2,
                                             "d_ff": 16, "dropout": 0.0, "max_len": 64}, 0.15, 2.0, 1.0, 0.0, 0.0,
                            1e-3, "random", unk_rate=rate)
    seen.clear()
    student_forward = student.student.forward
    student.student.forward = lambda tokens, *a, **k: seen.append(tokens.clone()) or student_forward(tokens, *a, **k)
    student.train()._losses(b)
    student.eval()._losses(b, torch.Generator().manual_seed(0))
    assert bool((seen[0] == UNK).any()) == (rate > 0)
    assert not (seen[1] == UNK).any()


def test_scoring_cost_is_constant_in_window_length():
    enc = tiny()
    calls = []
    enc.register_forward_hook(lambda *a: calls.append(1))
    cfg = DetectConfig(n_views=4, batch_size=8)
    for length in (3, 40):
        calls.clear()
        toks = [np.full(length, 6)] * 4
        score_windows(enc, toks, [np.zeros(length, int)] * 4, [True] * 4, cfg)
        assert len(calls) == 4, length  # one forward per view, whatever the length


def test_replaced_event_head_scores_in_one_pass():
    torch.manual_seed(0)
    enc = LogEncoder(EncoderConfig(vocab_size=20, d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0,
                                   max_len=64, rtd_head=True)).eval()
    calls = []
    enc.register_forward_hook(lambda *a: calls.append(1))
    cfg = DetectConfig(scorer="rtd", batch_size=8, unk_surprisal=20.0)
    toks = [np.array([5, 6, UNK, 7]), np.arange(5, 20)]
    ws = score_windows(enc, toks, [np.zeros(len(t), int) for t in toks], [True, False], cfg)
    assert len(calls) == 1  # one forward for the whole batch, any window length
    assert [len(s) for s in ws.surprisal] == [5, 15]
    assert ws.surprisal[0][2] == pytest.approx(20.0) and (ws.surprisal[1] > 0).all()
    with pytest.raises(ValueError, match="replaced-event"):
        score_windows(tiny(), toks, [np.zeros(len(t), int) for t in toks], [True, True], cfg)


def test_unk_events_get_maximal_surprisal_and_miss():
    enc = tiny()
    cfg = DetectConfig(n_views=2, unk_surprisal=20.0, top_k=3)
    ws = score_windows(enc, [np.array([5, UNK, 6])], [np.zeros(3, int)], [False], cfg)
    assert ws.surprisal[0][1] == pytest.approx(20.0)
    assert ws.n_miss[0] >= 1 and ws.n_events[0] == 3


@pytest.mark.parametrize("score", ["miss_ratio", "mean_surprisal", "median_surprisal", "max_surprisal",
                                   "mean_excess_surprisal"])
def test_one_unknown_event_outscores_any_window_of_known_events(score):
    # a long session with one template training never saw must not be averaged below the threshold
    enc = tiny()
    rng = np.random.default_rng(0)
    known = [rng.integers(5, 20, size=60) for _ in range(20)]
    long_with_unk = np.concatenate([known[0][:59], [UNK]])
    toks = known + [long_with_unk]
    gaps = [np.zeros(len(t), int) for t in toks]
    on = score_windows(enc, toks, gaps, [True] * len(toks), DetectConfig(n_views=3, score=score))
    assert on.score[-1] > on.score[:-1].max()
    off = score_windows(enc, toks, gaps, [True] * len(toks), DetectConfig(n_views=3, score=score, unknown_alarm=False))
    assert off.score[-1] == pytest.approx(on.score[-1] - (1.0 if score == "miss_ratio" else 20.0))
    # detection scores the way the threshold was calibrated; old calibrations had no alarm
    cal = {"score": score, "top_k": 5, "n_views": 3, "unk_surprisal": 20.0, "scorer": "views"}
    assert calibrated_config(DetectConfig(), cal).unknown_alarm is False
    assert calibrated_config(DetectConfig(), {**cal, "unknown_alarm": True}).unknown_alarm is True


def test_median_surprisal_is_the_median_of_each_windows_positions():
    enc = tiny()
    rng = np.random.default_rng(2)
    toks = [rng.integers(5, 20, size=int(n)) for n in (1, 2, 7, 30)]
    gaps = [np.zeros(len(t), int) for t in toks]
    closed = [True, False, True, False]
    small = DetectConfig(n_views=3, score="median_surprisal", batch_size=2)
    ws = score_windows(enc, toks, gaps, closed, small)
    for i in range(len(toks)):  # positions: the events, and [END] for a closed window
        assert len(ws.surprisal[i]) == len(toks[i]) + closed[i]
        assert ws.score[i] == pytest.approx(float(np.median(ws.surprisal[i])), rel=1e-5)
    whole = score_windows(enc, toks, gaps, closed, DetectConfig(n_views=3, score="median_surprisal"))
    np.testing.assert_allclose(ws.score, whole.score, rtol=1e-4, atol=1e-6)


def test_mean_excess_surprisal_is_each_events_surprisal_beyond_the_predictions_entropy():
    """One masked event per view (n_views above every length), computed here with the encoder directly:
    the window's score is the mean over its events of -log p(event) minus the entropy of that prediction;
    [UNK] counts unk_surprisal in full; the reported per-event surprisal is unchanged."""
    enc = tiny().eval()
    rng = np.random.default_rng(4)
    toks = [rng.integers(5, 20, size=int(n)) for n in (1, 4, 11)] + [np.array([5, UNK, 6, 7])]
    gaps = [np.zeros(len(t), int) for t in toks]
    cfg = DetectConfig(n_views=64, score="mean_excess_surprisal", end_in_score=False, unknown_alarm=False,
                       unk_surprisal=20.0)
    ws = score_windows(enc, toks, gaps, [True] * len(toks), cfg)
    plain = score_windows(enc, toks, gaps, [True] * len(toks),
                          DetectConfig(n_views=64, end_in_score=False, score="mean_surprisal", unknown_alarm=False))
    for i, t in enumerate(toks):
        seq = np.concatenate([[SUM], t, [END]])
        excess = []
        for p in range(1, len(t) + 1):
            if seq[p] == UNK:
                excess.append(20.0)
                continue
            masked = seq.copy()
            masked[p] = MASK
            with torch.inference_mode():
                h = enc(torch.tensor(masked)[None], torch.zeros(1, len(seq), dtype=torch.long),
                        torch.ones(1, len(seq), dtype=torch.bool))
                logp = torch.log_softmax(enc.logits(h[0, p]).float(), -1)
            excess.append(float(-logp[seq[p]] + (logp.exp() * logp).sum()))
        assert ws.score[i] == pytest.approx(float(np.mean(excess)), rel=1e-4, abs=1e-5)
        np.testing.assert_allclose(ws.surprisal[i], plain.surprisal[i], rtol=1e-6)
    # every known event costs its surprisal less the entropy; the rule needs the full prediction
    assert (np.asarray(ws.score) < np.asarray(plain.score)).all()
    with pytest.raises(ValueError, match="scorer=views"):  # refused when the config is built, before any work
        DetectConfig(scorer="rtd", score="mean_excess_surprisal")
    from loglm.config import compose

    with pytest.raises(ValueError, match="scorer=views"):
        compose("detect", ["detect.score=mean_excess_surprisal", "detect.scorer=rtd"])


@pytest.mark.parametrize("score", ["miss_ratio", "mean_surprisal", "median_surprisal", "max_surprisal"])
def test_end_left_out_of_the_score_reads_the_windows_events_only(score):
    """``detect.end_in_score=false`` (time windows): a closed window scores as its events alone, the same as
    the open window of those events; [END] stays a scored position (evidence, ``end_miss``)."""
    enc = tiny()
    rng = np.random.default_rng(3)
    toks = [rng.integers(5, 20, size=int(n)) for n in (1, 2, 3, 9)]
    gaps = [np.zeros(len(t), int) for t in toks]
    off = DetectConfig(n_views=3, score=score, end_in_score=False)
    closed = score_windows(enc, toks, gaps, [True] * 4, off)
    rules = {"mean_surprisal": np.mean, "median_surprisal": np.median, "max_surprisal": np.max}
    for i, t in enumerate(toks):
        assert len(closed.surprisal[i]) == len(t) + 1  # [END] still scored and reported
        events = closed.surprisal[i][:-1].astype(np.float64)
        if score in rules:
            assert closed.score[i] == pytest.approx(float(rules[score](events)), rel=1e-5)
        else:
            misses = (closed.rank[i][:-1] >= off.top_k).mean()
            assert misses <= closed.score[i] < misses + 1e-3
    on = score_windows(enc, toks, gaps, [True] * 4, DetectConfig(n_views=3, score=score))
    if score in rules:  # by default [END] is one of the positions the rule reads
        for i in range(len(toks)):
            assert on.score[i] == pytest.approx(float(rules[score](on.surprisal[i].astype(np.float64))), rel=1e-5)
    if score == "mean_surprisal":
        assert not np.allclose(on.score, closed.score)
    # detection follows the calibration; calibrations made before the setting counted [END]
    cal = {"score": score, "top_k": 5, "n_views": 3, "unk_surprisal": 20.0, "scorer": "views"}
    assert calibrated_config(DetectConfig(), cal).end_in_score is True
    assert calibrated_config(DetectConfig(), {**cal, "end_in_score": False}).end_in_score is False


def test_time_windows_leave_end_out_of_the_score_unless_told():
    from loglm.config import DataConfig, SessionConfig
    from loglm.detect.calibrate import with_end_rule

    def data(by):
        return DataConfig(name="x", format="hdfs", session=SessionConfig(by=by))

    assert with_end_rule(DetectConfig(), data("entity_window")).end_in_score is False
    assert with_end_rule(DetectConfig(), data("window")).end_in_score is False
    for by in ("entity", "event", "count"):
        assert with_end_rule(DetectConfig(), data(by)).end_in_score is True
    assert with_end_rule(DetectConfig(end_in_score=True), data("window")).end_in_score is True
    assert with_end_rule(DetectConfig(end_in_score=False), data("entity")).end_in_score is False
    assert with_end_rule(DetectConfig(), None).end_in_score is True


@pytest.mark.parametrize("score", ["miss_ratio", "mean_surprisal", "mean_excess_surprisal"])
def test_a_closed_window_shorter_than_every_training_window_alarms_like_an_unseen_event(score):
    """``detect.short_alarm``: a closed window with fewer events than ``min_closed_events`` (the shortest closed
    normal training window, set at calibration) is lifted by the unseen-event alarm; an open window of the same
    events, a window as long as that, time windows (``end_in_score`` false) and older calibrations are not."""
    enc = tiny()
    rng = np.random.default_rng(5)
    toks = [rng.integers(5, 20, size=n) for n in (2, 4, 5, 9, 2)]
    gaps = [np.zeros(len(t), int) for t in toks]
    closed = [True, True, True, True, False]
    off = score_windows(enc, toks, gaps, closed, DetectConfig(n_views=3, score=score, short_alarm=False,
                                                              min_closed_events=5))
    on = score_windows(enc, toks, gaps, closed, DetectConfig(n_views=3, score=score, min_closed_events=5))
    assert on.shorter.tolist() == [True, True, False, False, False]
    alarm = 1.0 if score == "miss_ratio" else 20.0
    np.testing.assert_allclose(np.asarray(on.score) - np.asarray(off.score), [alarm, alarm, 0, 0, 0], atol=1e-6)
    assert (np.asarray(on.score)[:2] > np.asarray(on.score)[2:].max()).all()  # above every window without it
    timed = score_windows(enc, toks, gaps, closed, DetectConfig(n_views=3, score=score, min_closed_events=5,
                                                                end_in_score=False))
    assert not timed.shorter.any()
    # detection follows the calibration; calibrations written before the rule had none
    cal = {"score": score, "top_k": 5, "n_views": 3, "unk_surprisal": 20.0, "scorer": "views"}
    assert calibrated_config(DetectConfig(), cal).min_closed_events == 0
    assert not calibrated_config(DetectConfig(), cal).short_alarm
    got = calibrated_config(DetectConfig(min_closed_events=99), {**cal, "short_alarm": True, "min_closed_events": 13})
    assert got.short_alarm and got.min_closed_events == 13


@pytest.mark.parametrize("score", ["mean_excess_surprisal", "miss_ratio"])
def test_per_event_an_unseen_event_alarms_alone_and_its_neighbours_keep_their_own_score(score):
    """``detect.alarm_unit=event`` (per-flow units): an event the model never saw scores its window's score,
    lifted by the alarm; its window's other events score the rule over the known events alone, not the lift;
    windows themselves score as they did (alerts unchanged).  ``alarm_unit=window``: every event carries its
    session's score.  Calibration decides the unit from ``data.eval_unit`` and records it; older
    calibrations keep the window."""
    from loglm.config import DataConfig
    from loglm.detect.calibrate import with_alarm_unit
    from loglm.detect.score_core import event_alarm_scores, event_item_scores
    from loglm.vocab import UNK

    enc = tiny()
    rng = np.random.default_rng(11)
    toks = [rng.integers(5, 20, size=n) for n in (6, 5, 4)]
    toks[0][2] = UNK
    gaps = [np.zeros(len(t), int) for t in toks]
    closed = [False, False, False]
    sids = ["a", "b", "a"]  # session a is cut into two windows
    cfgs = {u: DetectConfig(n_views=3, score=score, alarm_unit=u, end_in_score=False, event_score="window")
            for u in ("window", "event")}
    ws = {u: score_windows(enc, toks, gaps, closed, c) for u, c in cfgs.items()}
    np.testing.assert_allclose(ws["event"].score, ws["window"].score)  # windows (alerts) unchanged
    lift = 1.0 if score == "miss_ratio" else 20.0
    per = {u: event_item_scores(cfgs[u], event_alarm_scores(cfgs[u], sids, ws[u]), sids, toks) for u in cfgs}
    session_a = max(ws["window"].score[0], ws["window"].score[2])
    np.testing.assert_allclose(per["window"], [session_a] * 6 + [ws["window"].score[1]] * 5 + [session_a] * 4)
    ev = per["event"]
    assert ev[2] == session_a and session_a >= lift  # the unseen event: its session's alarmed score
    known_a = max(ws["event"].known_base[0], ws["event"].known_base[2])
    np.testing.assert_allclose(np.delete(ev[:6], 2), known_a)  # its neighbours: the known events' score
    assert known_a < session_a and np.allclose(ev[6:11], ws["event"].score[1])  # a window without one: its score
    np.testing.assert_allclose(ev[11:], known_a)
    # the unit follows what is reported, unless set; older calibrations keep the window
    assert with_alarm_unit(DetectConfig(), DataConfig(eval_unit="event")).alarm_unit == "event"
    assert with_alarm_unit(DetectConfig(), DataConfig()).alarm_unit == "window"
    assert with_alarm_unit(DetectConfig(alarm_unit="window"), DataConfig(eval_unit="event")).alarm_unit == "window"
    cal = {"score": score, "top_k": 5, "n_views": 3, "unk_surprisal": 20.0, "scorer": "views"}
    assert calibrated_config(DetectConfig(alarm_unit="event"), cal).alarm_unit == "window"
    assert calibrated_config(DetectConfig(), {**cal, "alarm_unit": "event"}).alarm_unit == "event"


@pytest.mark.parametrize("score", ["mean_surprisal", "mean_excess_surprisal", "miss_ratio"])
def test_per_event_own_scores_a_known_event_alone_and_its_window_by_its_highest_event(score):
    """``detect.event_score=own`` (the default where an unseen event alarms alone, ``alarm_unit=event``): a known
    event's item is the score rule over that event alone (its surprisal, its excess, its miss), not its
    window's, so an ordinary flow beside a surprising one is not flagged with it; the window scores its highest
    event (plus the alarm where it holds an unseen one), so a window alerts exactly when one of its events
    does.  Calibration records the setting; calibrations from before it keep the window's score."""
    from loglm.detect.calibrate import calibration_of
    from loglm.detect.score_core import event_alarm_scores, event_item_scores
    from loglm.vocab import UNK

    enc = tiny()
    rng = np.random.default_rng(12)
    toks = [rng.integers(5, 20, size=n) for n in (7, 5, 6)]
    toks[0][3] = UNK
    gaps = [np.zeros(len(t), int) for t in toks]
    closed = [False] * 3
    sids = ["a", "b", "a"]
    own_cfg = DetectConfig(n_views=3, score=score, alarm_unit="event", end_in_score=False)
    assert own_cfg.event_score == "own"
    win_cfg = dataclasses.replace(own_cfg, event_score="window")
    ws, wsw = score_windows(enc, toks, gaps, closed, own_cfg), score_windows(enc, toks, gaps, closed, win_cfg)
    items = event_item_scores(own_cfg, event_alarm_scores(own_cfg, sids, ws), sids, toks, ws=ws)
    # what one event alone scores under each rule, from the per-position surprisals and ranks
    s = np.concatenate([w[:len(t)] for w, t in zip(ws.surprisal, toks)]).astype(np.float64)
    rank = np.concatenate([r[:len(t)] for r, t in zip(ws.rank, toks)])
    unseen = np.concatenate(toks) == UNK
    if score == "mean_surprisal":
        np.testing.assert_allclose(items[~unseen], s[~unseen], rtol=1e-6)
    elif score == "miss_ratio":
        np.testing.assert_allclose(items[~unseen], (rank >= 5)[~unseen] + s[~unseen] / own_cfg.tie_scale, rtol=1e-6)
    else:  # the surprisal less the prediction's entropy: never above the surprisal
        assert (items[~unseen] <= s[~unseen] + 1e-6).all() and np.ptp(items[~unseen]) > 0
    assert len(np.unique(items[:3])) > 1  # one window's known events: each its own score
    # the unseen event alarms; every window scores its highest event, so it alerts when one of them does
    assert items[3] >= (1.0 if score == "miss_ratio" else 20.0) and items[3] == ws.score[0]
    starts = np.cumsum([0] + [len(t) for t in toks])
    for r in (1, 2):
        assert np.isclose(ws.score[r], items[starts[r]:starts[r + 1]].max())
    np.testing.assert_allclose(np.delete(items[:7], 3).max(), ws.known_base[0])
    # the window setting gives every known event of a window one score
    wit = event_item_scores(win_cfg, event_alarm_scores(win_cfg, sids, wsw), sids, toks, ws=wsw)
    assert len(np.unique(np.round(wit[7:12], 9))) == 1
    # recorded by calibration; older calibrations (no key) keep the window's score
    assert calibration_of(items, own_cfg, "normal", None)["event_score"] == "own"
    cal = {"score": score, "top_k": 5, "n_views": 3, "unk_surprisal": 20.0, "scorer": "views", "alarm_unit": "event"}
    assert calibrated_config(DetectConfig(), cal).event_score == "window"
    assert calibrated_config(DetectConfig(event_score="window"), {**cal, "event_score": "own"}).event_score == "own"
    with pytest.raises(ValueError, match="event_score"):
        DetectConfig(event_score="flow")


def test_the_short_window_rule_takes_the_shortest_closed_normal_training_window(tmp_path):
    """What calibration records: open windows, anomalous ones and other splits do not set the length."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loglm.detect.calibrate import with_short_rule

    (tmp_path / "sessions").mkdir()
    rows = [("train", 0, True, 7), ("train", 0, True, 12), ("train", 0, False, 3), ("train", 1, True, 2),
            ("val", 0, True, 4), ("test", 0, True, 1)]
    for i, part in enumerate((rows[:3], rows[3:])):
        pq.write_table(pa.table({"split": [r[0] for r in part], "label": pa.array([r[1] for r in part], pa.int8()),
                                 "closed": [r[2] for r in part],
                                 "tokens": pa.array([[5] * r[3] for r in part], pa.list_(pa.int32()))}),
                       tmp_path / "sessions" / f"shard-{i:05d}.parquet")
    assert with_short_rule(DetectConfig(end_in_score=True), tmp_path).min_closed_events == 7
    assert with_short_rule(DetectConfig(end_in_score=False), tmp_path).min_closed_events == 0
    assert with_short_rule(DetectConfig(end_in_score=True, short_alarm=False), tmp_path).min_closed_events == 0


def test_length_batches_bound_windows_and_padded_positions():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 300, size=500).tolist() + [5000]
    batches = length_batches(lengths, batch_size=64, max_tokens=4096)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every window, once
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 64 and (len(b) * (longest + 2) <= 4096 or len(b) == 1)
    # scores do not depend on how windows are batched
    enc, cfg = tiny(), DetectConfig(n_views=3)
    toks = [rng.integers(5, 20, size=int(n)) for n in rng.integers(1, 60, size=40)]
    gaps = [np.zeros(len(t), int) for t in toks]
    a = score_windows(enc, toks, gaps, [True] * 40, cfg)
    b = score_windows(enc, toks, gaps, [True] * 40, DetectConfig(n_views=3, batch_size=3, max_batch_tokens=100))
    np.testing.assert_allclose(a.score, b.score, rtol=1e-4, atol=1e-6)


def test_threshold_for_fpr_bounds_validation_fpr():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=1000)
    for fpr in (0.001, 0.01, 0.05):
        t = threshold_for_fpr(normal, fpr)
        assert (normal > t).mean() <= fpr
    assert (normal > threshold_for_fpr(normal, 0.05)).mean() > 0.04
    with pytest.raises(ValueError):
        threshold_for_fpr(np.array([]), 0.01)
    with pytest.raises(ValueError, match="target_fpr"):
        threshold_for_fpr(normal, 0.0)


def test_conformal_threshold_holds_its_fpr_on_new_data():
    """Over many validation draws, the FPR on fresh normal data averages at most the target, near it, and the
    stated 90 % interval covers the realised FPR about 90 % of the time."""
    from loglm.detect.thresholds import fpr_promise

    rng = np.random.default_rng(1)
    target, n = 0.01, 500
    promise = fpr_promise(n, target)
    realised = []
    for _ in range(400):
        t = threshold_for_fpr(rng.standard_t(3, size=n), target)
        realised.append((rng.standard_t(3, size=20000) > t).mean())
    realised = np.array(realised)
    assert promise["expected_fpr"] <= target and abs(realised.mean() - promise["expected_fpr"]) < 0.0015
    lo, hi = promise["fpr_interval_90"]
    assert 0.84 <= ((realised >= lo) & (realised <= hi)).mean() <= 0.96
    # the old rule (floor(target * n) allowed above) overshoots the target on new data
    old = [(rng.standard_t(3, size=20000) > np.sort(rng.standard_t(3, size=n))[n - 1 - int(target * n)]).mean()
           for _ in range(200)]
    assert np.mean(old) > target


def test_small_validation_is_refused_or_warned_and_only_normal_items_calibrate():
    from loglm.detect.thresholds import check_validation_size, min_validation_normal, normal_validation_mask

    assert min_validation_normal(0.01) == 99
    with pytest.raises(ValueError, match="12 normal validation items cannot calibrate"):
        check_validation_size(12, 0.01, "refuse")
    assert "cannot calibrate" in check_validation_size(12, 0.01, "warn")
    assert "wide promise" in check_validation_size(120, 0.01, "refuse")  # reachable but loose: a warning
    assert check_validation_size(2000, 0.01, "refuse") is None
    with pytest.raises(ValueError, match="no normal validation"):
        check_validation_size(0, 0.01, "warn")
    keep, population = normal_validation_mask(np.array([0, -1, 1, 0, -1]))
    assert keep.tolist() == [True, False, False, True, False] and population == "labelled normal"
    keep, population = normal_validation_mask(np.array([-1, -1]))
    assert keep.all() and population.startswith("unlabelled")


def test_events_sharing_a_window_score_count_as_fewer_independent_items():
    """Per-flow calibration: a window's flows share its score, so 600 flows in 60 windows are not 600 draws.
    The promise computed from the effective count covers the realised per-flow FPR about as often as it says;
    counting every flow as independent promises an interval far too narrow."""
    from loglm.detect.thresholds import (
        check_validation_size,
        effective_items,
        fpr_promise,
        shared_score_items,
    )

    assert effective_items([1] * 50) == 50 and effective_items([10] * 50) == 50
    assert effective_items([1] * 9 + [91]) == 1  # one big window decides nearly everything
    what = shared_score_items(63, 621, 31)
    with pytest.raises(ValueError, match="621 normal validation events in 63 sessions, worth 31 independent"):
        check_validation_size(31, 0.01, "refuse", what)
    rng = np.random.default_rng(3)
    target, n_windows = 0.05, 300
    hits = {"effective": 0, "every item": 0}
    trials = 300
    for _ in range(trials):
        sizes = rng.geometric(0.08, n_windows)  # skewed window sizes, as per-host windows are
        scores = rng.standard_t(3, n_windows)
        t = threshold_for_fpr(np.repeat(scores, sizes), target)
        new_sizes, new_scores = rng.geometric(0.08, 3000), rng.standard_t(3, 3000)
        realised = new_sizes[new_scores > t].sum() / new_sizes.sum()
        for name, n in (("effective", effective_items(sizes)), ("every item", int(sizes.sum()))):
            lo, hi = fpr_promise(n, target)["fpr_interval_90"]
            hits[name] += lo <= realised <= hi
    assert hits["effective"] / trials >= 0.8, hits
    assert hits["every item"] / trials < 0.6, hits


def test_alerts_are_calibrated_per_session_where_items_are_events():
    """Per-flow items, per-session alerts: a host's window of many flows alerts when any one passes the per-flow
    threshold, so at that threshold alerts run far above the target.  The alert unit's own threshold (the
    sessions' conformal quantile, never below the per-flow one) holds the session FPR at the target on new
    sessions; alert_threshold() is what detection raises alerts at."""
    from loglm.config import DetectConfig
    from loglm.detect.calibration_record import alert_calibration, alert_threshold

    rng = np.random.default_rng(5)

    def sessions(n):  # 20 flows per session, each scored on its own
        return rng.standard_normal((n, 20))

    cfg = DetectConfig(target_fpr=0.01, score="mean_surprisal")
    val = sessions(2000)
    item_thr = threshold_for_fpr(val.ravel(), 0.01)
    cal = alert_calibration(val.max(axis=1), item_thr, cfg, "normal validation sessions")
    assert cal["alert_unit"] == "session" and cal["alert_n_val_sessions"] == 2000 and cal["alert_warning"] is None
    assert cal["alert_threshold"] > item_thr and cal["alert_val_fpr_at_item_threshold"] > 0.1
    new = sessions(20000).max(axis=1)
    assert (new > item_thr).mean() > 0.1  # at the per-flow threshold: over 10x the target per session
    assert 0.005 < (new > cal["alert_threshold"]).mean() < 0.02  # at its own: the target
    assert alert_threshold({"threshold": item_thr, **cal}) == cal["alert_threshold"]
    assert alert_threshold({"threshold": item_thr}) == item_thr  # a session-unit calibration: one threshold
    # never below the per-event threshold (few or quiet sessions); too few sessions for the target are said
    low = alert_calibration(np.full(50, -5.0), item_thr, cfg, "normal validation sessions")
    assert low["alert_threshold"] == item_thr and "per-event threshold" in low["alert_threshold_rule"]
    assert "50 normal validation sessions (the alert unit) cannot calibrate" in low["alert_warning"]
    assert alert_calibration(np.zeros(0), item_thr, cfg, "none") == {}


def test_metrics_counts_and_prevalence():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.9, 0.8, 0.3])
    m = detection_metrics(y, s, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 2, 1)
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["fpr"] == pytest.approx(1 / 3)
    assert m["auroc"] == pytest.approx(4 / 6)
    # at HDFS prevalence a 1% FPR dominates: precision = 0.9*16838 / (0.9*16838 + 0.01*553366)
    p = 0.9 * 16838 / (0.9 * 16838 + 0.01 * 553366)
    assert reweighted_f1(0.9, 0.01) == pytest.approx(2 * p * 0.9 / (p + 0.9))
    uy, us = unique_items([(1, 2), (1, 2), (3,)], np.array([0, 0, 1]), np.array([0.1, 0.3, 0.9]))
    assert sorted(zip(uy.tolist(), us.tolist())) == [(0, 0.3), (1, 0.9)]


def test_f1_ceiling_is_the_f1_of_a_detector_catching_everything_at_that_fpr():
    # hdfs_loglead's test split: 66 anomalous, 2,349 normal blocks; a 1% target allows ~23 false positives
    assert f1_ceiling(66, 2349, 0.01) == pytest.approx(0.849, abs=1e-3)
    # a detector that catches all 40 anomalies and 10 of 1,000 normals (FPR 0.01) reaches exactly the ceiling,
    # and one that misses an anomaly stays below it
    y = np.r_[np.ones(40), np.zeros(1000)]
    s = np.r_[np.full(40, 2.0), np.full(10, 1.5), np.zeros(990)]
    m = detection_metrics(y, s, 1.0)
    assert m["fpr"] == pytest.approx(0.01) and m["f1"] == pytest.approx(f1_ceiling(40, 1000, 0.01))
    s[0] = 0.5
    assert detection_metrics(y, s, 1.0)["f1"] < f1_ceiling(40, 1000, 0.01)
    assert f1_ceiling(40, 1000, 0.0) == 1.0 and f1_ceiling(0, 1000, 0.01) == 0.0


def test_gap_buckets():
    assert [gap_bucket(g, 8) for g in (0, 0.5, 1, 3, 7, 1e9)] == [0, 1, 2, 3, 4, 7]


def test_bucket_sampler_covers_everything_once_per_epoch():
    lengths = list(np.random.default_rng(1).integers(1, 50, size=103))
    s = BucketBatchSampler(lengths, 10, shuffle=True, seed=3)
    batches = list(iter(s))
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert len(batches) == len(s)
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches])
    assert spread < 20  # batches hold similar lengths


def test_replacement_proposals_are_wrong_real_events_and_soften_with_temperature():
    from loglm.training.distill import propose_replacements

    gen = torch.Generator().manual_seed(0)
    logits = torch.full((4000, 12), -8.0)
    logits[:, 6] = 8.0  # the true event, near certain
    logits[:, 7] = 4.0  # the one plausible alternative
    gold = torch.full((4000,), 6)
    for t, u in ((1.0, 0.0), (3.0, 0.0), (1.0, 0.5)):
        r = propose_replacements(logits, gold, t, u, gen)
        assert not (r == 6).any() and (r >= END).all()  # never the truth, never PAD/MASK/UNK/SUM
        share = (r == 7).float().mean().item()
        if (t, u) == (1.0, 0.0):
            assert share > 0.99  # a sharp teacher proposes only its runner-up
        else:
            assert share < 0.95  # softened or mixed: other events too (T=3: 0.90 expected)
    only_gold = torch.full((3, 12), -1e9)
    only_gold[:, 6] = 0.0
    assert (propose_replacements(only_gold, torch.full((3,), 6), 1.0, 0.0, gen) != 6).all()


def test_ordered_map_keeps_order_and_bounds_work_in_flight():
    import threading
    import time

    from loglm.detect.score_core import ordered_map

    running, peak, lock = [0], [0], threading.Lock()

    def work(x):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.002 * (x % 3))
        with lock:
            running[0] -= 1
        return x * x

    consumed = []
    for y in ordered_map(work, list(range(40)), workers=3):
        consumed.append(y)
    assert consumed == [x * x for x in range(40)] and 1 < peak[0] <= 3
    assert list(ordered_map(work, [1, 2], workers=1)) == [1, 4]
    with pytest.raises(ZeroDivisionError):
        list(ordered_map(lambda x: 1 / x, [1, 0, 2], workers=2))


def test_threshold_never_splits_the_windows_without_a_miss():
    """When the target quantile falls among validation windows without any miss (ordered only by their
    drifting mean surprisal), the threshold becomes "any miss": a quiet window never alerts, one miss does."""
    from loglm.config import DetectConfig
    from loglm.detect.calibrate import threshold_of
    from loglm.detect.score_core import SCORE_RULES, calibrated_config, quiet_band_top, window_score

    cfg = DetectConfig()

    def scored(n_miss, n_events, mean, n_unknown):
        """Windows of n_events positions, n_miss of them outside the top-k, every surprisal = mean."""
        s = np.full((len(n_events), max(n_events)), np.nan)
        miss = np.zeros(s.shape, bool)
        for i, (k, e, m) in enumerate(zip(n_miss, n_events, mean)):
            s[i, :e], miss[i, :k] = m, True
        return window_score(cfg, SCORE_RULES[cfg.score].window(s, miss, cfg), np.asarray(n_unknown))

    rng = np.random.default_rng(0)
    n = 1000
    val = scored(np.where(np.arange(n) < 3, 1, 0), [20] * n, rng.uniform(0.1, 0.5, n), np.zeros(n))  # 0.3 % miss
    thr, rule = threshold_of(val, cfg)
    assert thr == quiet_band_top(cfg) and rule.startswith("any miss")
    later = scored([0, 1, 0], [20, 256, 20], [5.0, 0.1, 99.0], [0, 0, 1])
    assert (later > thr).tolist() == [False, True, True]  # drifted surprisal: quiet; one miss; an unseen event
    busy = scored(np.round(rng.uniform(0, 0.3, n) * 20).astype(int), [20] * n, rng.uniform(0.1, 0.5, n), np.zeros(n))
    assert threshold_of(busy, cfg)[1] == "conformal quantile"
    assert calibrated_config(cfg, {"score": "miss_ratio", "top_k": 5, "n_views": 5, "unk_surprisal": 20.0}).tie_scale == 1e4


def test_grown_state_extends_rows_and_refuses_a_vocabulary_that_is_not_an_extension(tmp_path):
    """Tuning with a grown vocabulary: the model's weights are kept, one row per new token is added (the
    mean of the known template rows); a run whose vocabulary does not start with the model's is refused."""
    from types import SimpleNamespace

    from loglm.ingest.templates import TemplateMiner
    from loglm.training.pretrain import RunContext, grown_state
    from loglm.vocab import SPECIALS, Vocabulary

    miner = TemplateMiner()
    for text in ("a b c", "d e f g", "h i", "j k l m n", "o", "p q r"):
        miner.add(text)
    old_vocab = Vocabulary(miner, [0, 1, 2, 3], 16, True)
    enc = LogEncoder(EncoderConfig(vocab_size=old_vocab.size, d_model=32, n_layers=1, n_heads=2, d_ff=64))
    start = SimpleNamespace(encoder=enc, vocab=old_vocab)

    def ctx_for(ids: list[int]) -> RunContext:
        folder = tmp_path / "-".join(map(str, ids))
        folder.mkdir()
        Vocabulary(miner, ids, 16, True).save(folder / "vocab.json")
        return RunContext("r", str(folder), "", "", "", {**enc.cfg.to_dict(), "vocab_size": len(SPECIALS) + len(ids)})

    state = grown_state(start, ctx_for([0, 1, 2, 3, 4, 5]), "m")
    old = enc.state_dict()
    assert state["tok.weight"].shape[0] == old_vocab.size + 2 and state["head_bias"].shape[0] == old_vocab.size + 2
    assert torch.equal(state["tok.weight"][:old_vocab.size], old["tok.weight"])
    mean = old["tok.weight"][len(SPECIALS):].mean(0)
    assert torch.allclose(state["tok.weight"][-1], mean) and torch.allclose(state["tok.weight"][-2], mean)
    assert grown_state(start, ctx_for([0, 1, 2, 3]), "m") is not None  # the same vocabulary: as is
    with pytest.raises(ValueError, match="does not extend the model's"):
        grown_state(start, ctx_for([1, 0, 2, 3, 4]), "m")


@pytest.mark.parametrize("facets", [0, 12])
def test_unpadded_training_path_matches_the_padded_one_on_real_positions(facets):
    """With trainer.unpad_share, a padded training batch skips padding in every layer but attention's score
    step: same hidden states on the real positions, same gradients (flow facets too)."""
    import torch

    from loglm.model.encoder import EncoderConfig, LogEncoder

    torch.manual_seed(0)
    model = LogEncoder(EncoderConfig(vocab_size=30, d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0,
                                     max_len=40, gap_buckets=4, n_facets=facets)).train()
    lengths = torch.tensor([40, 7, 19, 3, 33, 12])
    pad = torch.arange(40)[None, :] < lengths[:, None]
    tokens = torch.where(pad, torch.randint(5, 30, (6, 40)), 0)
    gaps = torch.where(pad, torch.randint(0, 4, (6, 40)), 0)
    if facets:
        gaps = torch.cat([gaps[..., None], torch.where(pad[..., None], torch.randint(0, facets, (6, 40, 10)), 0)], -1)

    def run(share):
        model.unpad_share = share
        model.zero_grad()
        hidden = model(tokens, gaps, pad)
        (hidden[pad] ** 2).sum().backward()
        return hidden[pad].detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    padded, g_padded = run(None)
    unpadded, g_unpadded = run(0.1)  # this batch is 46% padding
    assert torch.allclose(padded, unpadded, atol=1e-5)
    assert g_padded.keys() == g_unpadded.keys()
    assert all(torch.allclose(g_padded[k], g_unpadded[k], atol=1e-4, rtol=1e-4) for k in g_padded)
    model.eval()  # inference (and ONNX export) keep the padded path
    model.unpad_share = 0.0
    assert torch.allclose(model(tokens, gaps, pad)[pad], padded, atol=1e-5)


BF16_ENC = {"vocab_size": 30, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "dropout": 0.1, "max_len": 40,
            "gap_buckets": 4}
# each bf16 test on the CPU and, where there is one, on a CUDA GPU (marked gpu: `pytest -m gpu`, run by
# benchmarks/gpu_smoke.sh)
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                   reason="needs a CUDA GPU")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scorer", ["views", "rtd"])
def test_scores_expected_events_and_vectors_on_the_scoring_device_match_the_cpus(device, scorer):
    """detect.device=cuda scores and embeds on the GPU (inputs moved there, outputs back): the scores, ranks,
    expected events and vectors must be the CPU's (fp32 both; the cuda case is marked gpu)."""
    import copy

    from loglm.analyst.embed import embed_events, embed_windows, torch_embed_fn, torch_event_embed_fn

    torch.manual_seed(0)
    enc = LogEncoder(EncoderConfig(vocab_size=30, d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0,
                                   max_len=64, rtd_head=True)).eval()
    on = copy.deepcopy(enc).to(device)
    rng = np.random.default_rng(0)
    toks = [rng.integers(5, 30, size=n) for n in (3, 17, 40, 9)] + [np.array([5, UNK, 6, 7])]
    gaps = [rng.integers(0, 4, size=len(t)) for t in toks]
    closed = [True, False, True, True, False]
    cfg = DetectConfig(scorer=scorer, n_views=3, batch_size=2)
    cpu, dev = score_windows(enc, toks, gaps, closed, cfg), score_windows(on, toks, gaps, closed, cfg)
    np.testing.assert_allclose(dev.score, cpu.score, rtol=1e-4, atol=1e-5)
    for a, b in zip(dev.surprisal + dev.expected_p, cpu.surprisal + cpu.expected_p):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert all((a == b).all() for a, b in zip(dev.expected, cpu.expected))
    np.testing.assert_allclose(embed_windows(torch_embed_fn(on), toks, gaps, closed),
                               embed_windows(torch_embed_fn(enc), toks, gaps, closed), atol=1e-5)
    for a, b in zip(embed_events(torch_event_embed_fn(on), toks, gaps, closed),
                    embed_events(torch_event_embed_fn(enc), toks, gaps, closed)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_scoring_device_is_checked_before_any_work(monkeypatch):
    from loglm.model.store import scoring_device

    assert DetectConfig().device == "cpu"
    for bad in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(ValueError, match="detect.device must be"):
            DetectConfig(device=bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert scoring_device("auto") == torch.device("cpu") and scoring_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU is usable here"):
        scoring_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert scoring_device("auto") == torch.device("cuda")
    with pytest.raises(ValueError, match="has 1 CUDA GPU"):
        scoring_device("cuda:1")


def padded_bf16_batch(device: str) -> dict:
    lengths = torch.tensor([40, 7, 19, 3, 33, 12])  # 46% padding: the unpadded path at unpad_share 0.1
    pad = torch.arange(40)[None, :] < lengths[:, None]
    batch = {"tokens": torch.where(pad, torch.randint(5, 30, (6, 40)), 0),
             "gaps": torch.where(pad, torch.randint(0, 4, (6, 40)), 0), "pad_mask": pad}
    return {k: v.to(device) for k, v in batch.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("share", [None, 0.1])
def test_a_bf16_module_trains_in_bf16_on_both_paths(share, device):
    """DeepSpeed's bf16 casts the whole module to bf16 and runs it without autocast: a training step, padded
    or unpadded (trainer.unpad_share), must keep every activation in bf16.  The unpadded path's dropout mask
    once came out float32 and the next LayerNorm refused it ("expected scalar type Float but found BFloat16"),
    seen on an H200 with trainer=gpu strategy=deepspeed_stage2."""
    from loglm.training.module import LogLMModule

    torch.manual_seed(0)
    module = LogLMModule(BF16_ENC, hypersphere_weight=0.1).to(device).to(torch.bfloat16).train()
    module.encoder.unpad_share = share
    batch = padded_bf16_batch(device)
    out = module._step(batch)
    assert out["logits"].dtype == torch.bfloat16
    out["loss"].backward()
    assert torch.isfinite(out["loss"].float())
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in module.encoder.blocks.parameters())
    module.eval()
    with torch.no_grad():
        module.validation_step(batch, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("share", [None, 0.1])
def test_an_fp32_module_trains_under_bf16_autocast_on_both_paths(share, device, monkeypatch):
    """precision=bf16-mixed (every strategy but DeepSpeed's) keeps fp32 weights and runs the step under
    autocast, where Linear layers return bf16 while the residual stream stays fp32.  The unpadded path once put
    the bf16 projections into fp32 zeros ("index_copy_(): self and source expected to have the same dtype"),
    seen on an H200 with trainer=gpu strategy=ddp."""
    from loglm.training.module import LogLMModule

    torch.manual_seed(0)
    module = LogLMModule(BF16_ENC, hypersphere_weight=0.1).to(device).train()
    module.encoder.unpad_share = share
    batch = padded_bf16_batch(device)
    seen = []
    module.encoder.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast(device, dtype=torch.bfloat16):
        out = module._step(batch)
    assert seen == [torch.bfloat16]  # autocast did run
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in module.encoder.blocks.parameters())
    # the attention scores run in bf16 on both paths, as autocast means.  CPU autocast quietly promoted the
    # unpadded path's fp32 zeros to fp32 attention (CUDA autocast refuses to mix them, the error above)
    from loglm.model import encoder

    attn = module.encoder.blocks[0].attn
    pad = batch["pad_mask"]
    real = pad.reshape(-1).nonzero().squeeze(1)
    x = torch.randn(*pad.shape, BF16_ENC["d_model"], device=device)  # fp32, as CUDA's LayerNorm returns
    dtypes = []
    sdpa = encoder.F.scaled_dot_product_attention
    monkeypatch.setattr(encoder.F, "scaled_dot_product_attention",
                        lambda q, *a, **k: dtypes.append(q.dtype) or sdpa(q, *a, **k))
    with torch.autocast(device, dtype=torch.bfloat16), torch.no_grad():
        padded = attn(x, pad[:, None, None, :]).reshape(-1, BF16_ENC["d_model"])[real]
        unpadded = attn.forward_unpadded(x.reshape(-1, BF16_ENC["d_model"])[real], real, *pad.shape,
                                         pad[:, None, None, :])
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert torch.allclose(padded.float(), unpadded.float(), atol=3e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_a_bf16_student_distils_in_bf16(device):
    """The distillation module (teacher and student cast to bf16, as DeepSpeed's bf16 does) trains on the
    unpadded path with the replaced-event head and validates.  Its validation step once drew its masks with a
    CPU generator, which cannot draw CUDA tensors (the cuda case)."""
    from loglm.training.distill_module import DistillModule

    torch.manual_seed(0)
    teacher = LogEncoder(EncoderConfig(**BF16_ENC))
    module = DistillModule(teacher, {**BF16_ENC, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
                                     "rtd_head": True},
                           0.15, 2.0, 1.0, 0.5, 0.5, 1e-3, "random", rtd_weight=1.0)
    module = module.to(device).to(torch.bfloat16).train()
    module.student.unpad_share = 0.1
    batch = padded_bf16_batch(device)
    out = module._losses(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"].float()) and out["s_logits"].dtype == torch.bfloat16
    assert all(p.grad is not None for p in module.student.blocks.parameters())
    module.eval()
    with torch.no_grad():
        module.validation_step(batch, 0)


def test_fast_dropout_has_dropouts_distribution():
    import torch

    from loglm.model.encoder import fast_dropout

    drop = torch.nn.Dropout(0.1).train()
    x = torch.ones(200_000)
    y = fast_dropout(x, drop)
    assert abs(float((y == 0).float().mean()) - 0.1) < 0.005
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    assert fast_dropout(x, drop.eval()) is x


def test_flow_facets_reach_a_position_only_while_its_token_is_shown():
    """A facet model reads each event's facets beside its token; a [MASK] position (scoring) and every
    training target (hide_facets, whatever mask_events made of its token) shows none, so a masked flow is
    predicted from its context only.  Padding (facet 0) and the windows' numpy layout carry through."""
    from loglm.objectives import hide_facets
    from loglm.windows import pad_windows

    torch.manual_seed(0)
    enc = LogEncoder(EncoderConfig(vocab_size=20, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0,
                                   max_len=64, n_facets=9)).eval()
    rng = np.random.default_rng(0)
    items = [(rng.integers(5, 20, n), np.column_stack([rng.integers(0, 4, n), rng.integers(2, 9, (n, 10))]), True)
             for n in (6, 3)]
    tok, gap, pad = pad_windows(items)
    assert gap.shape == (2, 8, 11) and (gap[~pad] == 0).all() and (gap[:, 0] == 0).all()
    tok, gap, pad = (torch.from_numpy(a) for a in (tok, gap, pad))
    other = gap.clone()
    other[0, 2, 1:] = torch.tensor([2, 3, 4, 5, 6, 7, 8, 2, 3, 4])  # other facets for event 2 of window 0
    with torch.no_grad():
        shown = enc(tok, gap, pad)
        assert not torch.allclose(shown[0, 2], enc(tok, other, pad)[0, 2])  # read while the token is shown
        masked = tok.clone()
        masked[0, 2] = MASK
        assert torch.allclose(enc(masked, gap, pad), enc(masked, other, pad), atol=1e-6)  # hidden once masked
        # a training target keeps its token (mask_events' 10% "left as is") yet shows no facets
        target = torch.zeros_like(pad)
        target[0, 2] = True
        assert torch.allclose(enc(tok, hide_facets(gap, target), pad), enc(tok, hide_facets(other, target), pad),
                              atol=1e-6)
    assert hide_facets(gap[..., 0], target) is not None and (hide_facets(gap, target)[0, 2, 0] == gap[0, 2, 0])
    # a model without facets reads the gap bucket alone
    plain = tiny()
    with torch.no_grad():
        assert torch.allclose(plain(tok, gap, pad), plain(tok, gap[..., 0], pad))


def test_an_event_vector_holds_its_context_and_the_event_itself():
    """Per-event vectors (loglm.analyst.embed, the ONNX ``event_vectors``): pieces of equal length, the
    contextual hidden state, the event's own input (token, gap, facets; no position) and, for a flow model
    with facets, each facet's embedding on its own. Two flows of one window with other facets differ in their
    own half although attention gives them much the same context; the same flow in another window and place
    keeps its own half and its facets; a model without facets keeps two halves."""
    torch.manual_seed(0)
    enc = LogEncoder(EncoderConfig(vocab_size=20, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0,
                                   max_len=64, n_facets=9)).eval()
    tok = torch.tensor([[7, 7, 8, 9], [9, 8, 7, 7]])
    gap = torch.zeros(2, 4, 11, dtype=torch.long)
    gap[0, 0, 1:], gap[0, 1, 1:] = 2, 5  # window 0: two flows of one token, other facets
    gap[0, 1, 3] = 7  # one facet of the second flow differs from the others
    gap[1, 3, 1:] = 2  # window 1, last place: the first flow of window 0 again
    pad = torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad():
        v = enc.event_embedding(enc(tok, gap, pad), tok, gap)
    d, pieces = enc.cfg.d_model, 2 + 10
    assert v.shape == (2, 4, pieces * d)
    norms = v.reshape(2, 4, pieces, d).norm(dim=-1)
    flows = torch.tensor([[True, True, False, False], [False, False, False, True]])
    # every piece of a flow has length 1/sqrt(pieces), so its vector is a unit vector; without facets the
    # facet pieces are zero
    assert torch.allclose(norms[flows], torch.full((3, pieces), pieces ** -0.5), atol=1e-5)
    assert torch.allclose(v[flows].norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.all(norms[~flows][:, 2:] == 0)
    own = v[..., d:]
    assert torch.allclose(own[0, 0], own[1, 3], atol=1e-6) and not torch.allclose(v[0, 0], v[1, 3], atol=1e-3)
    assert (own[0, 0] - own[0, 1]).norm() > 0.1
    # the facets one by one: facet slot 2 of the second flow is facet 7, its others facet 5
    f = v[0, 1].reshape(pieces, d)[2:]
    with torch.no_grad():
        e5, e7 = enc.facet.weight[5], enc.facet.weight[7]
    assert torch.allclose(f[0], e5 / e5.norm() * pieces ** -0.5, atol=1e-5)
    assert torch.allclose(f[2], e7 / e7.norm() * pieces ** -0.5, atol=1e-5)
    plain = LogEncoder(EncoderConfig(vocab_size=20, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0,
                                     max_len=64)).eval()
    with torch.no_grad():
        w = plain.event_embedding(plain(tok, gap[..., 0], pad), tok, gap[..., 0])
    assert w.shape == (2, 4, 2 * d) and torch.allclose(w.norm(dim=-1), torch.ones(2, 4), atol=1e-5)


def test_unique_items_by_sequence_digest_count_what_whole_sequences_count():
    """Evaluation counts unique items by a digest of each session's whole sequence (chunks joined in order,
    sliced tables included), not by the sequences themselves: the same groups as the tuples gave."""
    import pyarrow as pa

    from loglm.evaluation import sequence_digests, session_scores

    rows = [("a", [1, 2]), ("a", [3]), ("b", [1, 2, 3]), ("c", [1]), ("c", [2, 3]), ("d", [3, 2, 1]), ("e", [1, 2])]
    table = pa.table({"session_id": [r[0] for r in rows], "tokens": pa.array([r[1] for r in rows], pa.list_(pa.int32())),
                      "label": [0, 0, 1, 0, 0, 1, 0]})
    d = sequence_digests(table)
    assert d["a"] == d["b"] == d["c"] and len({d["a"], d["d"], d["e"]}) == 3
    assert sequence_digests(table.slice(3)) == {k: d[k] for k in "cde"}  # a slice's offsets, not the buffer's
    ids, labels, scores, keys = session_scores(table, np.array([0.1, 0.5, 0.2, 0.3, 0.0, 0.9, 0.4]))
    tuples = {"a": (1, 2, 3), "b": (1, 2, 3), "c": (1, 2, 3), "d": (3, 2, 1), "e": (1, 2)}
    by_digest = unique_items(keys, labels, scores)
    by_tuple = unique_items([tuples[i] for i in ids], labels, scores)
    pairs = sorted(zip(by_digest[0].tolist(), by_digest[1].tolist()))
    assert pairs == sorted(zip(by_tuple[0].tolist(), by_tuple[1].tolist())) == [(0, 0.4), (0, 0.5), (1, 0.2), (1, 0.9)]


def test_per_field_masked_prediction_learns_a_masked_flows_fields_from_its_context():
    """objective.facet_loss_weight: each training target's ten facets are predicted from its context (the
    target itself shows none). Windows whose flows share their facets teach it: the facet loss falls from
    about ln(n_facets) to near 0, while a module without the weight has no head and no such term. Ids 0
    (none) and 1 (unseen) are never targets."""
    from loglm.objectives import masked_facet_loss
    from loglm.training.module import LogLMModule

    enc = {"vocab_size": 30, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "dropout": 0.0, "max_len": 40,
           "gap_buckets": 4, "n_facets": 14}
    assert LogLMModule(enc, hypersphere_weight=0.0).facet_head is None
    torch.manual_seed(0)
    module = LogLMModule(enc, hypersphere_weight=0.0, facet_loss_weight=1.0)
    windows = []
    for w in range(16):  # a window's flows all carry one facet pattern, the patterns differ by window
        fac = np.tile(2 + (np.arange(10) + w) % 12, (20, 1))
        windows.append((np.full(20, 5 + w % 3), np.concatenate([np.zeros((20, 1), int), fac], 1), True))
    batch = collate(windows)
    assert batch["gaps"].shape == (16, 22, 11)
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        out = module.train()._step(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["facet"].detach()))
    assert losses[0] > 2.0 and losses[-1] < 0.3, (losses[0], losses[-1])
    q = torch.randn(3, 10 * 32, requires_grad=True)
    none = masked_facet_loss(q, module.encoder.facet.weight, torch.ones(3, 10, dtype=torch.long))
    assert float(none.detach()) == 0.0 and none.requires_grad  # only unseen ids: no target, still a graph


def test_scoring_on_a_gpu_with_cpu_sized_batches_says_which_settings_to_raise():
    from loglm.detect.detector import gpu_batch_note

    assert "raise detect.batch_size and detect.max_batch_tokens" in gpu_batch_note("cuda", DetectConfig())
    assert gpu_batch_note("cpu", DetectConfig()) is None
    assert gpu_batch_note("cuda", DetectConfig(batch_size=1024, max_batch_tokens=262144)) is None
