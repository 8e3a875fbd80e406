"""A small synchronous QMP client: one Unix socket, no asyncio, safe to share by threads.

Why not qemu.qmp's `legacy.QEMUMonitorProtocol`: its sync shim runs each call with
`run_until_complete` on an event loop of the thread that created it, and the
orchestrator calls one monitor from its observer thread and its action thread. When
one thread's loop was already running a call, the other's call failed at once
("coroutine was never awaited"), the observer took a healthy VM for gone, and the host
fenced itself (seen in the lab: "our VM is gone (monitor unreachable)" 50 ms after the
VM started, then a needless second failover).

QMP facts used (QEMU docs/interop/qmp-spec.rst): the server greets with {"QMP": {...}};
the client must send "qmp_capabilities" before any other command; every message is one
JSON object on its own line; a command's answer is {"return": ...} or {"error": {...}}
and echoes the command's "id"; events ({"event": ..., "data": ...}) may arrive at any
time, also between a command and its answer.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from typing import Any


class QmpError(ConnectionError):
    """The monitor closed or spoke something that is not QMP."""


class QmpClient:
    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._events: deque[dict[str, Any]] = deque(maxlen=1000)
        self._next_id = 0
        self._lock = threading.RLock()

    # Connection ------------------------------------------------------------------
    def connect(self) -> None:
        with self._lock:
            if self._sock is not None:
                return
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                self._sock, self._buf = sock, b""
                greeting = self._read(time.monotonic() + self.timeout)
                if "QMP" not in greeting:
                    raise QmpError(f"{self.path} is not a QMP monitor (greeting {greeting!r:.80})")
                reply = self.cmd_raw("qmp_capabilities")
                if "error" in reply:
                    raise QmpError(f"qmp_capabilities refused: {reply['error']}")
            except BaseException:
                self.close()
                sock.close()
                raise

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
            self._buf = b""
            if sock is not None:
                sock.close()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def fileno(self) -> int:
        """The socket's descriptor, to wait for events with select (events.EventReader)."""
        sock = self._sock
        if sock is None:
            raise QmpError(f"not connected to {self.path}")
        return sock.fileno()

    # Messages ----------------------------------------------------------------------
    def cmd_raw(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one command; its raw answer ({"return": ...} or {"error": ...})."""
        with self._lock:
            if self._sock is None:
                raise QmpError(f"not connected to {self.path}")
            self._next_id += 1
            ident = f"colo-{self._next_id}"
            msg: dict[str, Any] = {"execute": name, "id": ident}
            if args:
                msg["arguments"] = args
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
            deadline = time.monotonic() + self.timeout
            while True:
                reply = self._read(deadline)
                if "event" in reply:
                    self._events.append(reply)
                elif reply.get("id") == ident:
                    return reply
                # else: the late answer of a command that timed out earlier; skip it

    def pull_event(self, wait: float) -> dict[str, Any] | None:
        """The oldest event not yet taken, waiting up to `wait` seconds for one."""
        with self._lock:
            if self._events:
                return self._events.popleft()
            if self._sock is None:
                raise QmpError(f"not connected to {self.path}")
            deadline = time.monotonic() + max(0.0, wait)
            while True:
                try:
                    msg = self._read(deadline)
                except TimeoutError:
                    return None
                if "event" in msg:
                    return msg

    def clear_events(self) -> None:
        """Forget the events received so far (and those already waiting in the socket)."""
        with self._lock:
            self._events.clear()
            while self._sock is not None:
                try:
                    msg = self._read(time.monotonic())
                except TimeoutError:
                    return
                if "event" not in msg:
                    continue

    def _read(self, deadline: float) -> dict[str, Any]:
        """One message; TimeoutError at the deadline; QmpError if the monitor closed."""
        assert self._sock is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                # A non-blocking look: data may already be there.
                self._sock.setblocking(False)
                try:
                    chunk = self._sock.recv(65536)
                except BlockingIOError:
                    raise TimeoutError(f"QMP {self.path}: no message in time") from None
                finally:
                    self._sock.settimeout(self.timeout)
            else:
                self._sock.settimeout(left)
                try:
                    chunk = self._sock.recv(65536)
                finally:
                    self._sock.settimeout(self.timeout)
            if not chunk:
                self.close()
                raise QmpError(f"QMP {self.path}: the monitor closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." too deep
            self.close()
            raise QmpError(f"QMP {self.path}: not JSON: {line[:80]!r}") from exc
        if not isinstance(msg, dict):
            self.close()
            raise QmpError(f"QMP {self.path}: not a JSON object: {line[:80]!r}")
        return msg
