"""Streaming detection: lines arrive one by one (stdin, a growing file, a generator); sessions close on
entity inactivity (event time), on reaching data.session.max_events, or when the input ends; alerts are
written as sessions close.  Memory is bounded: at most detect.max_open_sessions sessions stay open (the
least recently active one is closed early, counted as "evicted"), each holding at most max_events events.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

from loglm.detect.alerts import events_from_parsed
from loglm.detect.calibration_record import alert_threshold
from loglm.detect.detector import (
    ScoreWriter,
    check_not_all_rejected,
    detect_config_of,
    piece_alerts,
    report_from_files,
    session_score_rows,
)
from loglm.ingest.prepare import to_event
from loglm.ingest.readers import (
    Continuations,
    LineAccount,
    Rejection,
    bounded_lines,
    event_parser,
    line_of,
    make_reader,
    parse_line_safely,
    record_starts,
)
from loglm.ingest.sessions import Events, Session, session_keys
from loglm.privacy import from_config
from loglm.shards import session_table
from loglm.signals import result_ready, stop_on_signals
from loglm.windows import windows_of


class StreamingDetector:
    def __init__(self, cfg, model, scorer, alerts_out, rejections_out=None, findings_out=None, scores_out=None):
        self.cfg = cfg
        self.scores_out = scores_out  # a detector.ScoreWriter: every scored session, as batch writes them
        self.model = model
        self.scorer = scorer
        self.dcfg = detect_config_of(model, cfg.detect)
        self.threshold = alert_threshold(model.calibration)  # per session, the unit an alert is
        self.pseudo = from_config(cfg.detect)  # once: fails fast on a missing key, not on the first alert
        self.reader = make_reader(cfg.data, live=True)
        self._readers: dict = {}  # source -> its data.sources reader
        self.session_cfg = cfg.data.session
        self.idle_s, self.idle_from = stream_idle_close(cfg, model.calibration)
        self.max_open = cfg.detect.max_open_sessions
        self.alerts_out = alerts_out
        self.findings_out = findings_out
        if findings_out is not None:
            from loglm.detect.findings import FindingStream, product_version

            self.findings = FindingStream(cfg.detect.group_gap_s, cfg.detect.evidence_events, product_version(),
                                          cfg.detect.max_open_sessions)
        self.rejections_out = rejections_out
        self.account = LineAccount()
        self.open: OrderedDict[str, list[dict]] = OrderedDict()  # key -> events, least recently active first
        self.pending: list[tuple[str, list[dict], bool]] = []  # (key, events, closed) waiting to be scored
        self.watermark = float("-inf")
        self.stats = {"sessions_scored": 0, "events_scored": 0, "alerts": 0, "evicted": 0, "max_open_seen": 0,
                      "events_counted": 0}
        self._since_sweep = 0
        self._parsers: dict[int, object] = {}  # id(reader) -> its line parser

    def _reader(self, source: str):
        """The reader of ``source``: the data's own, or its ``data.sources`` item's (one per source, kept:
        a structured reader carries the header it has read)."""
        if not self.cfg.data.sources:
            return self.reader
        if source not in self._readers:
            self._readers[source] = make_reader(self.cfg.data, source, live=True)
        return self._readers[source]

    # -- input ---------------------------------------------------------------------------------
    def feed(self, raw: bytes, source: str, line_no: int, continued: int = 0) -> None:
        """One line, or with ``continued`` > 0 one record of that many more lines (data.multiline)."""
        self.account.read += 1 + continued
        self.account.continued += continued
        vocab = self.model.vocab
        reader = self._reader(source)
        parse = self._parsers.get(id(reader))
        if parse is None:  # raw text lines through their reader's line plans, as batch detection reads them
            parse = self._parsers[id(reader)] = event_parser(reader, vocab.mask_params) or reader.parse_line
        item = parse_line_safely(parse, raw, source, line_no)
        if item is None:  # a metadata line of a structured format (Zeek #fields, CSV header)
            self.account.metadata += 1
            return
        if type(item) is tuple:
            _, _, ts, raw_text, _, masked, ents = item
            tid = vocab.miner.match(masked)
            tid = -1 if tid is None else tid
        elif isinstance(item, Rejection):
            self._reject(source, line_no, item.reason)
            return
        else:
            tid, masked, ents = to_event(item, vocab.miner, frozen=True, mask=vocab.mask_params,
                                         codec=vocab.flow_codec)
            ts, raw_text = item.ts, item.raw
        by = self.session_cfg.by
        if by == "event":
            keys = [f"{source}:{line_no}"]
        elif by == "count":  # consecutive windows of window_events events, in arrival order
            keys = [f"w{self.stats['events_counted'] // self.session_cfg.window_events:08d}"]
            self.stats["events_counted"] += 1
        else:
            keys = session_keys(ents, ts, self.session_cfg)
        if not keys:
            self._reject(source, line_no, f"no {self.session_cfg.entity_type} in line: cannot assign a session")
            return
        self.account.accepted += 1
        event = {"source": source, "line_no": line_no, "ts": ts, "template": tid, "raw": raw_text,
                 "entities": ents, "masked": masked}
        self.watermark = max(self.watermark, ts)
        for key in keys:
            events = self.open.pop(key, None) or []
            events.append(event)
            self.open[key] = events  # most recently active last
            if by == "count" and len(events) >= self.session_cfg.window_events:  # the window is complete
                self.pending.append((key, self.open.pop(key), True))
            elif len(events) >= self.session_cfg.max_events:  # split policy: a full chunk is scored now
                self.pending.append((key, self.open.pop(key), False))
        while len(self.open) > self.max_open:
            key, events = self.open.popitem(last=False)
            self.stats["evicted"] += 1
            self.pending.append((key, events, False))
        self.stats["max_open_seen"] = max(self.stats["max_open_seen"], len(self.open))
        self._since_sweep += 1
        if self._since_sweep >= 1000:
            self._sweep_idle()
        if len(self.pending) >= self.dcfg.batch_size:
            self._score_pending()

    def _reject(self, source: str, line_no: int, reason: str) -> None:
        self.account.reject(reason)
        if self.rejections_out is not None:
            quoted = self.pseudo.scrub(reason) if self.pseudo else reason  # reasons may quote raw values
            self.rejections_out.write(json.dumps({"file": source, "line": line_no, "reason": quoted}) + "\n")

    def _sweep_idle(self) -> None:
        """Close sessions idle for stream_idle_close_s of event time (the newest timestamp seen)."""
        self._since_sweep = 0
        horizon = self.watermark - self.idle_s
        for key in [k for k, ev in self.open.items() if ev[-1]["ts"] <= horizon]:
            self.pending.append((key, self.open.pop(key), True))

    # -- scoring -------------------------------------------------------------------------------
    def _score_pending(self) -> None:
        if not self.pending:
            return
        ev = Events()
        sessions = []
        for key, events, closed in self.pending:
            start = len(ev.ts)
            for e in events:
                ev.source.append(e["source"])
                ev.line_no.append(e["line_no"])
                ev.ts.append(e["ts"])
                ev.template.append(e["template"])
                ev.masked.append(e["masked"])
                ev.raw.append(e["raw"])
                ev.entities.append(e["entities"])
                ev.label.append(None)
            by = self.session_cfg.by
            etype = self.session_cfg.entity_type if by in ("entity", "entity_window") else {"count": "window"}.get(by, by)
            entity = key.split("@", 1)[0] if by == "entity_window" else key
            sessions.append(Session(key, etype, entity, list(range(start, len(ev.ts))), closed=closed, split="stream"))
        self.pending = []
        table = session_table(sessions, ev, self.model.vocab)
        ws = self.scorer(*windows_of(table), self.dcfg)
        info = {"run_id": self.model.meta.get("run_id"), "model_dir": str(self.model.folder)}
        alerts = piece_alerts(table, ws, events_from_parsed(ev), self.model, self.dcfg, self.threshold, info,
                              self.pseudo)
        if self.scores_out is not None:
            self.scores_out.add(session_score_rows(table, ws.score, pseudo=self.pseudo))
        for a in alerts:
            self.alerts_out.write(json.dumps(a) + "\n")
            if self.findings_out is not None:  # SIEM feed: Create, then Update while the entity keeps alerting
                self.findings_out.write(json.dumps(self.findings.feed(a)) + "\n")
        self.alerts_out.flush()
        if self.findings_out is not None:
            self.findings_out.flush()
        self.stats["sessions_scored"] += len(sessions)
        self.stats["events_scored"] += len(ev.ts)
        self.stats["alerts"] += len(alerts)

    def finish(self) -> dict:
        """The input ended: sessions still open are scored as batch detection would score them (closed, with
        [END], by :func:`loglm.ingest.sessions.is_closed`: an entity with ``data.session.idle_close_s=0`` is)."""
        from loglm.ingest.sessions import is_closed

        while self.open:
            key, events = self.open.popitem(last=False)
            self.pending.append((key, events, is_closed(self.session_cfg, events[0]["ts"], events[-1]["ts"],
                                                        self.watermark)))
            if len(self.pending) >= self.dcfg.batch_size:
                self._score_pending()
        self._score_pending()
        acct = self.account.as_dict()
        return {"lines": acct, **self.stats, "threshold": self.threshold, "idle_close_s": self.idle_s}


def stream_idle_close(cfg, calibration: dict) -> tuple[float, str]:
    """(seconds of event-time quiet after which a streamed session closes, where that figure comes from).

    Batch detection scores whole sessions; a stream has to guess when one is over.  Closing earlier than
    training did cuts normal sessions in pieces that end where the model expects more (on HDFS blocks a
    60 s idle close gave 1,880 sessions and 104 alerts where batch gave 1,782 and 67)."""
    if cfg.detect.stream_idle_close_s is not None:
        return float(cfg.detect.stream_idle_close_s), "detect.stream_idle_close_s"
    pauses = calibration.get("session_pause_s") or {}
    if pauses.get("n"):
        return max(1.0, 2 * float(pauses["p999"])), (f"twice the longest pause inside 99.9% of {pauses['n']} "
                                                     "normal training sessions")
    return 60.0, "default (the model records no training pauses)"


class FollowLines:
    """Lines of a growing file (or '-' for stdin) as they arrive, through log rotation, as ``tail -F`` reads:
    iterate it for ``(line, stream line number)``; it ends after ``idle_exit_s`` without growth.

    - **Replaced** (logrotate's default ``create``: the file renamed, a new one made under the name; or
      deleted and made again): the old file is read to its end, then the new one from its start.
    - **Truncated in place** (``copytruncate``): read again from its start.  Lines written between the last
      read and the truncation are lost to any reader (they are only in logrotate's copy): prefer ``create``.
    - **Gone** and not yet made again: the open file is still read, and the name checked at every poll.

    Line numbers run on across files (the stream's count, what the accounting adds up); ``rotations`` lists,
    for each switch, the stream line the new content starts at, so a rejection's line maps back to its file.
    At most ``max_line_bytes + 1`` bytes of a line are held: a longer one comes back as a
    :class:`~loglm.ingest.readers.LongLine` (rejected with its length), whatever arrives."""

    def __init__(self, path: str, poll_s: float = 0.2, idle_exit_s: float | None = None,
                 max_line_bytes: int = 65_536):
        self.path, self.poll_s, self.idle_exit_s, self.max_line_bytes = path, poll_s, idle_exit_s, max_line_bytes
        self.rotations: list[dict] = []
        # opened now: what is followed is the file the name pointed at when the stream was set up (a missing
        # one fails here, before any work), not whatever it points at when the first line is asked for
        self._fh = None if path == "-" or path.endswith(".gz") else open(path, "rb")

    def __iter__(self) -> Iterator[tuple[bytes, int]]:
        if self.path == "-":
            for n, raw in enumerate(bounded_lines(sys.stdin.buffer, self.max_line_bytes), 1):
                yield raw, n
            return
        if self.path.endswith(".gz"):  # a compressed file is complete (it does not grow line by line)
            from loglm.ingest.readers import open_binary

            with open_binary(Path(self.path)) as fh:
                yield from ((raw, n) for n, raw in enumerate(bounded_lines(fh, self.max_line_bytes), 1))
            return
        yield from self._follow()

    def _follow(self) -> Iterator[tuple[bytes, int]]:
        limit = self.max_line_bytes + 1
        fh, self._fh = self._fh, None
        if fh is None:
            raise RuntimeError(f"{self.path}: a FollowLines is iterated once")
        ident = _identity(os.fstat(fh.fileno()))
        n, buf, total, last = 0, b"", 0, time.monotonic()
        try:
            while True:
                chunk = fh.readline(limit)
                if chunk:
                    total += len(chunk)
                    if len(buf) < limit:  # keep the line's start only
                        buf = (buf + chunk)[:limit]
                    if chunk.endswith(b"\n"):
                        n += 1
                        yield line_of(buf, total), n
                        buf, total = b"", 0
                    last = time.monotonic()
                    continue
                # at the end of what the open file holds: has the name moved on to other content?
                how = self._rotated(fh, ident)
                if how:
                    if buf:  # the old content's last line, never ended by a newline
                        n += 1
                        yield line_of(buf, total), n
                        buf, total = b"", 0
                    if how == "replaced":
                        fh.close()
                        fh = open(self.path, "rb")
                        ident = _identity(os.fstat(fh.fileno()))
                    else:
                        fh.seek(0)
                    self.rotations.append({"how": how, "first_line": n + 1})
                    print(f"loglm: {self.path} was {how} (log rotation); reading it from its start: stream line "
                          f"{n + 1} is its line 1", file=sys.stderr, flush=True)
                    last = time.monotonic()
                    continue
                if self.idle_exit_s is not None and time.monotonic() - last >= self.idle_exit_s:
                    if buf:
                        n += 1
                        yield line_of(buf, total), n
                    return
                time.sleep(self.poll_s)
        finally:
            fh.close()

    def _rotated(self, fh, ident: tuple[int, int]) -> str | None:
        """"replaced" when the name now points at another file, "truncated" when the open file shrank below
        the position read to, else None (also while the name is gone).  Called at the open file's end: a
        replaced file is switched from only after it has been read to its end."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        if _identity(st) != ident:
            # a last write to the old file since the read that found its end: read it first
            return "replaced" if os.fstat(fh.fileno()).st_size <= fh.tell() else None
        if st.st_size < fh.tell():
            return "truncated"
        return None


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def run_stream(cfg, model, scorer, lines: Iterable[tuple[bytes, int]], source: str, out: Path) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out, "w") as alerts_fh, open(out.with_suffix(".rejected.jsonl"), "w") as rej_fh, \
            open(out.with_suffix(".ocsf.jsonl"), "w") as findings_fh:
        scores = ScoreWriter(out.with_suffix(".scores.parquet"))
        det = StreamingDetector(cfg, model, scorer, alerts_fh, rej_fh, findings_fh, scores)
        starts = record_starts(det._reader(source))  # data.multiline: records of several lines
        joiner = Continuations(starts, cfg.data.max_line_bytes) if starts else None
        with stop_on_signals() as stop:
            print(f"loglm: following {source}; alerts to {out} (Ctrl-C or SIGTERM stops after scoring what is held); "
                  f"a session closes after {det.idle_s:g} s without events ({det.idle_from})", file=sys.stderr, flush=True)
            try:  # a signal interrupts a blocking read at once; one during feed() ends the stream after it
                for raw, n in lines:
                    with stop.deferred():
                        for first, record, extra in joiner.push(n, raw) if joiner else ((n, raw, 0),):
                            det.feed(record, source, first, extra)
                    if stop.requested:
                        break
                stop.finish()  # inside the try: a signal landing as the input ends is caught below too
            except KeyboardInterrupt:
                pass  # Ctrl-C / SIGTERM end a live stream: what was read is still scored and accounted
            for first, record, extra in joiner.flush() if joiner else ():  # the record held at the end
                det.feed(record, source, first, extra)
            summary = det.finish()
            result_ready()  # a stop from here to the exit no longer cuts the summary (signals.until_exit)
        if stop.received:
            summary["stopped_by"] = stop.name
    summary["scores_path"] = str(scores.close())
    check_not_all_rejected(summary["lines"], [], cfg.data)  # after the accounting is written and flushed
    if cfg.detect.report:  # the same files as batch detection: alerts, findings, scores, rejections, report
        summary["report_path"] = str(report_from_files(out, Path(summary["scores_path"]), det.threshold, source, model))
    summary.update({"alerts_path": str(out), "findings_path": str(out.with_suffix(".ocsf.jsonl")),
                    "rejected_path": str(out.with_suffix(".rejected.jsonl")),
                    "seconds": round(time.perf_counter() - t0, 3), "pid": os.getpid()})
    return summary
