"""The supervisor's HTTP endpoint (/metrics, /healthz, /readyz, /storez), non-blocking.

Kubernetes' liveness probe, a Prometheus scrape and anybody who can reach the port
share this socket, so no client may delay another, nor the supervisor's signal
handling and worker reaping. The supervisor forks workers, so it may run no threads;
instead every connection is a non-blocking socket in the supervisor's selector and
each step reads or writes only what the kernel has ready. A connection gets
`REQUEST_TIMEOUT` seconds to send its request head and to read its answer, and the
number of open connections is capped (the oldest is dropped), so idle or
half-open connections cost a file descriptor each and nothing else.

Each answer is computed once its request head is complete and is small (the merged
metrics are a few kilobytes), so serving it is bounded work on the loop.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

REQUEST_TIMEOUT = 5.0  # seconds for a request head to arrive and its answer to leave
MAX_CONNECTIONS = 512  # open connections at most; beyond it the oldest is dropped
MAX_HEAD = 8192  # bytes of request line and headers; larger is answered 431

Route = Callable[[], tuple[int, bytes, str]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@dataclass(slots=True)
class _Connection:
    sock: socket.socket
    deadline: float
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytes = b""
    sent: int = 0


class ProbeServer:
    """A listening TCP socket and its connections, driven by the caller's selector.

    `routes` maps a path to a function returning (status, body, content type).
    Register with `attach(selector)`; when the selector reports a key whose `data`
    is this object, call `handle(key, events)`; call `expire()` now and then.
    """

    def __init__(self, host: str, port: int, routes: dict[str, Route]) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((host, port))
            self.listener.listen(128)
        except OSError:
            self.listener.close()
            raise
        self.listener.setblocking(False)
        self.routes = routes
        self._conns: dict[socket.socket, _Connection] = {}
        self._selector: selectors.BaseSelector | None = None

    def attach(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        selector.register(self.listener, selectors.EVENT_READ, self)

    def handle(self, key: selectors.SelectorKey, events: int) -> None:
        """Advance whatever the selector said is ready; never blocks."""
        sock = key.fileobj
        if sock is self.listener:
            self._accept()
            return
        assert isinstance(sock, socket.socket)
        conn = self._conns.get(sock)
        if conn is None:
            return
        if events & selectors.EVENT_READ:
            self._read(conn)
        elif events & selectors.EVENT_WRITE:
            self._write(conn)

    def expire(self, now: float | None = None) -> None:
        """Close connections past their deadline (idle, half-open or slow readers)."""
        now = time.monotonic() if now is None else now
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self._close(conn)

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        if self._selector is not None:
            try:
                self._selector.unregister(self.listener)
            except (KeyError, ValueError):
                pass
        self.listener.close()

    def close_in_child(self) -> None:
        """In a forked worker: drop the inherited descriptors without touching the
        selector (the epoll set is shared with the supervisor)."""
        for sock in self._conns:
            sock.close()
        self.listener.close()

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- steps ---------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(64):  # a bounded burst, so a flood cannot hold the loop
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ECONNABORTED, EMFILE …: try again on the next wake-up
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                oldest = min(self._conns.values(), key=lambda c: c.deadline)
                self._close(oldest)
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic() + REQUEST_TIMEOUT)
            self._conns[sock] = conn
            assert self._selector is not None
            self._selector.register(sock, selectors.EVENT_READ, self)

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.inbox += data
        end = conn.inbox.find(b"\r\n\r\n")
        if end < 0:
            end = conn.inbox.find(b"\n\n")
        if end < 0:
            if len(conn.inbox) > MAX_HEAD:
                self._answer(conn, 431, b"request head too large\n", "text/plain")
            return
        self._answer(conn, *self._route(bytes(conn.inbox[:end])))

    def _route(self, head: bytes) -> tuple[int, bytes, str]:
        line = head.split(b"\n", 1)[0].strip().split()
        if len(line) != 3 or not line[2].startswith(b"HTTP/"):
            return 400, b"bad request\n", "text/plain"
        method, target = line[0], line[1].decode("latin-1")
        path = target.split("?", 1)[0]
        route = self.routes.get(path)
        if route is None:
            return 404, b"not found\n", "text/plain"
        if method not in (b"GET", b"HEAD"):
            return 405, b"method not allowed\n", "text/plain"
        status, body, ctype = route()
        return status, (b"" if method == b"HEAD" else body), ctype

    def _answer(self, conn: _Connection, status: int, body: bytes, ctype: str) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        conn.outbox = head + body
        conn.inbox.clear()
        conn.deadline = time.monotonic() + REQUEST_TIMEOUT
        assert self._selector is not None
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, self)
        self._write(conn)

    def _write(self, conn: _Connection) -> None:
        try:
            conn.sent += conn.sock.send(conn.outbox[conn.sent :])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if conn.sent >= len(conn.outbox):
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        self._conns.pop(conn.sock, None)
        if self._selector is not None:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.sock.close()
