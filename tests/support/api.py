"""A raw client of the orchestrator's API, for tests that send what no polite client
would: forged tokens, oversized heads, a request trickled byte by byte."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

from colo_lab.wait import wait_until

Addr = tuple[str, int] | str  # (host, port), or a unix socket's path
# A primary's config with nothing behind it, to which a test adds its api_* lines.
CONFIG = """
name = "web"
role = "primary"
qmp = "/run/pvm.qmp"
qmp_events = "/run/pvm-events.qmp"
heartbeat_listen = "127.0.0.1:7410"
peer_heartbeat = "127.0.0.1:7409"
incoming_uri = "tcp:127.0.0.1:4444"
peer_incoming_uri = "tcp:127.0.0.1:4445"
heartbeat_key_file = "/etc/colo/web.key"
on_fence = ["true"]
"""


def connect(addr: Addr, *, tls: ssl.SSLContext | None = None, server_hostname: str = "",
            timeout: float = 5.0) -> socket.socket:
    if isinstance(addr, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        s = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET,
                          socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(addr)
    if tls is not None:
        s = tls.wrap_socket(s, server_hostname=server_hostname or None)
    return s


def read_all(s: socket.socket) -> bytes:
    """What the server sent until it closed the connection, or reset it."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def exchange(addr: Addr, data: bytes, *, tls: ssl.SSLContext | None = None,
             server_hostname: str = "", timeout: float = 5.0) -> tuple[int, bytes]:
    """Send `data` as it is, read until the server closes: (status, body); status 0 when the
    server closed (or reset) without an answer."""
    with connect(addr, tls=tls, server_hostname=server_hostname, timeout=timeout) as s:
        s.sendall(data)
        raw = read_all(s)
    if not raw:
        return 0, b""
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def request(addr: Addr, method: str, path: str, token: bytes | str | None = None,
            **kw: Any) -> tuple[int, Any]:
    """A well-formed request: (status, the JSON body, or the text when it is not JSON)."""
    tok = token.decode() if isinstance(token, bytes) else token
    auth = f"Authorization: Bearer {tok}\r\n" if tok is not None else ""
    status, body = exchange(addr, f"{method} {path} HTTP/1.1\r\nHost: colo\r\n{auth}"
                                  "Content-Length: 0\r\n\r\n".encode(), **kw)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def closed_by_peer(s: socket.socket) -> bool:
    """The server has closed or reset this connection (without waiting)."""
    try:
        s.setblocking(False)
        return s.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.setblocking(True)


def slowloris(addrs: Sequence[Addr], per_addr: int, serve: Callable[[], None],
              timeout: float) -> tuple[float, float]:
    """Open `per_addr` connections to each address, each starting a request and then sending
    one more byte before each of three calls of serve() (so that an idle timer alone would
    never fire). Asserts that all of them were still open once serve() had run (they held up
    nobody) and that the server then cuts them all off within 5 x `timeout`. Returns the
    seconds serve() took, three times, and the seconds until the last one was cut off."""
    slow = [connect(a) for a in addrs for _ in range(per_addr)]
    try:
        for s in slow:
            s.sendall(b"POST /failover HTTP/1.1\r\nAuthorization: Bearer ")
        t0 = time.monotonic()
        for _ in range(3):
            for s in slow:
                s.sendall(b"x")
            serve()
        served = time.monotonic() - t0
        assert not any(closed_by_peer(s) for s in slow), f"served only after {served:.3f} s"
        wait_until(lambda: all(closed_by_peer(s) for s in slow), 5 * timeout,
                   f"the server to cut {len(slow)} slow clients off")
        return served, time.monotonic() - t0
    finally:
        for s in slow:
            s.close()
