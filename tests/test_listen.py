"""Syslog over the network as a stream's input (loglm/detect/listen.py): framing, PRI, long messages,
several connections, UDP, loopback only. The listener is driven directly; tests/test_streaming.py runs a
whole stream on it."""

from __future__ import annotations

import socket

import pytest

from loglm.detect.listen import SyslogListener, address_of, is_listener
from loglm.ingest.readers import LongLine


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def received(listener: SyslogListener) -> list:
    return [item for item in listener]  # until idle_exit_s without a message


def test_tcp_frames_of_both_kinds_from_several_connections_become_lines():
    port = free_port()
    listener = SyslogListener(f"tcp://127.0.0.1:{port}", poll_s=0.05, idle_exit_s=0.5, max_line_bytes=100)
    a = socket.create_connection(("127.0.0.1", port))
    b = socket.create_connection(("127.0.0.1", port))
    # newline framing, PRI removed, CRLF accepted; a message cut across two sends is put together
    a.sendall(b"<13>Dec  4 22:40:01 web sshd[1]: one\n<86>Dec  4 22:40:02 web sshd[1]: tw")
    a.sendall(b"o\r\n")
    # octet counting (rsyslog's TCP_Framing="octet-counted"): a newline inside a message is kept as #012
    msg = b"<38>Dec  4 22:40:03 db su: three\nand a second line"
    b.sendall(str(len(msg)).encode() + b" " + msg + b"4 four")
    # too long in either framing: rejected with its start and length, the next message read as usual
    b.sendall(b"150 " + b"x" * 150 + b"5 after")
    a.sendall(b"y" * 130 + b"z" * 40 + b"\nlast without a newline")
    # longer than one read (64 KiB) before its newline: rejected from the first read, the rest dropped
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"w" * 70_000 + b"\nafter the long one\n")
    # lines without a PRI that start with digits (HDFS's "081109 203615 ..."): newline framing, not counts
    d = socket.create_connection(("127.0.0.1", port))
    d.sendall(b"081109 203615 148 INFO dfs.DataNode: one\n081109 203616 149 INFO dfs.DataNode: two\n")
    for conn in (a, b, c, d):
        conn.close()
    got = received(listener)
    listener.close()
    lines = [raw for raw, _ in got]
    assert [n for _, n in got] == list(range(1, len(got) + 1))
    assert b"Dec  4 22:40:01 web sshd[1]: one\n" in lines and b"Dec  4 22:40:02 web sshd[1]: two\n" in lines
    assert b"Dec  4 22:40:03 db su: three#012and a second line\n" in lines
    assert b"four\n" in lines and b"after\n" in lines and b"last without a newline\n" in lines
    assert b"after the long one\n" in lines and b"081109 203616 149 INFO dfs.DataNode: two\n" in lines
    assert b"081109 203615 148 INFO dfs.DataNode: one\n" in lines
    long = [x for x in lines if isinstance(x, LongLine)]
    assert sorted(x.total for x in long)[:2] == [150, 170] and all(len(x) == 101 for x in long)
    assert len(long) == 3 and max(x.total for x in long) > 170  # counted up to the read it was cut in
    assert len(lines) == 12 and listener.stats["connections"] == 4


def test_udp_datagrams_are_messages_and_a_rfc5424_model_keeps_the_pri():
    port = free_port(socket.SOCK_DGRAM)
    listener = SyslogListener(f"udp://127.0.0.1:{port}", poll_s=0.05, idle_exit_s=0.5, keep_pri=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(3):
            s.sendto(b"<165>1 2026-12-04T22:40:0%dZ host app - - - message %d\n" % (i, i), ("127.0.0.1", port))
    got = received(listener)
    listener.close()
    assert got == [(b"<165>1 2026-12-04T22:40:0%dZ host app - - - message %d\n" % (i, i), i + 1) for i in range(3)]


def test_a_listener_serves_loopback_only_and_says_how_to_take_other_hosts_logs():
    assert is_listener("tcp://127.0.0.1:5514") and is_listener("udp://[::1]:514")
    assert not is_listener("/var/log/tcp.log") and not is_listener("-")
    assert address_of("tcp://localhost:5514") == ("tcp", "127.0.0.1", 5514)
    for bad in ("tcp://0.0.0.0:5514", "udp://10.1.2.3:514", "tcp://siem.example.com:514"):
        with pytest.raises(ValueError, match="loopback only.*forward a copy"):
            address_of(bad)
    for bad in ("tcp://127.0.0.1", "http://127.0.0.1:80", "tcp://127.0.0.1:5514/path"):
        with pytest.raises(ValueError, match="tcp://HOST:PORT"):
            address_of(bad)
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(ValueError, match="cannot listen there"):
            SyslogListener(f"tcp://127.0.0.1:{port}")


def test_on_a_stop_the_listener_hands_on_what_it_received_and_what_its_sockets_hold():
    """A stop (SIGTERM) comes while messages wait: some already framed, more in an open connection's socket,
    one connection not yet accepted, the last message without its newline. drain() gives every one of them,
    in order per connection, then closes the connections (the relay sees the stop). Before, all of these
    were dropped with the listener."""
    port = free_port()
    listener = SyslogListener(f"tcp://127.0.0.1:{port}", poll_s=0.05, max_line_bytes=1000)
    a = socket.create_connection(("127.0.0.1", port))
    a.sendall(b"".join(b"<13>a %d\n" % i for i in range(300)))
    got = []
    for item in listener:  # the stream takes a few, then stops
        if item is not None:
            got.append(item)
        if len(got) == 5:
            break
    a.sendall(b"".join(b"<13>a %d\n" % i for i in range(300, 2000)) + b"<13>a cut")
    b = socket.create_connection(("127.0.0.1", port))  # queued by the kernel, never accepted before the stop
    b.sendall(b"11 <13>b first" + b"9 <13>b two")
    drained = list(listener.drain(10))
    messages = [m for m, _ in got + drained]
    assert [n for _, n in got + drained] == list(range(1, len(messages) + 1))
    assert [m for m in messages if m.startswith(b"a")] == [b"a %d\n" % i for i in range(2000)] + [b"a cut\n"]
    assert [m for m in messages if m.startswith(b"b")] == [b"b first\n", b"b two\n"]
    assert listener.stats["connections"] == 2
    for s in (a, b):  # closed by the listener
        s.settimeout(5)
        assert s.recv(10) == b""
        s.close()
    with pytest.raises(OSError):  # no longer listening
        socket.create_connection(("127.0.0.1", port), timeout=2)
    listener.close()


def test_on_a_stop_the_udp_listener_reads_the_datagrams_that_wait():
    port = free_port(socket.SOCK_DGRAM)
    listener = SyslogListener(f"udp://127.0.0.1:{port}", poll_s=0.05)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(50):
            s.sendto(b"<13>d %d" % i, ("127.0.0.1", port))
    assert [m for m, _ in listener.drain(10)] == [b"d %d\n" % i for i in range(50)]
    listener.close()


def test_udp_datagrams_the_kernel_dropped_are_counted(capsys):
    """UDP has no flow control: a flood the listener does not read in time overflows the socket's buffer.
    Every datagram sent is then either read or counted as dropped by the kernel, and the listener says so."""
    from loglm.detect.listen import kernel_drops

    port = free_port(socket.SOCK_DGRAM)
    listener = SyslogListener(f"udp://127.0.0.1:{port}", poll_s=0.05, max_line_bytes=4000)
    sent = 3000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(sent):  # 3000 x 4 KB: more than the kernel's largest receive buffer here
            s.sendto(b"<13>x %d " % i + b"y" * 4000, ("127.0.0.1", port))
    read = sum(1 for _ in listener.drain(10))
    drops = listener.kernel_drops
    assert drops is not None and drops > 0 and read > 0
    assert read + drops == sent
    # served as a metric beside the stream's own (detect.metrics_port)
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from loglm.detect.stream_metrics import StreamCollector

    det = SimpleNamespace(account=SimpleNamespace(read=read, rejected=0), open={}, threshold=1.0, last_line_at=0.0,
                          watermark=float("-inf"), stats=dict.fromkeys(
                              ["sessions_scored", "alerts", "evicted", "closed_quiet"], 0))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StreamCollector(det, listener.source, None, listener))
    assert f"loglm_stream_udp_kernel_drops_total{{input=\"{listener.source}\",model_run=\"\"}} {drops}.0" in \
        generate_latest(registry).decode()
    listener.close()
    assert listener.stats["kernel_drops"] == drops
    assert f"the kernel dropped {drops} datagrams" in capsys.readouterr().err
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a socket of its own: none
        s.bind(("127.0.0.1", 0))
        assert kernel_drops(s) == 0
