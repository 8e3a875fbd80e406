"""The proxy's end of the control channel: the unix sockets its loop polls.

The messages and their framing are `colo_proxy.wire.control`; this adds the sockets, the
connected clients, who may say what, and a one-shot `request` for `colo-proxy status` and
tests.

Who may say what (docs/PROXY.md, "Control channel"):
- The command socket (`control_socket`, mode 0600) takes connections from root and from
  the proxy's own user only, checked with SO_PEERCRED as well as by the mode (a mode can
  be loosened by hand; the check cannot). Anyone else gets one error line and is closed.
- Commands (everything but `hello` and `status`) come from one process at a time: the
  first to send one holds the channel while any of its connections is open. The
  orchestrator is one process with two connections on Xen (its proxy link and its libxl
  bridge), so the holder is a process, not a connection. Another process's command is
  answered with an error line while the holder is live; once the holder's connections
  have all hung up (it died, or a restarted orchestrator replaced it), the next one
  takes the channel.
- The status socket (`<control_socket>.status`, mode 0666) is for any local user: it
  answers `hello` and `status`, and nothing else: not the secondary's per-connection
  listing (`"offsets": true` carries ISNs, which help blind TCP injection), not the
  checkpoint requests the command clients hear. Its replies never wait (a reader that
  does not read is dropped), it takes a bounded number of connections, and it answers a
  bounded number of requests per second, so no local user can slow the data path.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colo_proxy.wire.control import REQUESTS, LineDecoder, ProtocolError, encode

log = logging.getLogger("colo-proxy")

OPEN = ("hello", "status")  # what needs no hold on the channel, and all the status socket says
STATUS_CLIENTS = 8  # status-socket connections at once; more are closed at once
STATUS_RATE = 200  # status-socket replies per second, all connections together
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def status_path_for(control_socket: str | Path) -> Path:
    """The read-only status socket that goes with a control socket."""
    return Path(f"{control_socket}.status")


def peer_gone(sock: socket.socket) -> bool:
    """The other end has closed (or reset) this stream socket, even if data it sent
    before is still unread. Does not block."""
    p = select.poll()
    p.register(sock, select.POLLRDHUP)
    return any(ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR)
               for _, ev in p.poll(0))


@dataclass(frozen=True)
class Peer:
    """The connecting process, as the kernel saw it at connect (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


class Client:
    def __init__(self, sock: socket.socket, peer: Peer, *, read_only: bool = False) -> None:
        self.sock = sock
        self.peer = peer
        self.read_only = read_only
        self.decoder = LineDecoder()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: dict[str, Any]) -> bool:
        if self.read_only:
            return self._send_now(encode(msg))
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

    def _send_now(self, data: bytes) -> bool:
        """All of it at once or nothing: a status reader that lets its socket fill up is
        closed rather than waited for (the next read of it finds it gone)."""
        try:
            sent = self.sock.send(data, socket.MSG_DONTWAIT)
        except OSError:
            sent = 0
        if sent == len(data):
            return True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return False


class ControlServer:
    def __init__(self, path: str | Path, *, allowed_uids: Collection[int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.status_path = status_path_for(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Root may do anything anyway; the proxy's own user is the one that runs it.
        self.allowed_uids = frozenset({0, os.geteuid()} if allowed_uids is None
                                      else allowed_uids)
        self.sock = _listen(self.path, 0o600)
        self.status_sock = _listen(self.status_path, 0o666)
        self.clients: list[Client] = []
        self.holder: int | None = None  # pid of the process whose commands we take
        self.refused = 0  # connections closed for their user
        self._status_replies: deque[float] = deque()
        self._clock = clock

    def fileno(self) -> int:
        return self.sock.fileno()

    def status_fileno(self) -> int:
        return self.status_sock.fileno()

    def accept(self, read_only: bool = False) -> Client | None:
        """The next connection on the command socket (or the status socket), or None if
        there is none or it was refused (then it is closed already)."""
        try:
            conn, _ = (self.status_sock if read_only else self.sock).accept()
        except BlockingIOError:
            return None
        peer = Peer(*_UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                   _UCRED.size)))
        conn.setblocking(False)
        c = Client(conn, peer, read_only=read_only)
        if read_only:
            if sum(x.read_only for x in self.clients) >= STATUS_CLIENTS:
                conn.close()
                return None
        elif peer.uid not in self.allowed_uids:
            self.refused += 1
            log.warning("refused a control connection from pid %d, uid %d: only uid %s "
                        "may command this proxy", peer.pid, peer.uid,
                        " or ".join(map(str, sorted(self.allowed_uids))))
            c.send({"type": "error", "error": (
                f"uid {peer.uid} may not use {self.path} (only uid "
                f"{' or '.join(map(str, sorted(self.allowed_uids)))}); "
                f"ask for status on {self.status_path}")})
            conn.close()
            return None
        self.clients.append(c)
        return c

    def check(self, c: Client, msg: dict[str, Any]) -> str | None:
        """Why `c` may not send `msg` now (the error to answer), or None if it may."""
        kind = msg["type"]
        if c.read_only:
            if kind in OPEN and not msg.get("offsets"):
                return self._status_budget()
            return (f"{kind}: {self.status_path} answers only hello and status (without "
                    f"offsets); commands go to {self.path}, which only root may use")
        if kind in OPEN or kind not in REQUESTS:
            return None  # an unknown type takes nothing: the proxy answers it with an error
        holder = self._live_holder()
        if holder is None or holder == c.peer.pid:
            if holder is None:
                log.info("pid %d (uid %d) commands this proxy now", c.peer.pid, c.peer.uid)
            self.holder = c.peer.pid
            return None
        return (f"{kind} refused: pid {holder} commands this proxy and is still connected "
                "(one orchestrator at a time); stop it first, its connections closing "
                "free the channel")

    def _live_holder(self) -> int | None:
        """The holder, if any of its connections is still open; one whose connections
        have all hung up is forgotten, and its unread lines are refused later."""
        if self.holder is None:
            return None
        if any(c.peer.pid == self.holder and not c.read_only and not peer_gone(c.sock)
               for c in self.clients):
            return self.holder
        log.info("pid %d no longer commands this proxy: its connections are closed",
                 self.holder)
        self.holder = None
        return None

    def _status_budget(self) -> str | None:
        now = self._clock()
        q = self._status_replies
        while q and now - q[0] >= 1.0:
            q.popleft()
        if len(q) >= STATUS_RATE:
            return f"busy: at most {STATUS_RATE} status replies a second; ask again later"
        q.append(now)
        return None

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
        """To the command socket's clients only: status readers hear no flows."""
        sent = 0
        for c in list(self.clients):
            if not c.read_only:
                # A client that cannot take it is dropped by the loop when its read fails.
                sent += c.send(msg)
        return sent

    def close(self) -> None:
        for c in list(self.clients):
            self.drop(c)
        self.sock.close()
        self.status_sock.close()
        self.path.unlink(missing_ok=True)
        self.status_path.unlink(missing_ok=True)


def _listen(path: Path, mode: int) -> socket.socket:
    path.unlink(missing_ok=True)  # a crashed predecessor's socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Linux gives the file the socket inode's mode (less the umask) at bind: set it first,
    # so the command socket never exists with a looser mode, not even for a moment.
    os.fchmod(sock.fileno(), mode)
    sock.bind(str(path))
    os.chmod(path, mode)  # past the umask (the status socket must be writable by all)
    sock.listen(8)
    sock.setblocking(False)
    return sock


def request(path: str | Path, msg: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """One request and its reply (for `colo-proxy status` and tests); skips unsolicited
    checkpoint requests that arrive first."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        try:
            s.sendall(encode(msg))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at once: the proxy's error line is still there to read
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
