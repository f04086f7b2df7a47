"""How a LogLM process stops on SIGINT (Ctrl-C) and SIGTERM (`kill`, `docker stop`, systemd, a scheduler).

One rule for every long-running job: the first signal raises :class:`Stopped` in the main thread (so a
blocking read of stdin or a training step is interrupted), the job then finishes what it holds (scores
buffered sessions, marks its run, flushes its outputs); a signal that arrives while it finishes does not
interrupt that work, and a further signal forces the process out at once (exit 128 + signal number).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived; ``signum`` says which.  A KeyboardInterrupt, so code that already handles
    Ctrl-C (Lightning's trainer among it) handles SIGTERM the same way."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


_ACTIVE: list[StopSignals] = []


def active() -> StopSignals | None:
    """The innermost :func:`stop_on_signals` block of this process, if any."""
    return _ACTIVE[-1] if _ACTIVE else None


class StopSignals:
    """State of one :func:`stop_on_signals` block.  With ``grace_s``, the first signal also starts a watchdog:
    if the process is still alive ``grace_s`` seconds later (a step that does not return, a lock that is never
    released), it exits at once with 128 + the signal number."""

    def __init__(self, grace_s: float | None = None):
        self.received: list[int] = []
        self.finishing = False
        self._deferred = 0
        self.grace_s = grace_s
        self._watchdog: threading.Thread | None = None

    def _start_watchdog(self, signum: int) -> None:
        if self.grace_s is None or self._watchdog is not None:
            return

        def expire():
            time.sleep(self.grace_s)
            sys.stderr.write(f"loglm: still running {self.grace_s:.0f} s after {signal.Signals(signum).name}: exiting now\n")
            sys.stderr.flush()
            os._exit(128 + signum)

        self._watchdog = threading.Thread(target=expire, name="loglm-stop-watchdog", daemon=True)
        self._watchdog.start()

    @property
    def requested(self) -> bool:
        return bool(self.received)

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received[0]).name if self.received else None

    def handler(self, signum, frame) -> None:
        self.received.append(signum)
        self._start_watchdog(signum)
        if len(self.received) >= 2:
            sys.stderr.write(f"loglm: second stop signal ({signal.Signals(signum).name}): exiting now\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        if self.finishing:
            sys.stderr.write(f"loglm: {signal.Signals(signum).name} while finishing; send it again to exit at once\n")
            sys.stderr.flush()
            return
        if self._deferred:
            return  # the job sees `requested` at its next safe point
        self.finishing = True  # raised once: from here on the job is finishing
        raise Stopped(signum)

    @contextlib.contextmanager
    def deferred(self):
        """A step that must not be cut in half (scoring a batch and writing its alerts): a signal during it
        is recorded, and the job stops after the step (check ``requested``)."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1

    def finish(self) -> None:
        """Enter the finishing phase (also on a normal end of input): a signal now no longer interrupts."""
        self.finishing = True


@contextlib.contextmanager
def stop_on_signals(grace_s: float | None = None):
    """Install the stop rule for the duration of the block (main thread only; elsewhere a no-op)."""
    state = StopSignals(grace_s)
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = {s: signal.signal(s, state.handler) for s in SIGNALS}
    _ACTIVE.append(state)
    try:
        yield state
    finally:
        _ACTIVE.remove(state)
        for s, h in previous.items():
            signal.signal(s, h)


def held():
    """A step of an input reader that takes something off a pipe or socket and hands it on: a stop signal
    during it is recorded, not raised (the innermost :func:`stop_on_signals` block, if any), so what was taken
    is not dropped between the read and the reader's caller; the caller sees ``requested`` and stops after it.
    Unlike :func:`deferred_signals` it does not raise at its end (it may span a generator's ``yield``)."""
    stop = active()
    return stop.deferred() if stop is not None else contextlib.nullcontext()


@contextlib.contextmanager
def deferred_signals():
    """Ctrl-C / SIGTERM wait until the block is done (a checkpoint and its digest, an MLflow write: a stop cut
    into a SQLAlchemy transaction left the sqlite store locked).  Under the stop rule the signal is recorded
    and acted on after the block (a signal mask alone does not do it: the kernel hands a process signal to
    another thread, and Python runs its handler in the main thread wherever it is); elsewhere the signals
    are masked for the block."""
    stop = active()
    if stop is not None:
        with stop.deferred():
            yield
        if stop.requested and not stop.finishing:
            stop.finishing = True
            raise Stopped(stop.received[0])
        return
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, set(SIGNALS))
    except (AttributeError, ValueError, OSError):  # platforms without pthread_sigmask, not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_RESULT_READY = threading.Event()


def result_ready() -> None:
    """The job has its result (a stream that scored everything it read): a stop signal from now until the
    process exits is ignored by :func:`until_exit`, so the summary is printed and the exit code is 0."""
    _RESULT_READY.set()


@contextlib.contextmanager
def until_exit():
    """For entry points, around the job and the printing of its result.  A stop signal that lands after the
    job called :func:`result_ready` is ignored (the stream that ended as a SIGTERM arrived still prints its
    summary and exits 0: once the job's own stop rule was gone, the default action killed it with -15);
    before that, the signal gets the handler it had before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _RESULT_READY.clear()
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def handler(signum, frame):
        if _RESULT_READY.is_set():
            return
        before = previous[signum]
        if callable(before):
            before(signum, frame)
        elif before != signal.SIG_IGN:  # the default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        if _RESULT_READY.is_set():  # the process is on its way out: ignore stops at the OS level (interpreter
            for s in SIGNALS:  # shutdown resets Python-level handlers to the default, which killed it with -15)
                signal.signal(s, signal.SIG_IGN)
        else:
            for s, h in previous.items():
                signal.signal(s, h)
