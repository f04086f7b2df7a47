"""Prometheus metrics of a running stream (``detect.metrics_port``; ``loglm detect --metrics-port``).

A stream run as a service is watched like one: ``http://127.0.0.1:PORT/metrics`` answers with the stream's
counts (lines read and rejected, sessions scored, alerts, sessions evicted or closed by a quiet input), the
sessions open, how long ago the last line came (a stalled input or relay) and how far the newest event's
time is behind the clock (a log read late).  Every value is read from the stream when scraped: the stream
itself does no extra work per line.  The server binds 127.0.0.1 only (a local Prometheus agent or node
exporter's textfile relay scrapes it) and stops with the stream.  A request naming another host (a web page
the operator opened, through DNS rebinding) is refused (400): the metrics name the stream's inputs."""

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


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _local_only(app):
    """The WSGI ``app`` for requests whose Host names this machine's loopback; others get 400."""
    def guarded(environ, start_response):
        from urllib.parse import urlsplit

        host = environ.get("HTTP_HOST", "127.0.0.1")
        try:
            name = urlsplit("//" + host).hostname
        except ValueError:
            name = None
        if name not in LOCAL_HOSTS:
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [f"metrics are served to this machine only, not to host {host!r}\n".encode()]
        return app(environ, start_response)

    return guarded


@contextlib.contextmanager
def serving(port: int, det, source: str, model_run: str | None, inputs=None):
    """The metrics server on 127.0.0.1:``port`` (0: a free port) for the block, however it ends; yields the
    port it serves on.  ``inputs``: the stream's line source (a UDP listener's kernel drops are served)."""
    import socketserver
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import CollectorRegistry, make_wsgi_app

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args) -> None:  # scrapes are not the stream's log
            pass

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StreamCollector(det, source, model_run, inputs))
    try:
        server = make_server("127.0.0.1", port, _local_only(make_wsgi_app(registry)), Server, Quiet)
    except OSError as e:
        raise ValueError(f"detect.metrics_port={port}: cannot serve metrics there: {e.strerror}") from None
    thread = threading.Thread(target=server.serve_forever, name="loglm-metrics", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
