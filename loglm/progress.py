"""Progress of long work on stderr: one line every few seconds (a log file gets lines, not a bar), nothing
for work that ends sooner, and a phase line when a phase ends."""

from __future__ import annotations

import os
import sys
import time


class Progress:
    """``tick(n)`` counts items; at most every ``every_s`` seconds a line ``loglm: <what>: N <unit> (r/s)``.
    ``LOGLM_PROGRESS_S`` sets the interval (0 = every tick, for tests); ``LOGLM_PROGRESS=0`` silences it."""

    def __init__(self, what: str, unit: str = "lines", every_s: float | None = None, stream=None):
        self.what, self.unit = what, unit
        self.every_s = float(os.environ.get("LOGLM_PROGRESS_S", 10.0)) if every_s is None else every_s
        self.enabled = os.environ.get("LOGLM_PROGRESS", "1") != "0"
        self.stream = stream or sys.stderr
        self.n = 0
        self.t0 = self.last = time.monotonic()
        self.detail = ""

    def tick(self, n: int = 1, detail: str | None = None) -> None:
        self.n += n
        if detail is not None:
            self.detail = detail
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every_s:
            self.last = now
            self._print(now)

    def _print(self, now: float) -> None:
        rate = self.n / max(now - self.t0, 1e-9)
        extra = f", {self.detail}" if self.detail else ""
        print(f"loglm: {self.what}: {self.n:,} {self.unit} ({rate:,.0f}/s{extra})", file=self.stream, flush=True)

    def done(self, message: str | None = None) -> float:
        """Seconds since the start; prints ``message`` (a phase summary) if given."""
        seconds = time.monotonic() - self.t0
        if self.enabled and message:
            print(f"loglm: {message} ({seconds:.1f} s)", file=self.stream, flush=True)
        return seconds
