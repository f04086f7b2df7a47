"""An alerts file that detection may still be writing (``loglm stream`` appends and flushes as sessions close),
and its alerts' session vectors beside it (``alerts.vectors.jsonl``, :mod:`loglm.analyst.alert_vectors`).

:class:`JsonLines` reads such a file on from where its last read ended, whole lines only: a last line without its
newline is a write in progress and waits for the next read.  A file that was replaced (another inode), cut
(shorter than what was read) or rewritten (its first bytes changed: a new run over the same name) is read
again from its start.  A line that is not an alert is kept out with its line number and reason, and counted;
the rest are read.  The triage page reads its file this way before each request, so alerts a stream raises
appear without restarting it."""

from __future__ import annotations

import json
import os
from pathlib import Path

REQUIRED = ("alert_id", "session_id", "score")
HEAD_BYTES = 256  # the first bytes compared to tell a rewritten file from a grown one


class JsonLines:
    """The JSON objects of a file being appended to, each with the keys ``required``; ``rows`` holds them."""

    what = "a row"

    def __init__(self, path: str | Path, required: tuple[str, ...] = REQUIRED):
        self.path = Path(path)
        self.required = required
        self.rows: list[dict] = []
        self.rejected: list[tuple[int, str]] = []  # (line number, reason)
        self.lines = 0  # whole lines read so far
        self.reloads = 0  # times the file was read again from its start (replaced, cut or rewritten)
        self._offset = 0
        self._ident: tuple[int, int] | None = None
        self._head = b""

    def refresh(self, final: bool = False) -> list[dict]:
        """The rows added since the last call (all of them after a reload: check ``reloads``).  ``final``
        also takes a last line without its newline (a file that is complete)."""
        st = os.stat(self.path)  # FileNotFoundError names the path
        with open(self.path, "rb") as fh:
            ident = (st.st_dev, st.st_ino)
            if self._ident is not None and (ident != self._ident or st.st_size < self._offset
                                            or fh.read(len(self._head)) != self._head):
                self._reset()
                self.reloads += 1
            self._ident = ident
            fh.seek(self._offset)
            new = []
            for raw in fh:
                if not raw.endswith(b"\n") and not final:
                    break  # being written: read it whole next time
                self._offset += len(raw)
                self.lines += 1
                row = self._parse(raw)
                if row is not None:
                    new.append(row)
            if len(self._head) < HEAD_BYTES:
                fh.seek(0)
                self._head = fh.read(min(HEAD_BYTES, self._offset))
        self.rows.extend(new)
        return new

    def _parse(self, raw: bytes) -> dict | None:
        if not raw.strip():
            return None
        try:
            row = json.loads(raw)
        except ValueError as e:
            self.rejected.append((self.lines, f"not JSON ({e})"))
            return None
        missing = [k for k in self.required if not isinstance(row, dict) or k not in row]
        if missing:
            self.rejected.append((self.lines, f"not {self.what} (no {', '.join(missing)})"))
            return None
        return row

    def _reset(self) -> None:
        self.rows, self.rejected, self.lines, self._offset, self._head = [], [], 0, 0, b""

    def describe_rejected(self, limit: int = 3) -> str:
        """``FILE:LINE: reason`` for the first ``limit`` lines kept out, and how many in all."""
        shown = "; ".join(f"{self.path}:{n}: {why}" for n, why in self.rejected[:limit])
        more = len(self.rejected) - limit
        return shown + (f" (and {more} more)" if more > 0 else "")


class AlertsFile(JsonLines):
    what = "an alert"

    def __init__(self, path: str | Path):
        super().__init__(path, REQUIRED)

    @property
    def alerts(self) -> list[dict]:
        return self.rows
