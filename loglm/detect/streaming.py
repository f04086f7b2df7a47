"""Streaming detection: lines arrive one by one (stdin, a growing file, a generator); sessions close on
entity inactivity (event time), on reaching data.session.max_events, or when the input ends; alerts are
written as sessions close.  Memory is bounded: at most detect.max_open_sessions sessions stay open (the
least recently active one is closed early, counted as "evicted"), each holding at most max_events events.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from glob import escape as glob_escape
from itertools import islice
from pathlib import Path

from loglm.analyst.alert_vectors import centre_line, vectors_path
from loglm.analyst.alert_vectors import take as take_vectors
from loglm.detect.alerts import events_from_parsed
from loglm.detect.calibration_record import alert_threshold
from loglm.detect.cef_alerts import alert_to_cef
from loglm.detect.detector import (
    ScoreWriter,
    check_not_all_rejected,
    detect_config_of,
    piece_alerts,
    report_from_files,
    session_score_rows,
    write_cef,
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
from loglm.signals import held, result_ready, stop_on_signals
from loglm.windows import windows_of

# sessions scored together at most: the scorer groups them by length (less padding), so scoring a sweep's
# closed sessions in chunks of detect.batch_size (64) instead cost a fifth of the stream's speed on the
# bench's 4x input (9.1k -> 7.2k lines/s); one table of a sweep's every session is unbounded
SCORE_SESSIONS = 1024


class StreamingDetector:
    def __init__(self, cfg, model, scorer, alerts_out, rejections_out=None, findings_out=None, scores_out=None,
                 cef_out=None, vectors_out=None):
        self.cfg = cfg
        self.vectors_out = vectors_out  # each alert's session vector (loglm.analyst.alert_vectors)
        self.cef_out = cef_out  # detect.cef: each alert as a CEF line too
        self.scores_out = scores_out  # a detector.ScoreWriter: every scored session, as batch writes them
        self.model = model
        self.scorer = scorer
        self.dcfg = detect_config_of(model, cfg.detect)
        self.threshold = alert_threshold(model.calibration)  # per session, the unit an alert is
        if vectors_out is not None and self.dcfg.alert_vectors:  # the model's centre opens its vectors (each
            vectors_out.write(centre_line(model).decode())  # start: a restart with another model adds its own)
            vectors_out.flush()
        self.pseudo = from_config(cfg.detect)  # once: fails fast on a missing key, not on the first alert
        self.reader = make_reader(cfg.data, live=True)
        self._readers: dict = {}  # source -> its data.sources reader
        self.session_cfg = cfg.data.session
        self.idle_s, self.idle_from = stream_idle_close(cfg, model.calibration)
        self.max_open = cfg.detect.max_open_sessions
        self.alerts_out = alerts_out
        self.findings_out = findings_out
        from loglm.detect.findings import product_version

        self._version = product_version()
        if findings_out is not None:
            from loglm.detect.findings import FindingStream

            self.findings = FindingStream(cfg.detect.group_gap_s, cfg.detect.evidence_events, product_version(),
                                          cfg.detect.max_open_sessions)
        self.rejections_out = rejections_out
        self.account = LineAccount()
        self.open: OrderedDict[str, list[dict]] = OrderedDict()  # key -> events, least recently active first
        self.pending: list[tuple[str, list[dict], bool]] = []  # (key, events, closed) waiting to be scored
        self.watermark = float("-inf")
        self.last_line_at = time.monotonic()  # when the last line came (the start, before any)
        self.stats = {"sessions_scored": 0, "events_scored": 0, "alerts": 0, "evicted": 0, "max_open_seen": 0,
                      "events_counted": 0, "closed_quiet": 0,
                      "records_closed_quiet": 0}
        self._since_sweep = 0
        self._parsers: dict[int, object] = {}  # id(reader) -> its line parser
        self._sources: set[str] = set()  # the files events came from

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
        self._sources.add(source)
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
        while len(self.pending) >= self.dcfg.batch_size:
            self._score_pending()

    def _reject(self, source: str, line_no: int, reason: str) -> None:
        self.account.reject(reason)
        if self.rejections_out is not None:
            quoted = self.pseudo.scrub(reason) if self.pseudo else reason  # reasons may quote raw values
            self.rejections_out.write(json.dumps({"file": source, "line": line_no, "reason": quoted}) + "\n")

    def _sweep_idle(self, ahead_s: float = 0.0) -> None:
        """Close sessions idle for stream_idle_close_s of event time (the newest timestamp seen), or, with
        ``ahead_s``, of event time gone on that much further (:meth:`quiet`; those only it closes are counted
        as ``closed_quiet``)."""
        self._since_sweep = 0
        by_events = self.watermark - self.idle_s
        horizon = by_events + ahead_s
        for key in [k for k, ev in self.open.items() if ev[-1]["ts"] <= horizon]:
            events = self.open.pop(key)
            self.stats["closed_quiet"] += events[-1]["ts"] > by_events
            self.pending.append((key, events, True))

    def quiet(self, quiet_s: float, sweep: bool = True) -> None:
        """The input is caught up and has given no line for ``quiet_s`` seconds of wall time: score the
        sessions waiting for a full batch, and (``sweep``) close the sessions that would be idle for
        ``idle_s`` if event time had gone on with the clock since the last line (the watermark of an idle
        source moves with wall time; without this, a session's alert waited for later lines to move event time
        on, and on a log gone quiet it waited for the stream's end).  The watermark itself is left where the
        events put it: a line that comes after the quiet with an older time closes nothing early."""
        if sweep and self.open:
            self._sweep_idle(quiet_s)
        self._score_all_pending()

    # -- scoring -------------------------------------------------------------------------------
    def _score_all_pending(self) -> None:
        while self.pending:
            self._score_pending()

    def _score_pending(self) -> None:
        """Score the first SCORE_SESSIONS sessions waiting (at least ``detect.batch_size``): a sweep can
        close a hundred thousand at once, scored that many at a time rather than held in one table."""
        if not self.pending:
            return
        ev = Events()
        sessions = []
        take = max(self.dcfg.batch_size, SCORE_SESSIONS)
        batch, self.pending = self.pending[:take], self.pending[take:]
        for key, events, closed in batch:
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
        table = session_table(sessions, ev, self.model.vocab)
        ws = self.scorer(*windows_of(table), self.dcfg)
        info = {"run_id": self.model.meta.get("run_id"), "model_dir": str(self.model.folder)}
        alerts = piece_alerts(table, ws, events_from_parsed(ev), self.model, self.dcfg, self.threshold, info,
                              self.pseudo)
        if self.scores_out is not None:
            self.scores_out.add(session_score_rows(table, ws.score, pseudo=self.pseudo))
        vectors = take_vectors(alerts)
        if self.vectors_out is not None and vectors:  # before the alerts: a reader of both finds them there
            self.vectors_out.write("".join(json.dumps(r) + "\n" for r in vectors))
            self.vectors_out.flush()
        for a in alerts:
            self.alerts_out.write(json.dumps(a) + "\n")
            if self.cef_out is not None:
                self.cef_out.write(alert_to_cef(a, self._version) + "\n")
            if self.findings_out is not None:  # SIEM feed: Create, then Update while the entity keeps alerting
                self.findings_out.write(json.dumps(self.findings.feed(a)) + "\n")
        self.alerts_out.flush()
        for fh in (self.findings_out, self.cef_out):
            if fh is not None:
                fh.flush()
        self.stats["sessions_scored"] += len(sessions)
        self.stats["events_scored"] += len(ev.ts)
        self.stats["alerts"] += len(alerts)

    def status_line(self, lines_per_s: float) -> str:
        a, st = self.account, self.stats
        return (f"loglm: stream: {a.read:,} lines read ({a.rejected:,} rejected), {st['sessions_scored']:,} sessions "
                f"scored, {st['alerts']:,} alerts, {len(self.open):,} sessions open; {lines_per_s:,.0f} lines/s")

    def oldest_held_lines(self) -> dict[str, int]:
        """Per file, the line number of its oldest event not yet in a scored session (open or waiting)."""
        held: dict[str, int] = {}
        sessions = [*self.open.values(), *(events for _, events, _ in self.pending)]
        one_file = len(self._sources) <= 1  # then a session's first event is its oldest: no need to look further
        for events in sessions:
            for e in events[:1] if one_file else events:  # in arrival order: each file's first is its oldest
                if e["line_no"] < held.get(e["source"], e["line_no"] + 1):
                    held[e["source"]] = e["line_no"]
        return held

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
        self._score_all_pending()
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
    - **Truncated in place** (``copytruncate``): read again from its start, after the lines it held that
      were not read yet, read in logrotate's copy beside it (a file named after it that starts with its first
      bytes; not a compressed one).  Lines written between the copy and the truncation are in neither: prefer
      ``create``.  Told by the file shrinking below the position read, or by its first bytes changing (written
      again past that position between two polls).
    - **Gone** and not yet made again: the open file is still read, and the name checked at every poll.

    Line numbers run on across files (the stream's count, what the accounting adds up); ``rotations`` lists,
    for each switch, the stream line the new content starts at, so a rejection's line maps back to its file.
    At most ``max_line_bytes + 1`` bytes of a line are held: a longer one comes back as a
    :class:`~loglm.ingest.readers.LongLine` (rejected with its length), whatever arrives.

    ``ticks``: also yield None each time the follower has caught up with the input and waits for more (at
    most every ``poll_s`` while it waits), so that the reader can act on a quiet input (:func:`run_stream`).

    Where to begin (a regular file): ``start="start"`` its first line, ``"end"`` its current end (lines
    written from now on; numbered after the lines already there), or ``resume`` (a :meth:`position` saved
    by an earlier run): the line after it, when the file is still the one it was saved from (device, inode
    and its first bytes); when it rotated meanwhile, the line after it in the rotated file beside it (the
    saved file renamed, by its inode; or logrotate's copy, by its first bytes), then the new file from its
    first line; else its first line, saying why."""

    CHECKPOINT_LINES = 1000  # a resume position is kept every this many lines (see position)
    HEAD_BYTES = 1024  # a file's first bytes, hashed: a file is the one a position was saved from

    def __init__(self, path: str, poll_s: float = 0.2, idle_exit_s: float | None = None,
                 max_line_bytes: int = 65_536, start: str = "start", resume: dict | None = None,
                 ticks: bool = False):
        self.path, self.poll_s, self.idle_exit_s, self.max_line_bytes = path, poll_s, idle_exit_s, max_line_bytes
        self.ticks = ticks
        self.rotations: list[dict] = []
        self.resumed: dict | None = None  # the saved position this run went on from, when it did
        self._done = False  # iterated (once only: the file's position is the follower's)
        self._ticked: Ticked | None = None  # stdin read by a thread (with ticks)
        # opened now: what is followed is the file the name pointed at when the stream was set up (a missing
        # one fails here, before any work), not whatever it points at when the first line is asked for
        self._fh = None if path == "-" or path.endswith(".gz") else open(path, "rb")
        if self._fh is None:
            if start == "end":
                raise ValueError(f"follow_from=end needs a regular file; {path} is read through from its start")
            return
        self.identity = _identity(os.fstat(self._fh.fileno()))
        self.n = self.offset = 0  # lines yielded so far; the byte after the last of them
        self._unfinished: tuple[int, int] | None = None  # (line, offset) before a last line without its newline
        self._buf, self._total, self.last = b"", 0, time.monotonic()  # the line being read; the last growth
        self._tail: tuple[int, bytes] | None = None  # (position, the bytes before it) when last caught up
        self._head = b""  # the open file's first bytes (up to HEAD_BYTES), to know its rotated copy by
        self._copy: dict | None = None  # while the lines a rotation moved into another file are read there
        if resume is not None:
            why = self._why_not(resume)
            found = self._rotated_file(resume) if why is not None else None
            if found is not None:  # rotated while no stream followed it: the lines since, read where they went
                copy, how = found
                self._fh.close()
                self._fh = open(copy, "rb")
                self.identity = _identity(os.fstat(self._fh.fileno()))
                self._copy = {"path": str(copy), "how": how, "first": int(resume["line"]) + 1}
                why = None
            if why is None:
                self.n, self.offset = int(resume["line"]), self._fh.seek(int(resume["offset"]))
                self.resumed = {"line": self.n, "offset": self.offset, "saved_at": resume.get("saved_at")}
                where = f"in {self._copy['path']}, where the rotation moved it, then {path} from its start" \
                    if self._copy else "where the last run stopped"
                if self._copy:
                    self.resumed["from"] = self._copy["path"]
                print(f"loglm: {path}: resuming after line {self.n:,} (byte {self.offset:,}), {where}",
                      file=sys.stderr, flush=True)
            else:
                print(f"loglm: {path}: not resuming the saved position ({why}; no rotated file beside it holds "
                      "it); reading from the first line", file=sys.stderr, flush=True)
        elif start == "end":
            while block := self._fh.read(1 << 20):
                self.n += block.count(b"\n")
            self.offset = self._fh.tell()
        # (next stream line, its byte offset, file identity): where a restart may go on from (position)
        self._marks: deque[tuple[int, int, tuple[int, int]]] = deque([(self.n + 1, self.offset, self.identity)],
                                                                      maxlen=100_000)

    def _why_not(self, saved: dict) -> str | None:
        """Why a saved position does not fit the file now under the name, or None."""
        st = os.fstat(self._fh.fileno())
        if (st.st_dev, st.st_ino) != (saved.get("dev"), saved.get("ino")):
            return "the file was replaced since (rotated while the stream was stopped)"
        if st.st_size < int(saved["offset"]):
            return f"the file is shorter ({st.st_size:,} bytes) than the position ({int(saved['offset']):,})"
        if self._head_sha256(int(saved.get("head_bytes", 0))) != saved.get("head_sha256"):
            return "its first bytes changed (truncated and written again)"
        return None

    def _rotated_file(self, saved: dict) -> tuple[Path, str] | None:
        """The file beside ``path`` that holds a saved position's lines after a rotation, and how it got
        there: the saved file itself under a new name (``create``: its device and inode) or logrotate's copy
        (``copytruncate``: the same first bytes), either at least as long as the position.  Names that start
        with the file's name (``app.log.1``, ``app.log-20261204``); compressed ones are not read."""
        import hashlib

        offset, size = int(saved["offset"]), int(saved.get("head_bytes", 0))
        base = Path(self.path).resolve()
        found = []
        for other in base.parent.glob(glob_escape(base.name) + "?*"):
            if other.suffix in COMPRESSED or not other.is_file():
                continue
            st = other.stat()
            if st.st_size < offset:
                continue
            if (st.st_dev, st.st_ino) == (saved.get("dev"), saved.get("ino")):
                found.append((2, st.st_mtime, other, "replaced"))
                continue
            with open(other, "rb") as fh:
                head = fh.read(size)
            if len(head) == size and hashlib.sha256(head).hexdigest() == saved.get("head_sha256"):
                found.append((1, st.st_mtime, other, "truncated"))
        if not found:
            return None
        _, _, path, how = max(found)  # the saved file itself before a copy; the latest copy before older ones
        return path, how

    def _copy_of_truncated(self) -> Path | None:
        """The copy logrotate made before truncating the open file (``copytruncate``): a file beside it that
        starts with the first bytes the open file had and reaches past the position read to."""
        if not self._head:
            return None
        import hashlib

        size = len(self._head)
        found = self._rotated_file({"offset": self.offset, "head_bytes": size,
                                    "head_sha256": hashlib.sha256(self._head).hexdigest()})
        return found[0] if found else None

    def _head_sha256(self, size: int) -> str:
        import hashlib

        return hashlib.sha256(os.pread(self._fd, size, 0)).hexdigest()

    def position(self, oldest_held: int | None = None) -> dict:
        """Where a restart goes on from so that no line is lost: after the last line read when
        ``oldest_held`` is None (every line read is in a scored session), else at a kept mark at or before
        stream line ``oldest_held`` (the oldest line still in an open session or a held record): a restart
        reads it and what follows again (at least once).  A line held from before a rotation is not reached
        back for: the position is the current file's start."""
        line, offset = self._unfinished or (self.n, self.offset)
        if oldest_held is not None and oldest_held <= self.n:
            marks = self._marks  # the oldest held line only grows: marks behind it are done with
            while len(marks) > 1 and (marks[0][2] != self.identity or marks[1][0] <= oldest_held):
                marks.popleft()  # an earlier file's (the name is the current file's now), or passed
            line, offset = marks[0][0] - 1, marks[0][1]
        size = min(self.HEAD_BYTES, offset)
        return {"input": os.path.abspath(self.path), "dev": self.identity[0], "ino": self.identity[1], "line": line,
                "offset": offset, "head_bytes": size, "head_sha256": self._head_sha256(size),
                "saved_at": datetime.now(UTC).isoformat(timespec="seconds")}

    def __iter__(self) -> Iterator[tuple[bytes, int] | None]:
        if self.path == "-":
            # with ticks a thread reads: through a reader of its own on a copy of the descriptor, since at exit
            # the interpreter takes sys.stdin's lock, which a thread blocked in a read holds (an abort)
            stdin = open(os.dup(sys.stdin.fileno()), "rb") if self.ticks else sys.stdin.buffer
            lines = enumerate(bounded_lines(stdin, self.max_line_bytes), 1)
            if self.ticks:
                self._ticked = Ticked(lines, self.poll_s)
                lines = self._ticked
            for n, raw in lines:
                yield None if n is None else (raw, n)
            return
        if self.path.endswith(".gz"):  # a compressed file is complete (it does not grow line by line)
            from loglm.ingest.readers import open_binary

            with open_binary(Path(self.path)) as fh:
                yield from ((raw, n) for n, raw in enumerate(bounded_lines(fh, self.max_line_bytes), 1))
            return
        yield from self._follow()

    @property
    def drains(self) -> bool:
        """Whether a stop has lines to read on (:meth:`drain`): stdin read by a thread."""
        return self._ticked is not None

    def drain(self, within_s: float) -> Iterator[tuple[bytes, int]]:
        """After a stop, stdin read by a thread: the lines it took off the pipe and not yet handed on, and what
        the pipe still holds (:meth:`Ticked.drain`).  A file needs none: it keeps its lines for a restart."""
        if self._ticked is not None:
            yield from ((raw, n) for n, raw in self._ticked.drain(within_s))

    def _follow(self) -> Iterator[tuple[bytes, int]]:
        if self._done:
            raise RuntimeError(f"{self.path}: a FollowLines is iterated once")
        self.last = time.monotonic()
        try:
            while True:
                yield from self.available()
                if self.idle_exit_s is not None and time.monotonic() - self.last >= self.idle_exit_s:
                    yield from self.unfinished()
                    return
                if self.ticks:
                    yield None
                time.sleep(self.poll_s)
        finally:
            self._done = True  # the file stays open for position(); close() closes it

    def available(self) -> Iterator[tuple[bytes, int]]:
        """The lines the file holds now, through a rotation found at its end; it returns at the end (a line
        without its newline yet is kept for the next call).  Left unfinished, nothing is lost: the file's
        position and the line being read are the follower's."""
        limit = self.max_line_bytes + 1
        rewritten = self._head_changed(self._fh)  # truncated and written past the position since the last call
        while True:
            fh = self._fh
            chunk = b"" if rewritten else fh.readline(limit)
            rewritten = False
            if chunk:
                self._total += len(chunk)
                if len(self._buf) < limit:  # keep the line's start only
                    self._buf = (self._buf + chunk)[:limit]
                self.last = time.monotonic()
                if chunk.endswith(b"\n"):
                    line, self._buf, self._total = line_of(self._buf, self._total), b"", 0
                    yield from self._line(line, fh)
                continue
            # at the end of what the open file holds: has the name moved on to other content?
            how = self._rotated(fh)
            if not how:
                return
            copy = self._copy_of_truncated() if how == "truncated" else None
            if self._buf and copy is None:  # the old content's last line, never ended by a newline
                line, self._buf, self._total = line_of(self._buf, self._total), b"", 0
                yield from self._line(line, fh)
            if copy is not None:  # lines written after the last read went into logrotate's copy: read them there
                at = fh.tell() - self._total  # a line cut by the truncation is read whole there
                self._buf, self._total = b"", 0
                fh.close()
                self._fh = open(copy, "rb")
                self.offset = self._fh.seek(at)
                self.identity = _identity(os.fstat(self._fh.fileno()))
                self._copy = {"path": str(copy), "how": how, "first": self.n + 1}
                self._marks.append((self.n + 1, self.offset, self.identity))
                continue  # at its end the name is another file: "replaced" below, read from its start
            rotation = {"how": how, "first_line": self.n + 1}
            if self._copy is not None:  # the rotated file's lines are read: now the file under the name
                how = rotation["how"] = self._copy["how"]
                rotation.update(read_from=self._copy["path"], lines_there=self.n + 1 - self._copy["first"])
                self._copy = None
            if how == "replaced" or "read_from" in rotation:
                fh.close()
                self._fh = open(self.path, "rb")
                self.identity = _identity(os.fstat(self._fh.fileno()))
            else:
                fh.seek(0)
            self.offset, self._head, self._tail = 0, b"", None
            self._marks.append((self.n + 1, 0, self.identity))
            self.rotations.append(rotation)
            there = (f" (the {rotation['lines_there']:,} lines written before the rotation and not yet read were read "
                     f"in {rotation['read_from']})" if "read_from" in rotation else "")
            print(f"loglm: {self.path} was {how} (log rotation); reading it from its start: stream line "
                  f"{self.n + 1} is its line 1{there}", file=sys.stderr, flush=True)
            self.last = time.monotonic()

    def unfinished(self) -> Iterator[tuple[bytes, int]]:
        """At the stream's end: a line still being written, scored as it is (a restart reads it again whole)."""
        if self._buf:
            self._unfinished = (self.n, self.offset)
            line, self._buf, self._total = line_of(self._buf, self._total), b"", 0
            yield from self._line(line, self._fh)

    def positions(self, oldest_held: dict) -> list[dict]:
        """:meth:`position` as :class:`FollowFiles` gives its files': ``oldest_held`` by path."""
        return [self.position(oldest_held.get(self.path))]

    @property
    def paths(self) -> list[str]:
        return [self.path]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()

    @property
    def _fd(self) -> int:
        return self._fh.fileno()

    def _line(self, line: bytes, fh) -> Iterator[tuple[bytes, int]]:
        self.n += 1
        self.offset = fh.tell()
        if len(self._head) < self.HEAD_BYTES and self.offset > len(self._head) and self._copy is None:
            self._head = os.pread(fh.fileno(), self.HEAD_BYTES, 0)  # once, or while the file is short
        if self.n % self.CHECKPOINT_LINES == 0:
            self._marks.append((self.n + 1, self.offset, self.identity))
        yield line, self.n

    def _rotated(self, fh) -> str | None:
        """"replaced" when the name now points at another file, "truncated" when the open file shrank below
        the position read to or its first bytes changed, else None (also while the name is gone).  Called at the open file's end: a
        replaced file is switched from only after it has been read to its end."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        if _identity(st) != self.identity:
            # a last write to the old file since the read that found its end: read it first
            return "replaced" if os.fstat(fh.fileno()).st_size <= fh.tell() else None
        if st.st_size < fh.tell() or self._head_changed(fh):
            return "truncated"
        at = fh.tell()  # caught up: remember the bytes just before the position (_head_changed)
        self._tail = (at, os.pread(fh.fileno(), min(self.TAIL_BYTES, at), at - min(self.TAIL_BYTES, at)))
        return None

    TAIL_BYTES = 64

    def _head_changed(self, fh) -> bool:
        """The open file was truncated in place and written again past the position read to (a busy writer
        between two polls), so its size alone does not tell: its first bytes are no longer those read, or, for
        files that all start alike (a banner), the bytes just before the position read to when it was last
        caught up are not those it read there."""
        if self._copy is not None:
            return False
        if self._head and os.pread(fh.fileno(), len(self._head), 0) != self._head:
            return True
        if self._tail is None or self._tail[0] != fh.tell():
            return False
        at, tail = self._tail
        return os.pread(fh.fileno(), len(tail), at - len(tail)) != tail


class FollowFiles:
    """Several growing files side by side (``follow=true`` with several inputs): ``(line, its file's line
    number, file)`` as lines arrive, each file followed as :class:`FollowLines` follows one (rotation, its own
    line numbers, its own resume position).  A turn takes at most TURN_LINES lines of a file, so a quiet file's
    lines do not wait behind a busy one's; it ends after ``idle_exit_s`` without growth in any of them."""

    TURN_LINES = 1000

    def __init__(self, paths: list[str], poll_s: float = 0.2, idle_exit_s: float | None = None,
                 max_line_bytes: int = 65_536, start: str = "start", resume: dict | None = None,
                 ticks: bool = False):
        bad = [p for p in paths if p == "-" or p.endswith(".gz")]
        if bad:
            raise ValueError(f"follow=true with several inputs follows growing files; {bad} cannot grow line by "
                             "line (stdin, .gz): follow it alone")
        if len(set(map(os.path.abspath, paths))) != len(paths):
            raise ValueError(f"follow=true: an input is named twice in {paths}")
        self.poll_s, self.idle_exit_s, self.ticks = poll_s, idle_exit_s, ticks
        resume = resume or {}
        self.followers = [FollowLines(p, poll_s, None, max_line_bytes, start, resume.get(os.path.abspath(p)))
                          for p in paths]

    def __iter__(self) -> Iterator[tuple[bytes, int, str] | None]:
        last = time.monotonic()
        while True:
            got = 0
            for f in self.followers:
                for raw, n in islice(f.available(), self.TURN_LINES):
                    got += 1
                    yield raw, n, f.path
            if got:
                last = time.monotonic()
                continue
            if self.idle_exit_s is not None and time.monotonic() - last >= self.idle_exit_s:
                for f in self.followers:
                    yield from ((raw, n, f.path) for raw, n in f.unfinished())
                return
            if self.ticks:
                yield None
            time.sleep(self.poll_s)

    def positions(self, oldest_held: dict) -> list[dict]:
        return [p for f in self.followers for p in f.positions(oldest_held)]

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.followers]

    @property
    def rotations(self) -> dict:
        return {f.path: f.rotations for f in self.followers if f.rotations}

    @property
    def resumed(self) -> dict | None:
        return {f.path: f.resumed for f in self.followers if f.resumed} or None

    def close(self) -> None:
        for f in self.followers:
            f.close()


class Ticked:
    """``items`` (a blocking iterator, e.g. stdin's lines) read by a thread, with ``(None, None)`` whenever
    none is waiting (caught up) and then every ``poll_s`` until the next comes.  At most 256 items wait (a
    slow reader holds the thread back, not memory).  On a stop, :meth:`drain` gives what the thread has taken
    off the input and not yet handed on, then reads on until the input is caught up or ends: nothing already
    written to the pipe is dropped."""

    WAITING = 256
    CAUGHT_UP_S = 0.3  # the thread waiting this long in a read with nothing queued: the input is caught up

    def __init__(self, items: Iterator, poll_s: float):
        import queue
        import threading

        self.poll_s = poll_s
        self._waiting: queue.Queue = queue.Queue(maxsize=self.WAITING)
        self._arrived = threading.Event()
        self._end = object()
        self._ended = False
        self._reading_since: float | None = None  # when the thread began a read that has not returned

        def pump():
            try:
                while True:
                    self._reading_since = time.monotonic()
                    item = next(items, self._end)
                    self._reading_since = None
                    if item is self._end:
                        break
                    self._waiting.put(item)
                    self._arrived.set()
            except BaseException as e:  # handed to the reading side, which raises it
                self._reading_since = None
                self._waiting.put((self._end, e))
                self._arrived.set()
                return
            self._waiting.put((self._end, None))
            self._arrived.set()

        threading.Thread(target=pump, name="loglm-stdin", daemon=True).start()

    def _take(self):
        """The next waiting item, None if none waits, ``_end`` at the input's end (raising its error)."""
        import queue

        try:
            item = self._waiting.get_nowait()
        except queue.Empty:
            return None
        if item[0] is self._end:
            self._ended = True
            if item[1] is not None:
                raise item[1]
            return self._end
        return item

    def __iter__(self) -> Iterator:
        return self._given(None)

    def drain(self, within_s: float) -> Iterator:
        """After a stop: the items taken off the input and not yet handed on, then what the input still holds,
        until the reading thread has waited ``CAUGHT_UP_S`` for more with nothing queued, the input ends, or
        ``within_s`` has passed."""
        return self._given(time.monotonic() + within_s)

    def _given(self, deadline: float | None) -> Iterator:
        """The items as they come: with ticks while the stream runs (``deadline`` None), else until caught up."""
        while not self._ended and (deadline is None or time.monotonic() < deadline):
            self._arrived.clear()
            with held():  # taken and handed on with a stop recorded, not raised, in between
                item = self._take()
                if item is self._end:
                    return
                if item is not None:
                    yield item
                    continue
            if deadline is None:
                yield None, None
            else:
                since = self._reading_since
                if since is not None and time.monotonic() - since >= self.CAUGHT_UP_S and self._waiting.empty():
                    return
            if self._waiting.empty():
                self._arrived.wait(self.poll_s if deadline is None else 0.05)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")  # rotated files not read back for lost lines
STATE_EVERY_S = 5.0  # a followed file's resume position is saved this often (and when the stream ends)
QUIET_SWEEP_S = 1.0  # while the input is quiet, sessions are checked for closing at most this often
JOIN_QUIET_S = 2.0  # data.multiline: a record held this long after its last line is taken as complete
DRAIN_S = 10.0  # on a stop, stdin or a listener is read on for at most this long (until caught up)


def save_state(path: Path, positions: list[dict]) -> None:
    """The resume positions (one per followed file), written beside and renamed into place (a crash leaves
    the last whole)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"positions": positions}) + "\n")
    os.replace(tmp, path)


def load_state(path: Path, sources: list[str]) -> dict[str, dict]:
    """The saved positions of ``sources`` in ``path``, by absolute path (none for a file it does not hold)."""
    if not path.is_file():
        return {}
    try:
        positions = json.loads(path.read_text())["positions"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{path}: not a file of resume positions; remove it, or follow_from=start") from None
    wanted = {os.path.abspath(s) for s in sources}
    others = sorted({p.get("input") for p in positions} - wanted)
    if others:
        print(f"loglm: {path} also holds the positions of {others}, not followed now", file=sys.stderr)
    return {p["input"]: p for p in positions if p.get("input") in wanted}


def _keep_earlier(path: Path) -> None:
    """An earlier run's scores file, renamed <name>.<k>.parquet (a resumed stream writes its own)."""
    if path.is_file():
        k = 1
        while (kept := path.with_name(f"{path.stem}.{k}{path.suffix}")).exists():
            k += 1
        path.rename(kept)


def run_stream(cfg, model, scorer, lines: Iterable[tuple], source: str, out: Path,
               state: Path | None = None, append: bool = False) -> dict:
    """Score ``lines`` as they come: ``(line, line number)`` of ``source``, or ``(line, line number, file)``
    (:class:`FollowFiles`; ``source`` then names them all).  ``state``: where ``lines`` (a
    :class:`FollowLines` or :class:`FollowFiles`) saves its resume positions, every STATE_EVERY_S seconds at
    a line no open session holds yet and at the end after the last line (every session scored).
    ``append``: alerts, findings and rejections go on after an earlier run's (its scores file kept as
    ``.scores.<k>.parquet``); else they start empty.  A None in ``lines`` (a follower's tick) says the input
    is caught up: what waits for a full batch is scored and sessions quiet long enough close
    (:meth:`StreamingDetector.quiet`), so an alert does not wait for later lines."""
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # every output is written in append mode (O_APPEND), a fresh run's emptied first: logrotate's copytruncate
    # empties a file the stream still writes, and a write at the old offset would leave a hole of NUL bytes
    mode = "a"
    if append:
        _keep_earlier(out.with_suffix(".scores.parquet"))
    else:
        for path in (out, out.with_suffix(".rejected.jsonl"), out.with_suffix(".ocsf.jsonl"), vectors_path(out),
                     out.with_suffix(".cef")):
            if path.exists():
                open(path, "w").close()
    if not cfg.detect.cef:
        write_cef(out, [], False)  # no stale CEF file beside this run's alerts
    with open(out, mode) as alerts_fh, open(out.with_suffix(".rejected.jsonl"), mode) as rej_fh, \
            open(out.with_suffix(".ocsf.jsonl"), mode) as findings_fh, \
            (open(out.with_suffix(".cef"), mode) if cfg.detect.cef else contextlib.nullcontext()) as cef_fh, \
            open(vectors_path(out), mode) as vectors_fh, contextlib.ExitStack() as served:
        scores = ScoreWriter(out.with_suffix(".scores.parquet"))
        det = StreamingDetector(cfg, model, scorer, alerts_fh, rej_fh, findings_fh, scores, cef_fh, vectors_fh)
        joiners: dict[str, Continuations | None] = {}  # data.multiline: records of several lines, per file

        def joiner_of(src: str) -> Continuations | None:
            if src not in joiners:
                starts = record_starts(det._reader(src))
                joiners[src] = Continuations(starts, cfg.data.max_line_bytes) if starts else None
            return joiners[src]

        def oldest_held() -> dict[str, int]:
            held = det.oldest_held_lines()
            for src, j in joiners.items():
                if j is not None and j.pending:
                    held[src] = min(held.get(src, j.pending[0]), j.pending[0])
            return held

        def take(item) -> None:
            raw, n, src = item if len(item) == 3 else (*item, source)
            joiner = joiner_of(src)
            for first, record, extra in joiner.push(n, raw) if joiner else ((n, raw, 0),):
                det.feed(record, src, first, extra)
            det.last_line_at = time.monotonic()

        for src in getattr(lines, "paths", [source]):  # set up before the announcement, not inside the guarded read
            joiner_of(src)
        if cfg.detect.metrics_port is not None:  # Prometheus metrics on 127.0.0.1 while the stream runs
            from loglm.detect.stream_metrics import serving

            port = served.enter_context(serving(cfg.detect.metrics_port, det, source, model.meta.get("run_id"),
                                                      lines))
            print(f"loglm: metrics at http://127.0.0.1:{port}/metrics", file=sys.stderr, flush=True)
        with stop_on_signals() as stop:
            print(f"loglm: following {source}; alerts to {out} (Ctrl-C or SIGTERM stops after scoring what is held); "
                  f"a session closes after {det.idle_s:g} s without events ({det.idle_from})", file=sys.stderr, flush=True)
            saved = said = swept = time.monotonic()
            status_s, read_then = cfg.detect.stream_status_s, 0
            try:  # a signal interrupts a blocking read at once; one during feed() ends the stream after it
                for item in lines:
                    if item is None:  # the input is caught up (a tick of lines with ticks=True): act on the quiet
                        now = time.monotonic()
                        with stop.deferred():
                            if now - det.last_line_at >= JOIN_QUIET_S:  # a held record's last line came long ago
                                for src, joiner in joiners.items():
                                    for first, record, extra in joiner.flush() if joiner else ():
                                        det.feed(record, src, first, extra)
                                        det.stats["records_closed_quiet"] += 1
                            sweep = now - swept >= QUIET_SWEEP_S  # each sweep looks at every open session
                            det.quiet(now - det.last_line_at, sweep)
                            swept = now if sweep else swept
                            if state is not None and now - saved >= STATE_EVERY_S:
                                save_state(state, lines.positions(oldest_held()))
                                saved = now
                        if stop.requested:
                            break
                        continue
                    with stop.deferred():
                        take(item)
                        now = det.last_line_at
                        if state is not None and now - saved >= STATE_EVERY_S:
                            save_state(state, lines.positions(oldest_held()))
                            saved = now
                        if status_s and now - said >= status_s:
                            print(det.status_line((det.account.read - read_then) / (now - said)), file=sys.stderr,
                                  flush=True)
                            said, read_then = now, det.account.read
                    if stop.requested:
                        break
                stop.finish()  # inside the try: a signal landing as the input ends is caught below too
            except KeyboardInterrupt:
                pass  # Ctrl-C / SIGTERM end a live stream: what was read is still scored and accounted
            if stop.received and getattr(lines, "drains", False):  # stdin, a listener: what waits there too
                print(f"loglm: reading what {'stdin' if source == '-' else source} still holds (at most {DRAIN_S:g} s) "
                      "before stopping",
                      file=sys.stderr, flush=True)
                before = det.account.read
                for item in lines.drain(DRAIN_S):
                    take(item)
                det.stats["read_at_stop"] = det.account.read - before
            for src, joiner in joiners.items():  # the records held at the end
                for first, record, extra in joiner.flush() if joiner else ():
                    det.feed(record, src, first, extra)
            summary = det.finish()
            if state is not None:  # every line read is in a scored session: a restart goes on after the last
                save_state(state, lines.positions({}))
                summary["state_path"] = str(state)
            result_ready()  # a stop from here to the exit no longer cuts the summary (signals.until_exit)
        if stop.received:
            summary["stopped_by"] = stop.name
    summary["scores_path"] = str(scores.close())
    check_not_all_rejected(summary["lines"], [], cfg.data)  # after the accounting is written and flushed
    if cfg.detect.report:  # the same files as batch detection: alerts, findings, scores, rejections, report
        summary["report_path"] = str(report_from_files(out, Path(summary["scores_path"]), det.threshold, source, model))
    if cfg.detect.cef:
        summary["cef_path"] = str(out.with_suffix(".cef"))
    summary.update({"alerts_path": str(out), "findings_path": str(out.with_suffix(".ocsf.jsonl")),
                    "vectors_path": str(vectors_path(out)),
                    "rejected_path": str(out.with_suffix(".rejected.jsonl")),
                    "seconds": round(time.perf_counter() - t0, 3), "pid": os.getpid()})
    return summary
