"""Prometheus metrics of a running stream (``detect.metrics_port``; ``loglm detect --metrics-port``).

A stream run as a service is watched like one: ``http://127.0.0.1:PORT/metrics`` answers with the stream's
counts (lines read and rejected, sessions scored, alerts, sessions evicted or closed by a quiet input), the
sessions open, how long ago the last line came (a stalled input or relay) and how far the newest event's
time is behind the clock (a log read late).  Every value is read from the stream when scraped: the stream
itself does no extra work per line.  The server binds 127.0.0.1 only (a local Prometheus agent or node
exporter's textfile relay scrapes it) and stops with the stream."""

from __future__ import annotations

import contextlib
import time

PREFIX = "loglm_stream_"


class StreamCollector:
    """A Prometheus collector over a :class:`~loglm.detect.streaming.StreamingDetector`."""

    def __init__(self, det, source: str, model_run: str | None, inputs=None):
        self.det, self.labels, self.inputs = det, {"input": source, "model_run": model_run or ""}, inputs

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        det, names = self.det, list(self.labels)
        values = list(self.labels.values())

        def counter(name: str, doc: str, value: float):
            m = CounterMetricFamily(PREFIX + name, doc, labels=names)
            m.add_metric(values, value)
            return m

        def gauge(name: str, doc: str, value: float):
            m = GaugeMetricFamily(PREFIX + name, doc, labels=names)
            m.add_metric(values, value)
            return m

        acct, st = det.account, det.stats
        yield counter("lines_read", "lines (or records) read", acct.read)
        yield counter("lines_rejected", "lines rejected, each with its reason in <alerts>.rejected.jsonl", acct.rejected)
        yield counter("sessions_scored", "sessions scored", st["sessions_scored"])
        yield counter("alerts", "alerts written", st["alerts"])
        yield counter("sessions_evicted", "sessions closed early to keep detect.max_open_sessions", st["evicted"])
        yield counter("sessions_closed_quiet", "sessions closed because the input was quiet", st["closed_quiet"])
        yield gauge("sessions_open", "sessions open (waiting for more events)", len(det.open))
        yield gauge("threshold", "the alert threshold on a session's score", det.threshold)
        yield gauge("last_line_age_seconds", "seconds since the last line came (since the start before any)",
                    time.monotonic() - det.last_line_at)
        if (drops := getattr(self.inputs, "kernel_drops", None)) is not None:  # a UDP listener
            yield counter("udp_kernel_drops", "datagrams the kernel dropped before LogLM could read them (receive "
                          "buffer full)", drops)
        if det.watermark != float("-inf"):
            yield gauge("event_time_lag_seconds", "the clock less the newest event's time: how late the log is read",
                        time.time() - det.watermark)


@contextlib.contextmanager
def serving(port: int, det, source: str, model_run: str | None, inputs=None):
    """The metrics server on 127.0.0.1:``port`` (0: a free port) for the block, however it ends; yields the
    port it serves on.  ``inputs``: the stream's line source (a UDP listener's kernel drops are served)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StreamCollector(det, source, model_run, inputs))
    try:
        server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as e:
        raise ValueError(f"detect.metrics_port={port}: cannot serve metrics there: {e.strerror}") from None
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
