"""The socket adapter of `session.LibxlSession`: libxl on TCP, the proxy on its control socket.

It serves libxl on TCP and talks to the proxy service over its ordinary JSON control socket
(colo_proxy/wire/control.py) as one more client, so the same `PrimaryProxy` and comparator
serve the QEMU and the Xen backend unchanged: the comparator's `checkpoint_request` becomes
`DO_CHECKPOINT`, libxl's `COLO_CHECKPOINT` becomes `checkpoint_done`.

libxl's protocol has no authentication, and a COLO_CHECKPOINT releases held output, so the
bridge decides who libxl is before reading a byte (docs/xen.md, "Who may connect"): it
listens on one IPv4 address, never 0.0.0.0; it takes a connection only from the configured
peer address (by default that same address: libxl runs on this host and connects to it);
the connecting socket must belong to root (or to the bridge's own user), as the kernel lists
it in /proc/net/tcp; and while a libxl connection is live, a second one is refused, not
allowed to evict it. A connection whose peer has hung up is not live: `xl remus` started
again gets in at once.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from colo_orch.backends.xen.libxl.session import (
    CheckpointDone,
    Close,
    Command,
    LibxlSession,
    Log,
    Phase,
    Send,
    encode,
)
from colo_orch.core.config import libxl_address_problem
from colo_proxy.service.control_socket import peer_gone
from colo_proxy.wire.control import LineDecoder, ProtocolError
from colo_proxy.wire.control import encode as encode_json

log = logging.getLogger("colo-proxy.libxl")


class LibxlBridge:
    """Serve libxl on TCP; speak the proxy service's JSON control protocol on its unix socket.

    One thread runs a selector loop over: the TCP listener, the libxl connection (one at a
    time: a second is refused while the first is live, and takes its place once it has hung
    up, as when `xl remus` restarts), the control connection (reconnected every `reconnect`
    seconds: the proxy may restart) and a wake-up socketpair for requests from other
    threads (`request_checkpoint`).

    `listen` is an IPv4 address of this host (not 0.0.0.0); `peer` the address libxl
    connects from (None: the listen address); `allowed_uids` the owners its socket may
    have (None: root and our own user). ValueError for an address libxl cannot use.
    """

    def __init__(self, listen: tuple[str, int], control_path: str | None, *,
                 peer: str | None = None, allowed_uids: Collection[int] | None = None,
                 clock: Callable[[], float] = time.monotonic, reconnect: float = 0.5,
                 on_checkpoint: Callable[[CheckpointDone], None] | None = None) -> None:
        self.peer = peer or listen[0]
        for what, host in (("listen", listen[0]), ("peer", self.peer)):
            problem = libxl_address_problem(host)
            if problem:
                raise ValueError(f"libxl bridge {what} address: {problem}")
        self.allowed_uids = frozenset({0, os.geteuid()} if allowed_uids is None
                                      else allowed_uids)
        self.control_path = control_path
        self.clock = clock
        self.reconnect = reconnect
        self.on_checkpoint = on_checkpoint
        self.listener = socket.create_server(listen, reuse_port=False)
        self.listener.setblocking(False)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.session: LibxlSession | None = None
        self.sessions = 0
        self._libxl: socket.socket | None = None
        self._ctl: socket.socket | None = None
        self._ctl_decoder = LineDecoder()
        self._ctl_next_try = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._inbox: list[tuple[str, Any]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sel = selectors.DefaultSelector()
        self.checkpoints = 0  # COLO_CHECKPOINTs over all sessions
        self.control_failures = 0  # checkpoint_done we could not deliver to the proxy
        self.refused = 0  # connections closed unread: not libxl's, or libxl is connected

    # Other threads -----------------------------------------------------------------
    def start(self) -> LibxlBridge:
        self._sel.register(self.listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="libxl-bridge", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for s in (self._libxl, self._ctl, self.listener, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._sel.close()

    def request_checkpoint(self, reason: str) -> None:
        """Ask libxl for a checkpoint now (coalesced with any outstanding request)."""
        self._post("request", reason)

    def send_control(self, msg: dict[str, Any]) -> None:
        """Pass a message to the proxy service (e.g. {"type": "failover"})."""
        self._post("control", msg)

    @property
    def connected(self) -> bool:
        s = self.session
        return s is not None and s.phase in (Phase.READY, Phase.REQUESTED)

    @property
    def proxy_connected(self) -> bool:
        return self._ctl is not None

    def wait_checkpoints(self, count: int, timeout: float) -> bool:
        """Wait until at least `count` COLO_CHECKPOINTs have arrived in total."""
        with self._cond:
            return self._cond.wait_for(lambda: self.checkpoints >= count, timeout)

    def wait(self, cond: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(cond, timeout)

    def status(self) -> dict[str, Any]:
        s = self.session
        return {"listen": f"{self.address[0]}:{self.address[1]}", "peer": self.peer,
                "libxl_connected": self.connected, "proxy_connected": self.proxy_connected,
                "refused": self.refused,
                "phase": s.phase.name if s else None, "sessions": self.sessions,
                "checkpoints": self.checkpoints, "control_failures": self.control_failures,
                "session": s.stats.as_dict() if s else None}

    def _post(self, kind: str, arg: Any) -> None:
        with self._cond:
            self._inbox.append((kind, arg))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # The loop ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._ensure_control()
            for key, _ in self._sel.select(timeout=self.reconnect):
                what = key.data
                if what == "listen":
                    self._accept()
                elif what == "wake":
                    self._drain_inbox()
                elif what == "libxl":
                    self._libxl_readable()
                elif what == "ctl":
                    self._ctl_readable()
                else:
                    raise RuntimeError(f"Unexpected selector key: {what}")

    def _accept(self) -> None:
        try:
            conn, peer = self.listener.accept()
        except BlockingIOError:
            return
        refusal = self._refusal(conn, peer[0])
        if refusal is not None:
            self.refused += 1
            log.warning("refused a connection from %s:%d: %s", peer[0], peer[1], refusal)
            conn.close()
            return
        conn.setblocking(False)
        self._libxl = conn
        with self._cond:
            self.session = LibxlSession()
            self.sessions += 1
            self._cond.notify_all()
        self._sel.register(conn, selectors.EVENT_READ, "libxl")

    def _refusal(self, conn: socket.socket, addr: str) -> str | None:
        """Why this connection is not libxl's to take, or None."""
        if addr != self.peer:
            return f"only {self.peer} may connect (xen_checkpoint_peer)"
        uid = _local_peer_uid(conn)
        if uid is None:
            return "no open socket on this host connects from there"
        if uid not in self.allowed_uids:
            return (f"the connecting socket belongs to uid {uid}; libxl's belongs to uid "
                    f"{' or '.join(map(str, sorted(self.allowed_uids)))}")
        old = self._libxl
        if old is not None and not peer_gone(old):
            return "libxl is connected already; one connection at a time"
        if old is not None:
            # The last libxl hung up, and its end-of-file (and maybe a last message) is not
            # read yet: take them first, in order, then the new connection.
            log.info("libxl connected again; the old connection has closed")
            for _ in range(64):  # a hung-up peer's recv never blocks; bounded all the same
                if self._libxl is not old:
                    break
                self._libxl_readable()
            else:
                self._drop_libxl()
        return None

    def _drop_libxl(self) -> None:
        conn, self._libxl = self._libxl, None
        if conn is not None:
            self._sel.unregister(conn)
            conn.close()
        if self.session is not None:
            self._apply(self.session.closed(self.clock()))

    def _libxl_readable(self) -> None:
        assert self._libxl is not None and self.session is not None
        data = _recv(self._libxl)
        if data is None:
            return
        if not data:
            self._drop_libxl()
            return
        log.debug("from libxl: %r", data[:80])
        self._apply(self.session.received(data, self.clock()))

    def _drain_inbox(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._cond:
            items, self._inbox = self._inbox, []
        for kind, arg in items:
            if kind == "request":
                self._request(str(arg))
            elif kind == "control":
                self._ctl_send(arg)
            else:
                raise RuntimeError(f"Unexpected inbox item: {kind}")

    def _request(self, reason: str) -> None:
        if self.session is None:
            log.warning("checkpoint request (%s) before libxl ever connected: output stays "
                        "held", reason)
            return
        self._apply(self.session.request(reason, self.clock()))

    def _apply(self, commands: list[Command]) -> None:
        for c in commands:
            if isinstance(c, Send):
                self._libxl_send(c.payload)
            elif isinstance(c, CheckpointDone):
                st = self.session.stats if self.session is not None else None
                log.info("COLO_CHECKPOINT from libxl (%s)",
                         f"after DO_CHECKPOINT, {st.last_latency:.3f} s"
                         if c.requested and st is not None and st.last_latency is not None
                         else "libxl's own")
                # The proxy first: its held output waits on this message. Without one
                # configured (hooks steer the output instead) there is none to tell; the
                # nested Xen lab's primary logged this error at every checkpoint.
                if (self.control_path is not None
                        and not self._ctl_send({"type": "checkpoint_done"})):
                    self.control_failures += 1
                    log.error("COLO_CHECKPOINT from libxl but no proxy connected: output "
                              "stays held until the next checkpoint")
                with self._cond:
                    self.checkpoints += 1
                    self._cond.notify_all()
                if self.on_checkpoint is not None:
                    self.on_checkpoint(c)
            elif isinstance(c, Log):
                log.log(c.level, "%s", c.text)
            elif isinstance(c, Close):
                log.error("closing the libxl connection: %s", c.reason)
                self._drop_libxl()
            else:
                raise RuntimeError(f"Unexpected command: {c}")
        with self._cond:
            self._cond.notify_all()

    def _libxl_send(self, payload: bytes) -> None:
        conn = self._libxl
        if conn is None:
            return
        try:
            # A few bytes on a connection libxl reads promptly: a short blocking send never
            # splits a frame and cannot hold the loop for long.
            conn.settimeout(1.0)
            conn.sendall(encode(payload))
            log.debug("to libxl: %r", payload)
        except OSError as exc:
            log.error("sending to libxl failed: %s", exc)
            self._drop_libxl()
            return
        finally:
            if self._libxl is conn:
                conn.setblocking(False)

    # The proxy's control socket ----------------------------------------------------------
    def _ensure_control(self) -> None:
        if self._ctl is not None or self.control_path is None:
            return
        now = self.clock()
        if now < self._ctl_next_try:
            return
        self._ctl_next_try = now + self.reconnect
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.control_path)
        except OSError as exc:
            s.close()
            log.debug("proxy control socket %s: %s", self.control_path, exc)
            return
        s.setblocking(False)
        self._ctl = s
        self._ctl_decoder = LineDecoder()
        self._sel.register(s, selectors.EVENT_READ, "ctl")
        self._ctl_send({"type": "hello", "who": "colo-libxl-bridge"})
        with self._cond:
            self._cond.notify_all()

    def _ctl_send(self, msg: dict[str, Any]) -> bool:
        s = self._ctl
        if s is None:
            return False
        try:
            s.settimeout(1.0)
            s.sendall(encode_json(msg))
            return True
        except OSError:
            self._drop_ctl()
            return False
        finally:
            if self._ctl is s:
                s.setblocking(False)

    def _drop_ctl(self) -> None:
        s, self._ctl = self._ctl, None
        if s is not None:
            self._sel.unregister(s)
            s.close()

    def _ctl_readable(self) -> None:
        assert self._ctl is not None
        data = _recv(self._ctl)
        if data is None:
            return
        if not data:
            log.warning("the proxy closed its control connection; reconnecting")
            self._drop_ctl()
            return
        for msg in self._ctl_decoder.feed(data):
            if isinstance(msg, ProtocolError):
                log.warning("bad line from the proxy: %s", msg)
                continue
            if msg.get("type") == "checkpoint_request":
                self._request(str(msg.get("reason", "unknown")))
            elif msg.get("type") == "error":
                log.warning("the proxy refused a message: %s", msg.get("error"))
            # "ok" and "hello" replies need nothing.


def _proc_addr(addr: tuple[str, int]) -> str:
    """An IPv4 address and port as /proc/net/tcp prints them (the address as a host-order
    integer of its network-order bytes, the port as a number)."""
    host, port = addr[:2]
    return f"{int.from_bytes(socket.inet_aton(host), sys.byteorder):08X}:{port:04X}"


def _local_peer_uid(conn: socket.socket) -> int | None:
    """The owner of the socket at the other end of `conn`, when it is on this host and still
    connected: its /proc/net/tcp entry (local = our peer, remote = us, ESTABLISHED). None
    otherwise: a socket in TIME_WAIT is listed as uid 0 whoever owned it, so only an
    established one counts."""
    try:
        theirs, ours = _proc_addr(conn.getpeername()), _proc_addr(conn.getsockname())
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == theirs and fields[2] == ours and fields[3] == "01":
                    return int(fields[7])
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return None


def _recv(sock: socket.socket) -> bytes | None:
    """What a non-blocking socket has: None if nothing yet, b"" if the peer has gone."""
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""
