"""Detection job: score sessions with a trained model, alert above the calibrated threshold."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from loglm.config import DetectConfig
from loglm.detect.listen import is_listener
from loglm.detect.out_lock import writing
from loglm.detect.score_core import calibrated_config


def model_dir_for(cfg) -> Path:
    from loglm.model.store import resolve_model_dir

    if cfg.ckpt:
        return resolve_model_dir(cfg.ckpt, cfg.paths.root)
    latest = Path(cfg.paths.root).resolve() / "models" / "latest.json"
    if latest.is_file():
        return Path(json.loads(latest.read_text())["model_dir"])
    raise FileNotFoundError("no model given: pass ckpt=<model dir or run id> (or run pipelines.pretrain first)")


def detect_config_of(loaded, cfg_detect: DetectConfig) -> DetectConfig:
    """Scoring settings must be those the threshold was calibrated with."""
    cal = loaded.calibration
    if cal is None:
        raise ValueError(f"{loaded.folder} has no calibration.json: it cannot decide what is anomalous")
    encoder = getattr(loaded, "encoder", None)  # a torch model; an exported bundle scores on the CPU
    note = gpu_batch_note(next(encoder.parameters()).device.type, cfg_detect) if encoder is not None else None
    if note:
        print(f"loglm: {note}", file=sys.stderr)
    return calibrated_config(cfg_detect, cal)


def gpu_batch_note(device_type: str, cfg_detect: DetectConfig) -> str | None:
    """Scoring on a GPU with the batches sized for a CPU's cache (detect.batch_size and max_batch_tokens left at
    their defaults) keeps the GPU mostly idle: a note saying which settings to raise; None otherwise."""
    default = DetectConfig()
    if device_type != "cuda" or (cfg_detect.batch_size, cfg_detect.max_batch_tokens) != (
            default.batch_size, default.max_batch_tokens):
        return None
    return (f"scoring on the GPU with batches sized for a CPU ({default.batch_size} windows, "
            f"{default.max_batch_tokens} positions): raise detect.batch_size and detect.max_batch_tokens "
            "(e.g. 1024 and 262144): batching sets the speed, not which windows are scored")


def same_vocabulary(model_dir: Path, data_dir: Path) -> bool:
    from loglm.artifacts import sha256_file

    mine, theirs = model_dir / "vocab.json", data_dir / "vocab.json"
    return not (theirs.is_file() and mine.is_file() and sha256_file(mine) != sha256_file(theirs))


def check_same_vocabulary(model_dir: Path, data_dir: Path) -> None:
    """Prepared token ids mean something only under the vocabulary they were made with."""
    if not same_vocabulary(model_dir, data_dir):
        raise ValueError(f"the model {model_dir} was trained on another vocabulary than the prepared data {data_dir}: "
                         "pass ckpt=<the run trained on this data>, or give raw inputs=[...] to score with the "
                         "model's own vocabulary")


def check_prepared(model_dir: Path, data_dir: Path, cfg) -> None:
    """A split is scored from prepared data: none there is an error naming the data the model was trained on."""
    if (data_dir / "MANIFEST.json").is_file():
        return
    from loglm.config import trained_data_config

    trained = trained_data_config(model_dir, cfg.data).name
    hint = (f"this model was trained on data {trained!r}: add data={trained} (or dataset={trained})"
            if trained != cfg.data.name else f"prepare it first: python -m pipelines.prepare data={trained}")
    raise ValueError(f"split={cfg.split} of data {cfg.data.name!r} is not prepared ({data_dir} holds no "
                     f"MANIFEST.json): {hint}; or give raw inputs=[...]")


def check_not_all_rejected(lines: dict, rejections: list, data) -> None:
    """Every line rejected is a wrong format or wrong settings, not a quiet day: an error naming the reasons."""
    if lines["read"] > lines["metadata"] and lines["accepted"] == 0:
        reasons = ", ".join(f"{r!r}: {n}" for r, n in sorted(lines["rejected_by_reason"].items(), key=lambda x: -x[1])[:3])
        first = f"; first: {rejections[0][0]}:{rejections[0][1]}: {rejections[0][2][:200]}" if rejections else ""
        raise ValueError(f"all {lines['read'] - lines['metadata']} lines were rejected with data.format="
                         f"{data.format!r} ({reasons}){first}: nothing was scored")


def score_input(cfg, loaded):
    """Sessions to score (a pyarrow table), an event lookup, and the line accounting, all in memory: the
    reference that detection's piece-at-a-time path (:class:`DetectionInput`) is tested against."""
    from loglm.detect.alerts import PreparedEvents, events_from_parsed
    from loglm.ingest.prepare import parse_inputs, prepared_dir, read_id_list
    from loglm.ingest.sessions import label_sessions
    from loglm.shards import read_sessions, session_table

    if cfg.inputs:
        parsed = parse_inputs(list(cfg.inputs), cfg.data, loaded.vocab.miner, frozen=True,
                              mask=loaded.vocab.mask_params, codec=loaded.vocab.flow_codec)
        check_not_all_rejected(parsed.account.as_dict(), parsed.rejections, cfg.data)
        label_sessions(parsed.sessions, parsed.events,
                       read_id_list(cfg.data.anomalous_ids) if cfg.data.anomalous_ids else None,
                       cfg.data.normal_labels, cfg.data.unknown_labels)
        for s in parsed.sessions:
            s.split = "detect"
        table = session_table(parsed.sessions, parsed.events, loaded.vocab)
        return table, events_from_parsed(parsed.events), parsed.account.as_dict(), parsed.rejections
    data_dir = prepared_dir(cfg.paths.root, cfg.data.name)
    check_same_vocabulary(Path(loaded.folder), data_dir)
    table = read_sessions(data_dir, cfg.split)
    return table, PreparedEvents(data_dir), None, []


def session_score_rows(table, scores, pseudo=None) -> list[dict]:
    """One row per session of ``table`` (the one place chunk rows are folded into sessions): ids, entity,
    time span, label, its highest chunk score and its events.  Batch detection writes all of them, streaming
    appends them as sessions close, reports and embeddings read them."""
    rows: dict[str, dict] = {}
    cols = {c: table.column(c).to_pylist() for c in ("session_id", "entity_type", "entity", "start_ts", "end_ts", "label")}
    counts = [len(t) for t in table.column("tokens").to_pylist()]  # events ([END] is not one)
    for r, sid in enumerate(cols["session_id"]):
        score = float(scores[r])
        cur = rows.get(sid)
        if cur is None:
            rows[sid] = {**{c: cols[c][r] for c in cols}, "score": score, "n_events": int(counts[r])}
        else:
            cur["score"] = max(cur["score"], score)
            cur["n_events"] += int(counts[r])
            cur["start_ts"] = min(cur["start_ts"], cols["start_ts"][r])
            cur["end_ts"] = max(cur["end_ts"], cols["end_ts"][r])
    if pseudo is not None:
        for row in rows.values():
            if row["entity_type"] in pseudo.kinds:
                row["entity"] = row["session_id"] = pseudo.token(row["entity_type"], row["entity"])
    return list(rows.values())


def score_schema():
    import pyarrow as pa

    return pa.schema([("session_id", pa.string()), ("entity_type", pa.string()), ("entity", pa.string()),
                      ("start_ts", pa.float64()), ("end_ts", pa.float64()), ("label", pa.int64()),
                      ("score", pa.float64()), ("n_events", pa.int64())])


class ScoreWriter:
    """``<alerts>.scores.parquet``: every scored session, alerting or not, appended in row groups (bounded
    memory on an endless stream); written beside and renamed into place on ``close`` (``abort`` drops it)."""

    def __init__(self, path: Path, flush_rows: int = 8192):
        from loglm.artifacts import ParquetAppender

        self.file = ParquetAppender(path, score_schema())
        self.path = self.file.path
        self.rows: list[dict] = []
        self.flush_rows = flush_rows

    def add(self, rows: list[dict]) -> None:
        self.rows.extend(rows)
        if len(self.rows) >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            self.file.write(pa.Table.from_pylist(self.rows, schema=score_schema()))
            self.rows = []

    def close(self) -> Path:
        self._flush()
        return self.file.close()

    def abort(self) -> None:
        self.file.abort()


def run(cfg) -> dict:
    """Detection with a trained torch model (model directory or run id)."""
    from loglm.detect.torch_scoring import score_windows
    from loglm.model.store import load_model

    loaded = load_model(model_dir_for(cfg), device=cfg.detect.device)
    cfg = with_model_data(cfg, Path(loaded.folder))
    scorer = lambda t, g, c, d: score_windows(loaded.encoder, t, g, c, d)  # noqa: E731
    if cfg.follow:
        return follow(cfg, loaded, scorer)
    return detect_with(cfg, loaded, scorer)


# data.* keys that divide the work without changing what is read: always this command's own
WORK_DIVISION_KEYS = ("spill_partitions", "shard_rows")
# data.* keys that describe the inputs, not the model (when logs without a year end): this command's too
INPUT_KEYS = ("year_reference",)


def with_model_data(cfg, model_dir: Path):
    """Raw inputs are read the way the model's training data was (its config.yaml: format, header, fields,
    sessions), not with this command's defaults, unless ``detect.data_from=command``; how the work is divided
    (:data:`WORK_DIVISION_KEYS`) and what describes the inputs (:data:`INPUT_KEYS`) stay this command's.  The
    training data's label file does not describe new inputs and is dropped (labelled inputs:
    ``detect.data_from=command`` with ``data.anomalous_ids``).  Says which it uses."""
    import dataclasses

    if not cfg.inputs or cfg.detect.data_from == "command":
        return cfg
    if cfg.detect.data_from != "model":
        raise ValueError(f"detect.data_from must be 'model' or 'command', got {cfg.detect.data_from!r}")
    if not (model_dir / "config.yaml").is_file():
        print(f"loglm: {model_dir} records no data settings: reading inputs with this command's data.*", file=sys.stderr)
        return cfg
    from loglm.config import trained_data_config

    data = trained_data_config(model_dir, cfg.data, labels=False)
    # how this machine cuts the work, not what is read: the command's (partitions, rows per shard)
    data = dataclasses.replace(data, **{k: getattr(cfg.data, k) for k in WORK_DIVISION_KEYS + INPUT_KEYS})
    if data != cfg.data:
        print(f"loglm: reading inputs as the model's training data was read (data {data.name!r}, format "
              f"{data.format!r}, sessions by {data.session.by}); detect.data_from=command uses this command's data.*",
              file=sys.stderr)
    return dataclasses.replace(cfg, data=data)


def follow(cfg, model, scorer) -> dict:
    """Streaming detection over growing files (several side by side) or stdin ("-")."""
    if not cfg.inputs:
        raise ValueError("follow=true needs an input: a file that grows, several, or '-' for stdin")
    if cfg.follow_from not in FOLLOW_FROM:
        raise ValueError(f"follow_from must be one of {FOLLOW_FROM}, got {cfg.follow_from!r}")
    sources = list(cfg.inputs)
    if len(sources) > 1 and any(map(is_listener, sources)):
        raise ValueError(f"follow=true: a network input is listened to alone, not beside others: {sources}")
    out = Path(cfg.out) if cfg.out else Path(model.folder) / "alerts" / "stream.jsonl"
    # regular files' positions are saved beside the alerts, so a restart goes on where this run stopped
    growing = not any(s == "-" or s.endswith(".gz") or is_listener(s) for s in sources)
    state = out.with_suffix(".follow.json") if growing else None
    with writing(out):  # before the positions are read: another stream on this out would save its own
        return _follow(cfg, model, scorer, sources, out, state)


def _follow(cfg, model, scorer, sources: list[str], out: Path, state: Path | None) -> dict:
    from loglm.detect.streaming import FollowFiles, FollowLines, load_state, run_stream

    saved = load_state(state, sources) if state is not None and cfg.follow_from == "resume" else {}
    start = cfg.follow_from if cfg.follow_from != "resume" else "start"
    if is_listener(sources[0]):
        from loglm.detect.listen import SyslogListener, keeps_pri

        lines = SyslogListener(sources[0], idle_exit_s=cfg.follow_exit_s, max_line_bytes=cfg.data.max_line_bytes,
                               keep_pri=keeps_pri(cfg.data), ticks=True)
    elif len(sources) == 1:
        lines = FollowLines(sources[0], idle_exit_s=cfg.follow_exit_s, max_line_bytes=cfg.data.max_line_bytes,
                            start=start, resume=saved.get(os.path.abspath(sources[0])), ticks=True)
    else:
        lines = FollowFiles(sources, idle_exit_s=cfg.follow_exit_s, max_line_bytes=cfg.data.max_line_bytes,
                            start=start, resume=saved, ticks=True)
    try:
        summary = run_stream(cfg, model, scorer, lines, ", ".join(sources), out, state,
                             append=cfg.follow_from != "start")
    finally:
        lines.close()
    summary["rotations"] = lines.rotations  # where each new file (log rotation) starts in its lines
    summary["resumed"] = lines.resumed
    if (stats := getattr(lines, "stats", None)) is not None:  # a network input: connections taken and refused
        summary["listener"] = stats
    return summary


FOLLOW_FROM = ("resume", "start", "end")


def write_detection_report(alerts_path: Path, scores: np.ndarray, starts: np.ndarray, labels: np.ndarray,
                           alerts: list[dict], threshold: float, cfg, model, n_alerts: int | None = None) -> Path:
    """The HTML report of a detection run (``<alerts>.html``) from every session's score, start and label."""
    from loglm.report import write_report

    path = alerts_path.with_suffix(".html")
    where = ", ".join(cfg.inputs) if cfg.inputs else f"{cfg.data.name}/{cfg.split}"
    write_report(path, f"LogLM detection: {where}",
                 f"model {model.meta.get('run_id')} ({model.folder}); threshold from validation normal data at "
                 f"target FPR {model.calibration.get('target_fpr')}", scores, starts, threshold, alerts,
                 labels=labels if (labels >= 0).any() else None, n_alerts=n_alerts)
    return path


def report_from_files(alerts_path: Path, scores_path: Path, threshold: float, where: str, model,
                      top_alerts: int = 20) -> Path:
    """The HTML report of a stream, from what it wrote: the scores Parquet (every session) and the alerts file
    (only its ``top_alerts`` highest are held), so an endless stream's report needs no corpus in memory."""
    import heapq

    import pyarrow.parquet as pq

    from loglm.report import write_report

    t = pq.read_table(scores_path, columns=["score", "start_ts", "label"])
    scores = t.column("score").to_numpy()
    starts = t.column("start_ts").to_numpy()
    labels = np.array([-1 if v is None else v for v in t.column("label").to_pylist()])
    top: list = []
    n = -1
    with open(alerts_path) as fh:
        for n, line in enumerate(fh):
            a = json.loads(line)
            item = (a["score"], -n, a)
            if len(top) < top_alerts:
                heapq.heappush(top, item)
            elif item[:2] > top[0][:2]:
                heapq.heapreplace(top, item)
    alerts = [a for _, _, a in sorted(top, key=lambda x: x[:2], reverse=True)]
    path = alerts_path.with_suffix(".html")
    write_report(path, f"LogLM detection: {where}",
                 f"model {model.meta.get('run_id')} ({model.folder}); threshold from validation normal data at "
                 f"target FPR {model.calibration.get('target_fpr')}; streamed", scores, starts, threshold, alerts,
                 labels=labels if (labels >= 0).any() else None, top_alerts=top_alerts, n_alerts=n + 1)
    return path


def write_cef(alerts_path: Path, alert_lines, enabled: bool) -> dict:
    """``<alerts>.cef``: every alert as a CEF line (detect.cef), written whole; when off, an earlier run's
    file is removed rather than left beside alerts it does not describe."""
    path = alerts_path.with_suffix(".cef")
    if not enabled:
        if path.is_file():
            path.unlink()
            print(f"loglm: removed {path} of an earlier run (detect.cef=false)", file=sys.stderr)
        return {}
    from loglm.artifacts import atomic_write_bytes
    from loglm.detect.cef_alerts import alert_to_cef
    from loglm.detect.findings import product_version

    version = product_version()
    atomic_write_bytes(path, ((alert_to_cef(json.loads(x), version) + "\n").encode() for x in alert_lines))
    return {"cef_path": str(path)}


def write_findings(alerts_path: Path, spill, dcfg, work: Path) -> dict:
    """Grouped findings as OCSF Detection Findings next to the alerts (``<alerts>.ocsf.jsonl``), highest score
    first (ties: the order of their entities' first alerts, then time), from the alerts ``spill``
    (:class:`loglm.detect.alerts.AlertSpill`) an entity at a time; each OCSF line goes to a file in ``work``
    first, so neither every alert nor every finding is held."""
    from loglm.artifacts import atomic_write_bytes
    from loglm.detect.alerts import LineSpill
    from loglm.detect.findings import entity_findings, product_version, to_ocsf

    product = product_version()
    findings = LineSpill(work / "findings.jsonl")
    try:
        for etype, value, items in spill.by_entity():
            for f in entity_findings(etype, value, items, dcfg.group_gap_s, dcfg.evidence_events):
                findings.add((-f["score"], len(findings)), to_ocsf(f, product))  # ties: in the order made
        path = alerts_path.with_suffix(".ocsf.jsonl")
        atomic_write_bytes(path, findings.lines())
    finally:
        findings.close()
    return {"findings_path": str(path), "findings": len(findings)}


def piece_alerts(table, ws, event, model, dcfg, threshold: float, info: dict, pseudo=None) -> list[dict]:
    """The alerts of one scored piece, as batch detection and evaluation write them: built from its window
    scores, enriched (kinds, ATT&CK, similar sessions) and pseudonymised when ``pseudo`` is given."""
    from loglm.analyst.enrich import enrich_alerts
    from loglm.detect.alerts import build_alerts

    part = build_alerts(table, ws, event, model.vocab, threshold, dcfg.evidence_events, info, model.calibration)
    part = enrich_alerts(part, table, model, dcfg)
    return part if pseudo is None else [pseudo.alert(a) for a in part]


class DetectionInput:
    """What batch detection scores, one table at a time, so no step holds the corpus: a prepared split read a
    shard at a time, or raw inputs prepared out of core into a work folder with the model's own vocabulary
    (:func:`loglm.ingest.partitioned.prepare`: the same reading and sessions as ``pipelines.prepare``; the
    folder is removed afterwards, or by the next run if this one is killed).  Pre-sequenced formats (no raw
    lines) are detected on their prepared split.  ``account`` and ``rejections`` describe the raw inputs (None
    and [] for a prepared split)."""

    def __init__(self, cfg, model, out: Path):
        self.cfg, self.model, self.out = cfg, model, out
        self.account, self.rejections, self.folder, self.split = None, [], None, cfg.split
        self._work = None

    def __enter__(self):
        from loglm.ingest import builders
        from loglm.ingest.prepare import prepared_dir

        cfg = self.cfg
        if not cfg.inputs:
            self.folder = prepared_dir(cfg.paths.root, cfg.data.name)
            check_prepared(Path(self.model.folder), self.folder, cfg)
            check_same_vocabulary(Path(self.model.folder), self.folder)
        elif cfg.data.format in builders.BUILDERS:
            raise ValueError(
                f"data.format={cfg.data.format!r} is pre-sequenced (files of event keys, split by their protocol): "
                f"detection with inputs= reads raw logs or flows. Prepare these files "
                f"(`python -m pipelines.prepare data={cfg.data.name}`) and detect on a prepared split "
                f"(`python -m pipelines.detect ckpt=... data={cfg.data.name} split=test`)")
        else:
            self._prepare_inputs()
        return self

    def _prepare_inputs(self) -> None:
        import dataclasses

        from loglm.artifacts import work_folder
        from loglm.ingest import partitioned

        cfg = self.cfg
        self._work = work_folder(self.out, "detecting")
        data = dataclasses.replace(cfg.data, inputs=list(cfg.inputs))
        try:
            summary, _ = partitioned.prepare(dataclasses.replace(cfg, data=data), self._work,
                                             vocab=self.model.vocab, split="detect")
        except BaseException as e:
            import shutil

            shutil.rmtree(self._work, ignore_errors=True)  # __exit__ does not run when __enter__ fails
            if isinstance(e, partitioned.NothingAccepted):  # every line rejected: detection's error, with reasons
                check_not_all_rejected(e.lines, e.first, cfg.data)
            raise
        self.account = summary["lines"]
        self.folder, self.split = self._work, "detect"  # prepare's stages said what they read

    def rejected_lines(self):
        """(file, line, reason) of every rejected line, read from disk when the inputs were prepared."""
        if self._work is None:
            yield from self.rejections
            return
        with open(self._work / "rejected.jsonl") as fh:
            for line in fh:
                r = json.loads(line)
                yield r["file"], r["line"], r["reason"]

    def tables(self):
        """(sessions table, event lookup) pieces: all sessions of the split, each in exactly one piece."""
        from loglm.detect.alerts import PreparedEvents
        from loglm.shards import PIECE_ROWS, split_pieces

        event = PreparedEvents(self.folder)
        for t in split_pieces(self.folder, self.split, min(self.cfg.data.shard_rows, PIECE_ROWS)):
            yield t, event

    def __exit__(self, *exc):
        import shutil

        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
        return False


STOP_GRACE_S = 60.0  # a stopped detection that has not cleaned up by then exits at once (loglm.signals)


def detect_with(cfg, model, scorer) -> dict:
    """Score, alert and account, given any model with .vocab/.calibration/.meta/.folder and a scorer
    (tokens, gaps, closed, DetectConfig) -> WindowScores.  Imports no torch: the ONNX engine uses it too.
    The input is scored a piece (a prepared shard) at a time: memory follows the largest piece and the
    alerts, not the corpus.  Ctrl-C or SIGTERM ends the reading workers and removes the work folder (and
    the half-written outputs), says so and exits 130."""
    from loglm.signals import Stopped, stop_on_signals

    with stop_on_signals(STOP_GRACE_S):
        try:
            return _detect_with(cfg, model, scorer)
        except Stopped as e:
            import signal

            print(f"loglm: detection stopped by {signal.Signals(e.signum).name}: its reading workers were ended "
                  "and its work folder removed; outputs it had not finished were not written", file=sys.stderr,
                  flush=True)
            raise SystemExit(130) from None


def _detect_with(cfg, model, scorer) -> dict:
    listening = [s for s in cfg.inputs or () if is_listener(s)]
    if listening:
        raise ValueError(f"{listening[0]} is a network input: it is read as a stream (follow=true)")
    model_dir = Path(model.folder)
    out = Path(cfg.out) if cfg.out else model_dir / "alerts" / f"{cfg.data.name}-{'input' if cfg.inputs else cfg.split}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with writing(out):
        scores = ScoreWriter(out.with_suffix(".scores.parquet")) if cfg.detect.write_scores else None
        try:
            return _score_all(cfg, model, scorer, out, scores)
        except BaseException:
            if scores is not None:  # its hidden file, never renamed into place
                scores.abort()
            raise


def _score_all(cfg, model, scorer, out: Path, scores) -> dict:
    """Every piece of the input scored, alerted and written (alerts, findings, report, rejected lines); the
    alerts go to a work folder beside ``out`` as they come (:class:`loglm.detect.alerts.AlertSpill`),
    removed at the end."""
    import shutil

    from loglm.artifacts import work_folder
    from loglm.detect.alerts import AlertSpill

    work = work_folder(out, "alerting")
    work.mkdir(parents=True)
    alerts = AlertSpill(work / "alerts.jsonl")
    try:
        return _score_pieces(cfg, model, scorer, out, scores, alerts, work)
    finally:
        alerts.close()
        shutil.rmtree(work, ignore_errors=True)


def _score_pieces(cfg, model, scorer, out: Path, scores, alerts, work: Path) -> dict:
    import itertools

    from loglm.analyst.alert_vectors import centre_line, vectors_path
    from loglm.artifacts import atomic_write_bytes
    from loglm.detect.calibration_record import alert_threshold
    from loglm.privacy import from_config
    from loglm.progress import Progress
    from loglm.report import SessionView
    from loglm.windows import windows_of

    t0 = time.perf_counter()
    model_dir = Path(model.folder)
    dcfg = detect_config_of(model, cfg.detect)
    threshold = alert_threshold(model.calibration)  # per session, the unit an alert is
    info = {"run_id": model.meta.get("run_id"), "model_dir": str(model_dir)}
    pseudo = from_config(cfg.detect)
    view = SessionView()  # per session: score, start, label (the report's plots)
    n_sessions = n_events = pieces = 0
    with DetectionInput(cfg, model, out) as source:
        progress = Progress("scoring", unit="sessions")
        for table, event in source.tables():
            toks, gaps, closed = windows_of(table)
            ws = scorer(toks, gaps, closed, dcfg)
            alerts.add_alerts(piece_alerts(table, ws, event, model, dcfg, threshold, info, pseudo))
            rows = session_score_rows(table, ws.score, pseudo=pseudo)
            view.add(rows)
            if scores is not None:
                scores.add(rows)
            n_sessions += len(rows)
            n_events += int(sum(len(t) for t in toks))
            pieces += 1
            progress.tick(len(rows))
        progress.done(f"{n_sessions:,} sessions scored, {len(alerts):,} alerts")
        atomic_write_bytes(out, alerts.lines())  # by score, then start time, then session, whatever the pieces
        # the model's centre first (what groups alerts without an embeddings file), then each alert's vector;
        # empty with detect.alert_vectors=false
        atomic_write_bytes(vectors_path(out), itertools.chain([centre_line(model)] if dcfg.alert_vectors else [],
                                                              alerts.vector_lines()))
        findings_path = write_findings(out, alerts, cfg.detect, work)
        findings_path.update(write_cef(out, alerts.lines(), cfg.detect.cef))
        if cfg.detect.report:
            findings_path["report_path"] = str(write_detection_report(
                out, *view.arrays(), alerts.top(20), threshold, cfg, model, len(alerts)))
        if scores is not None:
            scores.close()
        account = source.account
        if account is not None:
            rej_path = out.with_suffix(".rejected.jsonl")  # written on every run (empty: none), never a stale one
            scrub = pseudo.scrub if pseudo is not None else (lambda r: r)  # reasons may quote raw values
            atomic_write_bytes(rej_path, ((json.dumps({"file": f, "line": n, "reason": scrub(r)}) + "\n").encode()
                                          for f, n, r in source.rejected_lines()))
    elapsed = time.perf_counter() - t0
    summary = {"alerts_path": str(out), "alerts": len(alerts), **findings_path,
               "vectors_path": str(vectors_path(out)),
               "scores_path": str(out.with_suffix(".scores.parquet")) if cfg.detect.write_scores else None,
               "sessions_scored": n_sessions, "events_scored": n_events, "pieces_scored": pieces,
               "threshold": threshold,
               "seconds": round(elapsed, 3), "events_per_s": round(n_events / max(elapsed, 1e-9), 1),
               "model_dir": str(model_dir)}
    if account is not None:
        summary["lines"] = account
        summary["rejected_path"] = str(out.with_suffix(".rejected.jsonl"))
    return summary
