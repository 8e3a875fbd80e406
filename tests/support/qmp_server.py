"""A QMP server that follows QEMU's qmp-spec on a Unix socket, for the QMP client's tests.

It greets, takes qmp_capabilities, answers commands through a handler, and `push` sends an
event to every connected client at any time, as QEMU does.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}},
                    "capabilities": ["oob"]}}
Handler = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], None]


def _answer(cmd: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> None:
    """query-status answers after an event; 'late' answers only a later command; others echo."""
    ident, name = cmd.get("id"), cmd["execute"]
    if name == "query-status":
        send({"event": "RESUME", "data": {}, "timestamp": {"seconds": 1, "microseconds": 0}})
        send({"return": {"status": "running", "running": True}, "id": ident})
    elif name == "late":
        pass  # never answered now: the answer comes before the next command's
    elif name == "bad":
        send({"error": {"class": "GenericError", "desc": "no such thing"}, "id": ident})
    elif name == "quit":
        send({"return": {}, "id": ident})
        raise EOFError
    else:
        send({"return": {"echo": cmd.get("arguments", {})}, "id": ident})


class FakeQmp:
    def __init__(self, path: Path, greeting: dict[str, Any] = GREETING,
                 handler: Handler = _answer) -> None:
        self.path = str(path)
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        self.srv.listen(8)
        self.greeting, self.handler = greeting, handler
        self.pending_late: list[Any] = []
        self._sends: list[Callable[[dict[str, Any]], None]] = []
        self._conns: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def push(self, event: str, data: dict[str, Any] | None = None) -> None:
        """Send an event to every connected client now (as QEMU does, unasked)."""
        msg = {"event": event, "data": data or {}, "timestamp": {"seconds": 1,
                                                                  "microseconds": 0}}
        for send in list(self._sends):
            try:
                send(msg)
            except OSError:
                self._sends.remove(send)

    def connections(self) -> int:
        return len(self._sends)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            if self._closed:  # accepted as close() ran
                conn.close()
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        lock = threading.Lock()

        def send(msg: dict[str, Any]) -> None:
            with lock:
                conn.sendall(json.dumps(msg).encode() + b"\r\n")

        with conn:
            send(self.greeting)
            self._sends.append(send)
            f = conn.makefile("rb")
            for line in f:
                cmd = json.loads(line)
                if cmd["execute"] == "qmp_capabilities":
                    send({"return": {}, "id": cmd.get("id")})
                    continue
                for ident in self.pending_late:
                    send({"return": {"late": True}, "id": ident})
                self.pending_late.clear()
                if cmd["execute"] == "late":
                    self.pending_late.append(cmd.get("id"))
                try:
                    self.handler(cmd, send)
                except EOFError:
                    return

    def close(self) -> None:
        """Stop listening and close every connection, as an exiting QEMU does."""
        self._closed = True
        try:
            # Wakes the accept thread: close() alone leaves it blocked in accept() on a
            # socket that still takes connections by its path.
            self.srv.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed before
        self.srv.close()
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
