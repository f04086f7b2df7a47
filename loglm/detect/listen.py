"""Syslog over the network as a stream's input: ``follow=true inputs=[tcp://127.0.0.1:5514]`` (or ``udp://``).

A local syslog relay (rsyslog, syslog-ng, a SIEM's forwarder) sends LogLM a copy of what it receives, and
the stream scores it as it scores a followed file.  One message is one line:

- **TCP** (RFC 6587): octet-counted frames (``LEN SP MSG``, what rsyslog sends with
  ``TCP_Framing="octet-counted"``; a connection whose first bytes read ``LEN SP <``) or lines ended by a
  newline (the traditional framing; any other connection); several connections at once, each with its own
  framing, read in turn;
- **UDP** (RFC 5426): one message per datagram.

A message's ``<PRI>`` is removed unless the data format begins with it (``rfc5424``, or a ``data.header``
starting ``<<Pri>>``), so a model trained on the files a syslog daemon writes reads the same lines off the
network.  Newlines inside a message become ``#012``, as rsyslog writes them to files.  A message longer than
``max_line_bytes`` is rejected with its length (its start kept), like a file's long line.

Only loopback addresses are served (a server of this project binds 127.0.0.1): to take syslog from other
hosts, let the host's syslog daemon receive it and forward a copy to LogLM on loopback.  A listener has no
resume position: what arrives while no stream listens is not LogLM's to read again (the relay's queue is).
UDP has no flow control: a datagram that finds the socket's receive buffer full is dropped by the kernel,
and LogLM cannot read it.  The listener asks for a large buffer (``UDP_RCVBUF``, capped by the kernel's
``net.core.rmem_max``) and counts the kernel's drops for its socket (Linux ``/proc/net/udp``): summary
``listener.kernel_drops``, metric ``loglm_stream_udp_kernel_drops``, and a warning when any.  TCP loses none.
On a stop (SIGTERM), what the listener received and its sockets hold is read and scored first
(:meth:`SyslogListener.drain`), then its connections are closed."""

from __future__ import annotations

import ipaddress
import re
import selectors
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator
from urllib.parse import urlsplit

from loglm.ingest.readers import LongLine
from loglm.signals import held

SCHEMES = ("tcp", "udp")
_PRI = re.compile(rb"^<\d{1,3}>")
MAX_CONNECTIONS = 64  # at once; a further one is closed at once (a relay keeps one or a few open)
UDP_RCVBUF = 8 << 20  # bytes asked for a UDP socket's receive buffer (the kernel caps it at net.core.rmem_max)


def kernel_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped for UDP socket ``sock`` (its receive buffer full), from Linux's
    ``/proc/net/udp`` row of the socket's inode; None where that is not known (another system)."""
    import os

    inode = str(os.fstat(sock.fileno()).st_ino)
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as fh:
                next(fh, None)
                for row in fh:
                    fields = row.split()
                    if len(fields) > 12 and fields[9] == inode:
                        return int(fields[-1])
        except OSError:
            continue
    return None


def is_listener(source: str) -> bool:
    return source.split("://", 1)[0] in SCHEMES and "://" in source


def address_of(source: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``tcp://HOST:PORT`` / ``udp://HOST:PORT``; a host that is not a loopback
    address is refused with the reason."""
    parts = urlsplit(source)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in SCHEMES or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ValueError(f"{source}: a network input is tcp://HOST:PORT or udp://HOST:PORT (e.g. tcp://127.0.0.1:5514)")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{source}: LogLM listens on loopback only (127.0.0.1 or ::1), not {host}: let this "
                         "host's syslog daemon receive from other hosts and forward a copy to LogLM on loopback "
                         "(rsyslog: action(type=\"omfwd\" target=\"127.0.0.1\" port=\"5514\" protocol=\"tcp\"))")
    return parts.scheme, "127.0.0.1" if host == "localhost" else host, port


class SyslogListener:
    """Messages received on a loopback socket, as a :class:`~loglm.detect.streaming.FollowLines` gives lines:
    ``(message, its number)``, and with ``ticks`` None whenever nothing is waiting (caught up; then every
    ``poll_s`` while none comes).  The socket is bound when the listener is made (a port in use fails before any work);
    ``idle_exit_s`` ends it after that long without a message."""

    def __init__(self, source: str, poll_s: float = 0.2, idle_exit_s: float | None = None,
                 max_line_bytes: int = 65_536, keep_pri: bool = False, ticks: bool = False):
        self.source, self.poll_s, self.idle_exit_s = source, poll_s, idle_exit_s
        self.max_line_bytes, self.keep_pri, self.ticks = max_line_bytes, keep_pri, ticks
        self.scheme, host, port = address_of(source)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        kind = socket.SOCK_STREAM if self.scheme == "tcp" else socket.SOCK_DGRAM
        self.sock = socket.socket(family, kind)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            raise ValueError(f"{source}: cannot listen there: {e.strerror}") from None
        if kind == socket.SOCK_STREAM:
            self.sock.listen(16)
        else:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        self.sock.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ, None)
        self.buffers: dict[socket.socket, bytearray] = {}  # an open connection -> what it sent, not yet framed
        self.skipping: dict[socket.socket, int] = {}  # a connection -> bytes of a long frame still to drop
        self.framing: dict[socket.socket, str] = {}  # a connection -> "octet" or "newline", from its first frame
        self.n = 0
        self._ready: deque[bytes] = deque()  # framed messages not yet handed on
        self.stats = {"connections": 0, "refused_connections": 0} if kind == socket.SOCK_STREAM else {
            "kernel_drops": 0}
        self.rotations: list = []
        self.resumed = None

    @property
    def paths(self) -> list[str]:
        return [self.source]

    def positions(self, oldest_held: dict) -> list[dict]:
        return []  # nothing to resume from: the relay holds what was sent while no stream listened

    def __iter__(self) -> Iterator[tuple[bytes, int] | None]:
        last = time.monotonic()
        while True:
            while self._ready:  # taken off the socket, handed on one by one; a stop in between drops none
                with held():
                    self.n += 1
                    yield self._ready.popleft(), self.n
                last = time.monotonic()
            ready = self.selector.select(0)
            if not ready:  # caught up: a tick, then wait for more
                if self.idle_exit_s is not None and time.monotonic() - last >= self.idle_exit_s:
                    return
                if self.ticks:
                    yield None
                ready = self.selector.select(self.poll_s)
            for key, _ in ready:
                with held():  # a stop between a read and its framing would lose what was read
                    self._ready.extend(self._read(key.fileobj))

    drains = True  # a stop reads what waits first (drain)

    def drain(self, within_s: float) -> Iterator[tuple[bytes, int]]:
        """After a stop: the messages received and not yet handed on, the connections waiting to be accepted
        and what every connection (or the UDP socket) holds, read until nothing more waits or ``within_s``
        has passed; a message cut short by the stop is its sender's last.  New connections are no longer
        taken, and the open ones are closed, so the relay sees the stop (and keeps what it sends next)."""
        deadline = time.monotonic() + within_s
        if self.scheme == "tcp":
            while len(self.buffers) < MAX_CONNECTIONS and self._accept():
                pass  # connections queued by the kernel, not yet accepted: they may have sent already
            self.selector.unregister(self.sock)
            self.sock.close()
        while True:
            yield from self._pending()
            ready = self.selector.select(0) if time.monotonic() < deadline else []
            if not ready:
                break
            for key, _ in ready:
                self._ready.extend(self._read(key.fileobj))
        for conn, buf in list(self.buffers.items()):  # what a sender left without its end
            self._ready.extend(self._frames(conn, buf, final=True))
            self.selector.unregister(conn)
            conn.close()
            del self.buffers[conn]
        yield from self._pending()

    def _pending(self) -> Iterator[tuple[bytes, int]]:
        while self._ready:
            self.n += 1
            yield self._ready.popleft(), self.n

    def _read(self, sock) -> list[bytes]:
        if sock is self.sock and self.scheme == "udp":
            try:
                data, _ = sock.recvfrom(65_536)
            except BlockingIOError:
                return []
            return [self._message(data.rstrip(b"\r\n"))]
        if sock is self.sock:  # a new TCP connection
            self._accept()
            return []
        try:
            data = sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        buf = self.buffers[sock]
        if not data:  # the sender closed: what it left without a newline is its last message
            out = self._frames(sock, buf, final=True)
            self.selector.unregister(sock)
            sock.close()
            del self.buffers[sock]
            self.skipping.pop(sock, None)
            self.framing.pop(sock, None)
            return out
        buf += data
        return self._frames(sock, buf, final=False)

    def _accept(self) -> bool:
        """Take a waiting TCP connection (closed at once beyond MAX_CONNECTIONS); False when none waits."""
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        if len(self.buffers) >= MAX_CONNECTIONS:
            self.stats["refused_connections"] += 1
            conn.close()
            return True
        conn.setblocking(False)
        self.selector.register(conn, selectors.EVENT_READ, None)
        self.buffers[conn] = bytearray()
        self.stats["connections"] += 1
        return True

    def _frames(self, sock, buf: bytearray, final: bool) -> list[bytes]:
        """The whole messages at the start of ``buf`` (taken out of it): RFC 6587 octet counting where a frame
        starts with a digit, else up to a newline."""
        out = []
        while buf:
            skip = self.skipping.get(sock, 0)
            if skip < 0:  # the rest of a line too long to keep, up to its newline
                end = buf.find(b"\n")
                del buf[:len(buf) if end < 0 else end + 1]
                self.skipping[sock] = skip if end < 0 else 0
                continue
            if skip:  # the rest of a frame too long to keep
                drop = min(skip, len(buf))
                del buf[:drop]
                self.skipping[sock] = skip - drop
                continue
            framing = self.framing.get(sock) or self._framing(buf, final)
            if framing is None:
                break  # too little yet to tell
            self.framing[sock] = framing
            m = re.match(rb"(\d{1,10}) ", buf[:12]) if framing == "octet" else None
            if m:  # octet-counted: LEN SP MSG
                size, start = int(m.group(1)), m.end()
                if size > self.max_line_bytes:
                    if len(buf) < start + min(size, self.max_line_bytes + 1) and not final:
                        break
                    long = LongLine(bytes(buf[start:start + self.max_line_bytes + 1]))
                    long.total = size
                    out.append(long)
                    have = len(buf) - start
                    del buf[:start + min(size, have)]
                    self.skipping[sock] = max(0, size - have)
                    continue
                if len(buf) < start + size:
                    if final:  # cut short by the sender's close
                        out.append(self._message(bytes(buf[start:])))
                        buf.clear()
                    break
                out.append(self._message(bytes(buf[start:start + size])))
                del buf[:start + size]
                continue
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > self.max_line_bytes:  # too long: rejected with its start, the rest dropped
                    long = LongLine(bytes(buf[:self.max_line_bytes + 1]))
                    long.total = len(buf)  # what came before its newline did (the whole is not waited for)
                    out.append(long)
                    buf.clear()
                    self.skipping[sock] = -1
                elif final:
                    out.append(self._message(bytes(buf)))
                    buf.clear()
                break
            out.append(self._message(bytes(buf[:end]).rstrip(b"\r")))
            del buf[:end + 1]
        return out

    @staticmethod
    def _framing(buf: bytearray, final: bool) -> str | None:
        """A connection's framing, from its first bytes (a sender keeps one framing for its connection, RFC
        6587): octet counting when they read ``LEN SP <`` (a count, then a message's PRI), else newlines,
        so a line that starts with digits (``081109 203615 ...``) is not taken for a count; None until
        enough has arrived to tell."""
        m = re.match(rb"\d{1,10}", buf)
        if m is None:
            return "newline"
        rest = buf[m.end():m.end() + 2]
        if len(rest) < 2 and not final and m.end() < 10:
            return None
        return "octet" if rest == b" <" else "newline"

    def _message(self, msg: bytes) -> bytes:
        if not self.keep_pri:
            msg = _PRI.sub(b"", msg, count=1)
        msg = msg.rstrip(b"\r\n").replace(b"\n", b"#012")
        if len(msg) > self.max_line_bytes:
            long = LongLine(msg[:self.max_line_bytes + 1])
            long.total = len(msg)
            return long
        return msg + b"\n"

    @property
    def kernel_drops(self) -> int | None:
        """UDP: datagrams the kernel dropped so far (None for TCP, or where unknown)."""
        if self.scheme != "udp" or self.sock.fileno() < 0:
            return self.stats.get("kernel_drops") if self.scheme == "udp" else None
        drops = kernel_drops(self.sock)
        if drops is not None:
            self.stats["kernel_drops"] = drops
        return drops

    def close(self) -> None:
        drops = self.kernel_drops
        if drops:
            print(f"loglm: {self.source}: the kernel dropped {drops} datagrams (the socket's receive buffer was "
                  "full; UDP has no flow control): send over TCP to lose none", file=sys.stderr)
        for conn in list(self.buffers):
            conn.close()
        self.selector.close()
        self.sock.close()
        if self.stats.get("refused_connections"):
            print(f"loglm: {self.source}: {self.stats['refused_connections']} connections refused (more than "
                  f"{MAX_CONNECTIONS} at once)", file=sys.stderr)


def keeps_pri(data) -> bool:
    """Whether lines of ``data``'s format begin with the syslog ``<PRI>`` (it is then left in place)."""
    return data.format == "rfc5424" or (data.header or "").startswith("<<Pri>>")
