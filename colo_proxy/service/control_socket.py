"""The proxy's end of the control channel: the unix socket its loop polls.

The messages and their framing are `colo_proxy.wire.control`; this adds the socket, the
connected clients and a one-shot `request` for `colo-proxy status` and tests.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from colo_proxy.wire.control import LineDecoder, ProtocolError, encode


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = LineDecoder()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: dict[str, Any]) -> bool:
        try:
            # Small messages on a local socket: a blocking send with a short timeout never
            # stalls the data path for long and never splits a line.
            self.sock.settimeout(1.0)
            self.sock.sendall(encode(msg))
            return True
        except OSError:
            return False
        finally:
            try:
                self.sock.setblocking(False)
            except OSError:
                pass


class ControlServer:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a crashed predecessor's socket
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o660)
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.clients: list[Client] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> Client | None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return None
        conn.setblocking(False)
        c = Client(conn)
        self.clients.append(c)
        return c

    def read(self, c: Client) -> list[dict[str, Any] | ProtocolError] | None:
        """Messages from a client, or None when it has gone (then forget it)."""
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            self.drop(c)
            return None
        return list(c.decoder.feed(data))

    def drop(self, c: Client) -> None:
        if c in self.clients:
            self.clients.remove(c)
        c.sock.close()

    def broadcast(self, msg: dict[str, Any]) -> int:
        sent = 0
        for c in list(self.clients):
            # A client that cannot take it is dropped by the loop when its read fails.
            sent += c.send(msg)
        return sent

    def close(self) -> None:
        for c in list(self.clients):
            self.drop(c)
        self.sock.close()
        self.path.unlink(missing_ok=True)


def request(path: str | Path, msg: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """One request and its reply (for `colo-proxy status` and tests); skips unsolicited
    checkpoint requests that arrive first."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(encode(msg))
        dec = LineDecoder()
        while True:
            data = s.recv(65536)
            if not data:
                raise ProtocolError("the proxy closed the connection")
            for item in dec.feed(data):
                if isinstance(item, ProtocolError):
                    raise item
                if item["type"] != "checkpoint_request":
                    return item
