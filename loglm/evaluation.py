"""Evaluation job: test-split metrics at the validation-calibrated threshold, logged to MLflow."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

from loglm.detect.metrics import HDFS_ANOMALOUS, HDFS_NORMAL, detection_metrics, reweighted_f1, unique_items
from loglm.detect.score_core import session_max

METRIC_KEYS = ("precision", "recall", "f1", "fpr", "auroc", "pr_auc")


def sequence_digests(table) -> dict[str, bytes]:
    """Each session's whole event sequence (its chunks' tokens, in the table's order) as a 16-byte digest:
    what counting unique items compares, without a Python object per event (the sequences themselves
    were O(events) objects, and a per-event key repeated its session's sequence once per event)."""
    import hashlib

    col = table.column("tokens").combine_chunks()
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    hashers: dict[str, object] = {}
    for sid, a, b in zip(table.column("session_id").to_pylist(), offsets[:-1].tolist(), offsets[1:].tolist()):
        h = hashers.get(sid)
        if h is None:
            h = hashers[sid] = hashlib.blake2b(digest_size=16)
        h.update(values[a:b].tobytes())
    return {sid: h.digest() for sid, h in hashers.items()}


def session_scores(table, scores: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray, list]:
    """Per session: ids, labels, max chunk score, and its event sequence's digest (for deduplication)."""
    sids = table.column("session_id").to_pylist()
    labels = dict(zip(sids, table.column("label").to_pylist()))
    seqs = sequence_digests(table)
    best = session_max(sids, scores)
    ids = list(best)
    return ids, np.array([labels[i] for i in ids]), np.array([best[i] for i in ids]), [seqs[i] for i in ids]


def event_items(table, digest_of: dict, per_session: dict | None = None, per_event: np.ndarray | None = None
                ) -> tuple[list, np.ndarray, list]:
    """Per event of the table's rows, in order: its event id, its score (its session's from ``per_session``, or
    its own from ``per_event``, one per event) and its session's sequence digest (``digest_of``)."""
    out_ids, out_s, digests = [], [], []
    for sid, idx in zip(table.column("session_id").to_pylist(), table.column("event_idx").to_pylist()):
        out_ids.extend(idx)
        digests.extend([digest_of[sid]] * len(idx))
        if per_event is None:
            out_s.extend([per_session[sid]] * len(idx))
    if per_event is not None:
        if len(per_event) != len(out_ids):
            raise ValueError(f"{len(per_event)} event scores for {len(out_ids)} events")
        return out_ids, np.asarray(per_event, dtype=np.float64), digests
    return out_ids, np.array(out_s, dtype=np.float64), digests


def labelled_events(event_ids: list, scores: np.ndarray, digests: list, data_dir, data_cfg
                    ) -> tuple[list, np.ndarray, np.ndarray, list]:
    """Events as evaluated items: ids, each event's own label, scores, unique-item keys (template, session
    digest); labels and templates read from events.parquet in one pass."""
    from loglm.ingest.sessions import event_label
    from loglm.shards import event_columns

    normal, unknown = set(data_cfg.normal_labels), set(data_cfg.unknown_labels)
    ev = event_columns(data_dir, event_ids, ["label", "template"])
    out_y = [event_label(lab, normal, unknown) for lab in ev["label"]]
    return event_ids, np.array(out_y), scores, list(zip(ev["template"], digests))


def event_scores(table, ids, scores, data_dir, data_cfg, per_event: np.ndarray | None = None
                 ) -> tuple[list, np.ndarray, np.ndarray, list]:
    """Per event (e.g. per flow): each event takes its session's score and keeps its own label; or, given
    ``per_event`` (one score per event of the table's rows, in order), its own."""
    seqs = sequence_digests(table)
    ev_ids, ev_s, digests = event_items(table, seqs, dict(zip(ids, scores)), per_event)
    return labelled_events(ev_ids, ev_s, digests, data_dir, data_cfg)


def recall_by_class(event_ids: list, scores: np.ndarray, threshold: float, data_dir, data_cfg) -> dict:
    """Per anomalous label value (attack class): items, detected, recall at the threshold (event unit)."""
    from loglm.shards import event_columns

    normal, unknown = set(data_cfg.normal_labels), set(data_cfg.unknown_labels)
    out: dict[str, dict] = {}
    for label, s in zip(event_columns(data_dir, event_ids, ["label"])["label"], scores):
        if label is None or label in normal or label in unknown:
            continue
        c = out.setdefault(str(label), {"n": 0, "detected": 0})
        c["n"] += 1
        c["detected"] += int(s > threshold)
    for c in out.values():
        c["recall"] = c["detected"] / c["n"]
    return dict(sorted(out.items()))


def _first(value):
    return value[0] if isinstance(value, list) and value else value or None


def pair_window_items(event_ids: list, labels: np.ndarray, scores: np.ndarray, data_dir, window_s: float,
                      keys: list[tuple] | None = None):
    """Flows grouped per source-destination pair per ``window_s`` window (the unit Tempo reports): a
    pair-window takes its flows' highest score and is anomalous if any labelled flow of it is (unlabelled if
    none is labelled).  Returns keys, labels, scores."""
    return unit_items(keys or _pair_keys(event_ids, data_dir, window_s), labels, scores)


def pair_window_compounding(keys: list[tuple], labels: np.ndarray, scores: np.ndarray, threshold: float,
                            normal_windows: list[tuple]) -> dict:
    """Why a pair-window's FPR exceeds the per-flow one at the same threshold: a normal pair-window alerts when
    any of its flows does.  Returns the mean number of normal flows per normal pair-window, the per-flow FPR and
    the pair-window FPR those flows would give if they alerted independently (1 - (1 - p)^m per window)."""
    per: dict[tuple, int] = {}
    for k, y in zip(keys, labels):
        if y == 0:
            per[k] = per.get(k, 0) + 1
    m = np.array([per.get(k, 0) for k in normal_windows], dtype=np.float64)
    normal = np.asarray(labels) == 0
    p = float((np.asarray(scores)[normal] > threshold).mean()) if normal.any() else 0.0
    return {"normal_flows_per_item": float(m.mean()) if len(m) else 0.0, "flow_fpr": p,
            "fpr_if_flows_independent": float((1 - (1 - p) ** m).mean()) if len(m) else 0.0}


def _pair_keys(event_ids: list, data_dir, window_s: float) -> list[tuple]:
    """(source address, destination address, window number) of each event."""
    import json

    from loglm.shards import event_columns

    ev = event_columns(data_dir, event_ids, ["ts", "entities"])
    keys = []
    for t, ents in zip(ev["ts"], ev["entities"]):
        e = json.loads(ents)
        keys.append((_first(e.get("src_ip")), _first(e.get("dst_ip")), int(t // window_s)))
    return keys


def false_positives_beside_attacks(event_ids: list, labels: np.ndarray, scores: np.ndarray, threshold: float,
                                   data_dir, window_s: float, keys: list[tuple] | None = None) -> int:
    """Normal-labelled flows above the threshold exchanged, in either direction and in the same window, by two
    hosts that also exchange attack flows there: on CIC-IDS2017 these are mostly the attacks' reverse-direction
    flows that the dataset labels benign (a known caveat); the report counts them beside the FPR."""
    keys = keys or _pair_keys(event_ids, data_dir, window_s)
    attacked = {(frozenset(k[:2]), k[2]) for k, y in zip(keys, labels) if y == 1}
    return int(sum(1 for k, y, s in zip(keys, labels, scores)
                   if y == 0 and s > threshold and (frozenset(k[:2]), k[2]) in attacked))


def alert_metrics(event_sessions: list[str], labels: np.ndarray, scores: np.ndarray, alert_threshold: float,
                  item_threshold: float, starts: dict | None = None) -> dict:
    """Per-event evaluation's alert row: the metrics of the sessions an alert is raised for (a session scores
    its highest event, and is anomalous if any event of it is, unlabelled if none is labelled) at the alert
    threshold, with the session FPR the per-event threshold would have given beside (``fpr_at_item_threshold``)
    and, given the sessions' ``starts``, the alert FPR per day or quarter (``fpr_by_period``)."""
    keys, y, s = unit_items(event_sessions, labels, scores)
    known = y >= 0
    at_items = detection_metrics(y[known], s[known], item_threshold)
    out = {**detection_metrics(y[known], s[known], alert_threshold), "threshold": float(alert_threshold),
           "unit": "session", "fpr_at_item_threshold": at_items["fpr"], "f1_at_item_threshold": at_items["f1"]}
    if starts:
        out["fpr_by_period"] = fpr_by_period(np.array([starts[k] for k in keys], np.float64), y, s, alert_threshold)
    return out


def unit_items(keys: list, labels: np.ndarray, scores: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    """Items grouped by ``keys`` (a session, a pair-window): each group takes its highest score and is
    anomalous if any labelled item of it is, normal if none is and one is labelled normal, else unlabelled.
    Returns keys, labels, scores."""
    label: dict = {}
    best: dict = {}
    for key, y, s in zip(keys, labels, scores):
        label[key] = max(label.get(key, -1), int(y))
        best[key] = max(best.get(key, -np.inf), float(s))
    keys = list(best)
    return keys, np.array([label[k] for k in keys]), np.array([best[k] for k in keys], dtype=np.float64)


def pair_window_calibration(val_ids: list, val_labels: np.ndarray, val_scores: np.ndarray, data_dir, data_cfg,
                            target_fpr: float, policy: str, floor: float | None = None) -> dict | None:
    """The pair-window unit's own threshold, for a model whose flows (``val_*``: the validation split's events,
    each with its label and the score it is reported with) are also reported per source-destination pair and
    window: the conformal quantile of the validation split's normal pair-windows, each its highest flow score,
    as every other unit is calibrated.  A threshold set per flow alerts on a pair-window whenever any of its
    flows passes it, so the pair-window FPR compounds the flows' (cic_flowprep: 0.020-0.026 at a per-flow
    threshold set for 0.01).  None where pair-windows are not reported (``data.eval_pair_window_s``).  A
    validation too small for the target is refused or warned about as any calibration's is
    (``detect.small_validation``).  ``floor``: the score's quiet band, as the model's per-flow threshold has it
    (:func:`loglm.detect.thresholds.threshold_above_quiet`)."""
    from loglm.detect.thresholds import (
        check_validation_size,
        fpr_promise,
        normal_validation_mask,
        threshold_above_quiet,
    )

    if not (data_cfg.eval_unit == "event" and data_cfg.eval_pair_window_s > 0):
        return None
    _, y, s = pair_window_items(val_ids, np.asarray(val_labels), np.asarray(val_scores, np.float64), data_dir,
                                data_cfg.eval_pair_window_s)
    keep, population = normal_validation_mask(y)
    n = int(keep.sum())
    what = f"{n} {population} validation pair-windows"
    warning = check_validation_size(n, target_fpr, policy, what)
    threshold, rule = threshold_above_quiet(s[keep], target_fpr, floor)
    return {"threshold": threshold, "rule": rule, "n_normal": n, "population": population,
            "promise": fpr_promise(n, target_fpr), "warning": warning}


def add_pair_windows(result: dict, ids, labels, scores, threshold: float, data_dir, data_cfg,
                     pair_window: dict | None = None) -> dict:
    """``result["pair_window"]`` when ``data.eval_pair_window_s`` is set (event unit only), and the false
    positives beside attacks (``result["all"]["fp_beside_attack"]``).  With ``pair_window`` (the unit's own
    calibration, :func:`pair_window_calibration`) its rows are at that threshold, and what the per-flow threshold
    gave them is kept beside (``fpr_at_flow_threshold``, ``f1_at_flow_threshold``); without it (a transfer
    evaluation, whose model's validation is another data's) they are at the per-flow threshold."""
    if data_cfg.eval_unit == "event" and data_cfg.eval_pair_window_s > 0:
        window = data_cfg.eval_pair_window_s
        keys = _pair_keys(ids, data_dir, window)  # events.parquet read once for both
        pk, y, s = pair_window_items(ids, labels, scores, data_dir, window, keys)
        known = y >= 0
        at_flow = detection_metrics(y[known], s[known], threshold)
        if pair_window is None:
            result["pair_window"] = {**at_flow, "threshold": float(threshold), "threshold_unit": "flow"}
        else:
            result["pair_window"] = {**detection_metrics(y[known], s[known], pair_window["threshold"]),
                                     "threshold": float(pair_window["threshold"]), "threshold_unit": "pair_window",
                                     "n_val_pair_windows": pair_window["n_normal"],
                                     "expected_fpr": pair_window["promise"]["expected_fpr"],
                                     "fpr_interval_90": pair_window["promise"]["fpr_interval_90"],
                                     "fpr_at_flow_threshold": at_flow["fpr"], "f1_at_flow_threshold": at_flow["f1"]}
            if pair_window.get("warning"):
                result["pair_window"]["calibration_warning"] = pair_window["warning"]
        result["pair_window"].update(pair_window_compounding(keys, labels, scores, threshold,
                                                             [k for k, n in zip(pk, y) if n == 0]))
        result["all"]["fp_beside_attack"] = false_positives_beside_attacks(ids, labels, scores, threshold, data_dir,
                                                                           window, keys)
    return result


def session_starts(table) -> dict[str, float]:
    """Each session's first event time (the earliest of its chunks)."""
    start: dict[str, float] = {}
    for sid, t in zip(table.column("session_id").to_pylist(), table.column("start_ts").to_pylist()):
        start[sid] = min(start.get(sid, t), t)
    return start


def item_times(ids: list, starts: dict | None, data_dir, unit: str) -> np.ndarray:
    """Each evaluated item's time: a session's first event (session unit, from ``starts``), an event's own
    (event unit)."""
    if unit == "event":
        from loglm.shards import event_columns

        return np.array(event_columns(data_dir, ids, ["ts"])["ts"], dtype=np.float64)
    return np.array([starts[i] for i in ids], dtype=np.float64)


def fpr_by_period(times: np.ndarray, labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, dict]:
    """Whether the threshold holds over the test period: normal items, false positives and FPR per calendar day
    (UTC) when the test spans a day or more, else per quarter of the test items in time order.  A threshold
    that holds shows a flat FPR; one whose normal traffic drifts away from validation shows it rising."""
    normal = labels == 0
    if not normal.any():
        return {}
    t = times[normal]
    fp = scores[normal] > threshold
    if t.max() - t.min() >= 86400:
        period = np.datetime_as_string(np.floor(t).astype("datetime64[s]"), unit="D")  # UTC day, vectorised
    else:
        edges = np.quantile(t, [0.25, 0.5, 0.75])
        q = np.searchsorted(edges, t, side="right")
        period = np.array([f"Q{k + 1}" for k in q])
    out = {}
    for p in sorted(set(period.tolist())):
        m = period == p
        out[p] = {"normal": int(m.sum()), "fp": int(fp[m].sum()), "fpr": float(fp[m].mean())}
    return out


def item_metrics(ids, labels, scores, keys, threshold: float, data_dir, data_cfg, starts: dict | None = None,
                 pair_window: dict | None = None) -> tuple[dict, dict]:
    """What every model of a suite is reported with, computed in one place: all and unique items (F1 at HDFS's
    prevalence on HDFS data), pair-windows (flows), test FPR by period, and recall per attack class (events).
    ``starts``: the test sessions' start times (:func:`session_starts`; needed for the session unit);
    ``pair_window``: the pair-window unit's own calibration (:func:`pair_window_calibration`)."""
    metrics = evaluate_scores(ids, labels, scores, keys, threshold, data_cfg.name.startswith("hdfs"))
    add_pair_windows(metrics, ids, labels, scores, threshold, data_dir, data_cfg, pair_window)
    metrics["fpr_by_period"] = fpr_by_period(item_times(ids, starts, data_dir, data_cfg.eval_unit), labels, scores,
                                             threshold)
    by_class = recall_by_class(ids, scores, threshold, data_dir, data_cfg) if data_cfg.eval_unit == "event" else {}
    return metrics, by_class


@contextlib.contextmanager
def transfer_sessions(cfg, loaded, data_dir: Path):
    """A transfer evaluation (another capture, day or site): the prepared data's ``cfg.split`` sessions read
    again from its raw inputs with the **model's** vocabulary and ingest state (templates it never saw are
    [UNK]); labels and splits come out as prepare made them.  Read out of core as prepare reads, into a work
    folder beside the prepared data that is removed on leaving.  Yields that folder (its sessions are read a
    piece at a time)."""
    import shutil

    import pyarrow.parquet as pq

    from loglm.artifacts import work_folder
    from loglm.ingest import partitioned
    from loglm.ingest.builders import BUILDERS

    if cfg.data.format in BUILDERS:
        raise ValueError(f"data.format={cfg.data.format!r} is pre-sequenced with its own event keys: a model trained "
                         "on another vocabulary cannot read it (transfer evaluation needs raw inputs)")
    work = work_folder(Path(data_dir), "transfer")
    try:
        summary, _ = partitioned.prepare(cfg, work, vocab=loaded.vocab)
        prepared = pq.read_metadata(Path(data_dir) / "events.parquet").num_rows
        if summary["events"] != prepared:  # event ids must be the prepared data's (per-event labels, reports)
            raise ValueError(f"{data_dir} holds {prepared} events but its inputs give {summary['events']} now: "
                             "prepare again")
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def evaluate_scores(ids, labels, scores, seqs, threshold: float, hdfs_prevalence: bool) -> dict:
    known = labels >= 0
    if not known.any():
        raise ValueError("the evaluation split has no labelled sessions (give data.anomalous_ids)")
    labels, scores = labels[known], scores[known]
    seqs = [s for s, k in zip(seqs, known) if k]
    result = {"all": detection_metrics(labels, scores, threshold)}
    uy, us = unique_items(seqs, labels, scores)
    result["unique"] = detection_metrics(uy, us, threshold)
    if hdfs_prevalence:
        for part in ("all", "unique"):
            m = result[part]
            m["f1_reweighted"] = reweighted_f1(m["recall"], m["fpr"], HDFS_NORMAL, HDFS_ANOMALOUS)
    return result


def print_table(result: dict, title: str) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    cols = ["items", "n", "TP", "FP", "TN", "FN", "precision", "recall", "F1", "FPR", "AUROC", "PR-AUC"]
    if "f1_reweighted" in result["all"]:
        cols.append("F1@HDFS prevalence")
    for c in cols:
        table.add_column(c, justify="right")
    for part, m in result.items():
        if "n" not in m:  # not a metrics row (fpr_by_period)
            continue
        row = [part, str(m["n"]), str(m["tp"]), str(m["fp"]), str(m["tn"]), str(m["fn"])]
        row += [f"{m[k]:.4f}" for k in METRIC_KEYS]
        if "f1_reweighted" in m:
            row.append(f"{m['f1_reweighted']:.4f}")
        table.add_row(*row)
    console = Console(width=160)
    console.print(table)
    with console.capture() as cap:
        console.print(table)
    return cap.get()


def _report(cfg, out_dir: Path, scored: ScoredSplit, loaded, threshold: float, result: dict) -> Path:
    """report.html + plots/*.png in the evaluation's folder (logged to MLflow with it)."""
    from loglm.report import write_report

    path = out_dir / "report.html"
    scores, starts, labels = scored.view.arrays()
    target = loaded.calibration.get("target_fpr")
    if threshold != scored.threshold:  # per-event metrics, per-session alerts: each unit's own threshold
        unit = cfg.data.eval_unit
        what = (f"per-{unit} threshold {scored.threshold:.4g} and alert threshold {threshold:.4g} (per session) from "
                f"validation normal data (target FPR {target}); metrics per {unit} at the first, plots and alerts "
                "per session at the second")
    else:
        what = f"threshold {threshold:.4g} from validation normal data (target FPR {target}); metrics per {cfg.data.eval_unit}"
    plots = write_report(path, f"LogLM evaluation: {cfg.data.name}/{cfg.split}",
                         f"model {loaded.meta.get('run_id')}; {what}",
                         scores, starts, threshold, scored.alerts.top(20), labels=labels,
                         metrics=result, n_alerts=len(scored.alerts))
    (out_dir / "plots").mkdir(exist_ok=True)
    for name, png in plots.items():
        (out_dir / "plots" / f"{name}.png").write_bytes(png)
    return path


def piece_event_items(table, toks, ws, dcfg, digest_of: dict) -> tuple[list, np.ndarray, list]:
    """A scored piece's events as evaluated items (event unit): ids, the score each is reported with (its own
    under ``alarm_unit=event``, :func:`loglm.detect.score_core.event_item_scores`) and its session's digest."""
    from loglm.detect.score_core import event_alarm_scores, event_item_scores

    sids = table.column("session_id").to_pylist()
    per_event = event_item_scores(dcfg, event_alarm_scores(dcfg, sids, ws), sids, toks, ws=ws)
    return event_items(table, digest_of, per_event=per_event)


def calibrated_on_this_validation(loaded, data_dir: Path, transfer: bool) -> bool:
    """Whether the model's threshold was set on this prepared data's validation split (trained on this very
    data, not recalibrated since): only then do its pair-windows get a threshold of their own from that split.
    A transfer's, a recalibrated or a tuned model's threshold came from other traffic, and its pair-windows are
    read at that threshold, as before."""
    import json

    if transfer or loaded.calibration.get("recalibrated_on"):
        return False
    try:
        ours = json.loads((Path(data_dir) / "MANIFEST.json").read_text())["summary"]["data_sha256"]
    except (OSError, ValueError, KeyError):
        return False
    return loaded.meta.get("data_sha256") == ours


def validation_pair_windows(cfg, loaded, dcfg, data_dir: Path) -> dict | None:
    """LogLM's pair-window calibration (:func:`pair_window_calibration`) from the prepared data's validation
    split, scored a piece at a time as the test split is; None where pair-windows are not reported."""
    from loglm.detect.torch_scoring import score_windows
    from loglm.shards import PIECE_ROWS, split_pieces
    from loglm.windows import windows_of

    if not (cfg.data.eval_unit == "event" and cfg.data.eval_pair_window_s > 0):
        return None
    ids, scores = [], []
    for table in split_pieces(data_dir, "val", min(cfg.data.shard_rows, PIECE_ROWS)):
        toks, gaps, closed = windows_of(table)
        ws = score_windows(loaded.encoder, toks, gaps, closed, dcfg)
        i, s, _ = piece_event_items(table, toks, ws, dcfg, dict.fromkeys(table.column("session_id").to_pylist(), b""))
        ids.extend(i)
        scores.append(s)
    if not ids:
        raise ValueError(f"{data_dir} has no validation events to calibrate the pair-window unit on")
    ids, labels, scores, _ = labelled_events(ids, np.concatenate(scores), [None] * len(ids), data_dir, cfg.data)
    return pair_window_calibration(ids, labels, scores, data_dir, cfg.data, float(loaded.calibration["target_fpr"]),
                                   cfg.detect.small_validation)


class ScoredSplit:
    """A split scored a piece (:func:`loglm.shards.split_pieces`) at a time: what the metrics and the report
    need is kept per evaluated item (id, label, score, unique-item key; a session's start) and per session
    (score, start, label: the report's plots), and the alerts go to a work file
    (:class:`loglm.detect.alerts.AlertSpill`).  Neither the split's sessions nor their windows are held, so
    memory follows the largest piece."""

    def __init__(self, cfg, loaded, dcfg, data_dir: Path, event, work: Path):
        import dataclasses

        from loglm.detect.alerts import AlertSpill
        from loglm.privacy import from_config
        from loglm.report import SessionView

        # the evaluation's alerts feed its report only (no alerts file): their vectors are not needed
        dcfg = dataclasses.replace(dcfg, alert_vectors=False)
        self.cfg, self.loaded, self.dcfg, self.data_dir, self.event = cfg, loaded, dcfg, data_dir, event
        self.unit = cfg.data.eval_unit
        if self.unit not in ("session", "event"):
            raise ValueError(f"data.eval_unit must be 'session' or 'event', got {self.unit!r}")
        from loglm.detect.calibration_record import alert_threshold

        self.threshold = float(loaded.calibration["threshold"])  # the items' (sessions, or events)
        self.alert_threshold = alert_threshold(loaded.calibration)  # an alert's: a session
        self.event_sessions: list[str] = []  # event unit: each evaluated event's session (the alerts row)
        self.info = {"run_id": loaded.meta.get("run_id"), "model_dir": str(loaded.folder)}
        self.pseudo = from_config(cfg.detect)
        self.alerts = AlertSpill(work / "alerts.jsonl")
        self.ids: list = []
        self.labels: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.keys: list = []
        self.starts: dict[str, float] = {}
        self.view = SessionView()  # per session: score, start, label (the report's plots)

    def add(self, table) -> int:
        """Score one piece (every session of it whole); returns its sessions."""
        from loglm.detect.detector import piece_alerts, session_score_rows
        from loglm.detect.torch_scoring import score_windows
        from loglm.windows import windows_of

        toks, gaps, closed = windows_of(table)
        ws = score_windows(self.loaded.encoder, toks, gaps, closed, self.dcfg)
        ids, labels, scores, digests = session_scores(table, ws.score)
        if self.unit == "event":
            ev_ids, ev_s, ev_digests = piece_event_items(table, toks, ws, self.dcfg, dict(zip(ids, digests)))
            self.event_sessions.extend(sid for sid, idx in zip(table.column("session_id").to_pylist(),
                                                               table.column("event_idx").to_pylist()) for _ in idx)
            self.ids.extend(ev_ids)
            self.scores.append(ev_s)
            self.keys.extend(ev_digests)
        else:
            self.ids.extend(ids)
            self.labels.append(labels)
            self.scores.append(scores)
            self.keys.extend(digests)
        rows = session_score_rows(table, ws.score)
        # each session's start: the session unit's item times, the event unit's alerts row by day (an event's
        # own time is read from events.parquet)
        self.starts.update((r["session_id"], r["start_ts"]) for r in rows)
        self.view.add(rows)
        self.alerts.add_alerts(piece_alerts(table, ws, self.event, self.loaded, self.dcfg, self.alert_threshold,
                                            self.info, self.pseudo))
        return len(rows)

    def items(self) -> tuple[list, np.ndarray, np.ndarray, list]:
        """(ids, labels, scores, unique-item keys) of the evaluated items, every piece's in order."""
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0)
        if self.unit == "event":
            return labelled_events(self.ids, scores, self.keys, self.data_dir, self.cfg.data)
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, dtype=np.int64)
        return self.ids, labels, scores, self.keys


def run(cfg, parent_run_id: str | None = None) -> dict:
    """Score the split, compute the metrics, write the report and log them.  Ctrl-C or SIGTERM ends it: its
    work folders (the alerts' spill, a transfer's re-read inputs) are removed, it says so and exits 130."""
    from loglm.detect.detector import STOP_GRACE_S
    from loglm.signals import Stopped, stop_on_signals

    with stop_on_signals(STOP_GRACE_S):
        try:
            return _run(cfg, parent_run_id)
        except Stopped as e:
            import signal
            import sys

            print(f"loglm: evaluation stopped by {signal.Signals(e.signum).name}: its work folders were removed; "
                  "no metrics were logged for the unfinished run", file=sys.stderr, flush=True)
            raise SystemExit(130) from None


def _run(cfg, parent_run_id: str | None) -> dict:
    import shutil

    from loglm.artifacts import work_folder
    from loglm.detect.alerts import PreparedEvents
    from loglm.detect.detector import detect_config_of, model_dir_for, same_vocabulary
    from loglm.ingest.prepare import prepared_dir, stale_reason
    from loglm.model.store import load_model
    from loglm.progress import Progress
    from loglm.shards import PIECE_ROWS, split_pieces

    t0 = time.perf_counter()
    model_dir = model_dir_for(cfg)
    loaded = load_model(model_dir, device=cfg.detect.device)
    dcfg = detect_config_of(loaded, cfg.detect)
    data_dir = prepared_dir(cfg.paths.root, cfg.data.name)
    stale = stale_reason(data_dir, cfg)
    if stale:
        raise ValueError(f"{stale}: prepare it again before evaluating on it")
    transfer = not same_vocabulary(Path(model_dir), data_dir)
    eval_root = Path(cfg.paths.root).resolve() / "eval"
    eval_root.mkdir(parents=True, exist_ok=True)
    work = work_folder(eval_root / f"{cfg.data.name}-{cfg.split}", "evaluating")
    work.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        folder = stack.enter_context(transfer_sessions(cfg, loaded, data_dir)) if transfer else data_dir
        scored = ScoredSplit(cfg, loaded, dcfg, data_dir, PreparedEvents(folder), work)
        stack.callback(scored.alerts.close)
        progress = Progress("scoring", unit="sessions")
        for table in split_pieces(folder, cfg.split, min(cfg.data.shard_rows, PIECE_ROWS)):
            progress.tick(scored.add(table))
        progress.done(f"{progress.n:,} {cfg.split} sessions scored, {len(scored.alerts):,} alerts")
        return _evaluate(cfg, parent_run_id, t0, model_dir, loaded, dcfg, data_dir, transfer, scored)


def _evaluate(cfg, parent_run_id, t0, model_dir, loaded, dcfg, data_dir, transfer, scored: ScoredSplit) -> dict:
    from loglm import tracking
    from loglm.artifacts import atomic_write_json

    ids, labels, scores, seqs = scored.items()
    threshold = scored.threshold
    pair_window = (validation_pair_windows(cfg, loaded, dcfg, data_dir)
                   if calibrated_on_this_validation(loaded, data_dir, transfer) else None)
    result, by_class = item_metrics(ids, labels, scores, seqs, threshold, data_dir, cfg.data, scored.starts,
                                    pair_window)
    if cfg.data.eval_unit == "event":  # what an analyst is sent: one alert per session, at the alert threshold
        result["alerts"] = alert_metrics(scored.event_sessions, labels, scores, scored.alert_threshold, threshold,
                                         scored.starts)
    elapsed = time.perf_counter() - t0

    pretrain_run = loaded.meta.get("run_id")
    trained_on = loaded.meta.get("dataset") or "another dataset"
    where = f" (transfer: model trained on {trained_on}, scored with its own vocabulary)" if transfer else ""
    text = print_table(result, f"LogLM on {cfg.data.name}/{cfg.split}{where}, per {cfg.data.eval_unit} (threshold "
                               f"{threshold:.4f} from validation normal, target FPR {loaded.calibration['target_fpr']})")
    exp = tracking.ensure_experiment(cfg, "loglm-eval")
    client = tracking.client(cfg)
    extra = {"pretrain_run_id": pretrain_run, "split": cfg.split, "model_dir": str(model_dir), "model": "loglm",
             "transfer": str(transfer), "model_dataset": trained_on}
    if parent_run_id:  # one child run per model under the evaluation suite's parent run
        extra["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp, run_name="loglm" if parent_run_id else f"eval-{cfg.data.name}-{cfg.split}",
                            tags=tracking.run_tags(cfg, extra))
    rid = run.info.run_id
    with tracking.run_outcome(client, rid):  # FAILED, not RUNNING, when the report cannot be written
        for k, v in {"threshold": threshold, "target_fpr": loaded.calibration.get("target_fpr"), "scorer": dcfg.scorer,
                     "split": cfg.split, "eval_unit": cfg.data.eval_unit, "dataset": cfg.data.name,
                     "model_dir": str(model_dir), "pretrain_run_id": pretrain_run}.items():
            client.log_param(rid, k, str(v)[:500])
        from loglm.artifacts import verify_manifest

        tracking.log_dataset_input(client, rid, data_dir, verify_manifest(data_dir)["summary"], "evaluation")
        for part, m in result.items():
            for k, v in m.items():
                if isinstance(v, float) and np.isfinite(v) or isinstance(v, int):
                    client.log_metric(rid, f"eval/{k}" if part == "all" else f"eval_{part}/{k}", float(v))
        for period, m in result.get("fpr_by_period", {}).items():  # the threshold over time, in the compare view
            client.log_metric(rid, f"eval_fpr_by_period/{period}", m["fpr"])
        out_dir = Path(cfg.paths.root).resolve() / "eval" / rid
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "metrics.json", {**result, "recall_by_class": by_class})
        for name, c in by_class.items():
            client.log_metric(rid, tracking.metric_name(f"eval_class/{name.replace(' ', '_')}/recall"), float(c["recall"]))
        (out_dir / "metrics.txt").write_text(text)
        report = _report(cfg, out_dir, scored, loaded, scored.alert_threshold, result)  # its plots are sessions
        client.log_artifacts(rid, str(out_dir), "eval")
    if pretrain_run:  # link back: the pretrain run shows its latest evaluation
        try:
            client.log_metric(pretrain_run, "eval/f1", result["all"]["f1"])
            client.log_metric(pretrain_run, "eval/auroc", result["all"]["auroc"])
            client.set_tag(pretrain_run, "latest_eval_run_id", rid)
        except Exception:  # the model may come from another tracking store
            pass
    return {"run_id": rid, "transfer": transfer, "metrics": result, "recall_by_class": by_class, "seconds": round(elapsed, 3), "table": text,
            "report": str(report),
            "metrics_path": str(out_dir / "metrics.json"), "scores": {"ids": ids, "labels": labels, "scores": scores}}
