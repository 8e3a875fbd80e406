"""libxl's userspace-proxy checkpoint protocol: our proxy as the checkpoint oracle of
`xl remus -c -p` (COLO on Xen).

Theory of operation
-------------------
With `xl remus -c -p` ("userspace COLO proxy"), libxl on the primary host does not compare
packets itself: it asks a proxy when to checkpoint. Facts from xen.git
(tools/libs/light/libxl_colo_proxy.c, libxl_colo_save.c, libxl_colo.h; Xen 4.7 to 4.20):

- libxl connects over TCP to `colo_checkpoint_host:colo_checkpoint_port`, the two vif keys
  of the domain's *first* NIC (libxl_colo_save.c reads `nics[0]` only). IPv4 only: it uses
  `inet_addr` on the host string.
- Every message both ways is a 4-byte big-endian length, then that many bytes.
- Setup: libxl sends `COLO_USERSPACE_PROXY_INIT` (strlen: no NUL) and waits up to 500 ms
  (`COLO_DEFAULT_WAIT_TIME`) for any reply; no reply or an error fails `xl remus`. QEMU's
  colo-compare answers `COLO_COMPARE_GET_XEN_INIT`; libxl never looks at the content.
- Checkpoint loop: after each checkpoint libxl waits up to 5 s
  (`COLO_PROXY_CHECKPOINT_TIMEOUT`) for one message. `DO_CHECKPOINT`, a timeout, any other
  message and even end-of-file all lead to the next checkpoint (both return values of
  `colo_proxy_checkpoint` end in `_exit(0)` of its wait child). So libxl checkpoints at least
  every 5 s, and at once after our `DO_CHECKPOINT`; a proxy that disconnects makes libxl
  checkpoint back to back (recv returns 0 at once).
- libxl reads a message with one `recv` into an uninitialised 1024-byte stack buffer and
  compares it with `strcmp`: we send the terminating NUL within the length, and never more
  than 1024 bytes.
- Before the primary resumes after each checkpoint (when the secondary has reported
  CHECKPOINT_SVM_READY, also after the first, initial one) libxl sends `COLO_CHECKPOINT`
  (`colo_proxy_preresume`). The secondary then holds the state that produced everything the
  primary sent before: held output may go (the comparator's `checkpoint_done`).
- libxl reads one message per wait. A `DO_CHECKPOINT` sent while a checkpoint is under way
  would be read by the *next* wait and cause a second, useless checkpoint, so we send at most
  one per checkpoint and coalesce further requests until `COLO_CHECKPOINT`.

`LibxlSession` is the sans-IO core (bytes and requests in, commands out; transitions in
`TRANSITIONS`, an illegal one raises and changes nothing). `LibxlBridge` is the socket
adapter: it serves libxl on TCP and talks to the proxy service over its ordinary JSON control
socket (colo_proxy/wire/control.py) as one more client, so the same `PrimaryProxy` and comparator
serve the QEMU and the Xen backend unchanged: the comparator's `checkpoint_request` becomes
`DO_CHECKPOINT`, libxl's `COLO_CHECKPOINT` becomes `checkpoint_done`.
"""

from __future__ import annotations

import argparse
import enum
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from colo_proxy.wire.control import LineDecoder, ProtocolError
from colo_proxy.wire.control import encode as encode_json

log = logging.getLogger("colo-proxy.libxl")

# The wire vocabulary. What libxl sends has no NUL (it passes strlen); what we send has one.
INIT = b"COLO_USERSPACE_PROXY_INIT"
COLO_CHECKPOINT = b"COLO_CHECKPOINT"
INIT_REPLY = b"COLO_COMPARE_GET_XEN_INIT\0"
DO_CHECKPOINT = b"DO_CHECKPOINT\0"
MAX_FRAME = 1024  # libxl's receive buffer (recvbuff[1024] in libxl_colo_proxy.c)
LIBXL_CHECKPOINT_TIMEOUT = 5.0  # COLO_PROXY_CHECKPOINT_TIMEOUT, libxl_colo.h
LIBXL_INIT_TIMEOUT = 0.5  # COLO_DEFAULT_WAIT_TIME, libxl_colo_proxy.c
_LEN = struct.Struct("!I")


class FrameError(ValueError):
    pass


def encode(payload: bytes) -> bytes:
    """One message: 4-byte big-endian length, then the payload."""
    if len(payload) > MAX_FRAME:
        raise FrameError(f"a frame of {len(payload)} bytes overflows libxl's {MAX_FRAME}-byte buffer")
    return _LEN.pack(len(payload)) + payload


@dataclass
class FrameDecoder:
    """Bytes in, whole payloads out; a partial frame waits for more (not an error)."""

    buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out: list[bytes] = []
        while len(self.buf) >= 4:
            (n,) = _LEN.unpack_from(self.buf)
            if n > MAX_FRAME:
                raise FrameError(f"frame length {n} > {MAX_FRAME}: not libxl's protocol")
            if len(self.buf) < 4 + n:
                break
            out.append(bytes(self.buf[4:4 + n]))
            del self.buf[:4 + n]
        return out


def text_of(payload: bytes) -> bytes:
    """The message as C string functions see it: up to the first NUL."""
    return payload.split(b"\0", 1)[0]


# Commands ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    """Send this payload to libxl (the adapter frames it)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class CheckpointDone:
    """libxl says COLO_CHECKPOINT: the secondary holds the primary's state; release output."""

    requested: bool  # True when it answers our DO_CHECKPOINT, False for libxl's own timer


@dataclass(frozen=True, slots=True)
class Log:
    level: int
    text: str


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


Command = Send | CheckpointDone | Log | Close


class Phase(enum.IntEnum):
    AWAIT_INIT = 0  # connected, libxl has not said INIT yet
    READY = 1  # in libxl's checkpoint loop (or its initial sync); no DO_CHECKPOINT outstanding
    REQUESTED = 2  # DO_CHECKPOINT sent; waiting for libxl's COLO_CHECKPOINT
    CLOSED = 3


class Ev(enum.Enum):
    INIT = "init"
    COLO_CHECKPOINT = "colo_checkpoint"
    REQUEST = "request"  # the comparator wants a checkpoint
    CLOSED = "closed"


# The whole state machine. Missing pairs are protocol errors.
TRANSITIONS: dict[tuple[Phase, Ev], Phase] = {
    (Phase.AWAIT_INIT, Ev.INIT): Phase.READY,
    (Phase.AWAIT_INIT, Ev.REQUEST): Phase.AWAIT_INIT,  # held until INIT (see request())
    (Phase.AWAIT_INIT, Ev.CLOSED): Phase.CLOSED,
    (Phase.READY, Ev.REQUEST): Phase.REQUESTED,
    (Phase.READY, Ev.COLO_CHECKPOINT): Phase.READY,  # libxl's own 5 s timer (or the first sync)
    (Phase.READY, Ev.CLOSED): Phase.CLOSED,
    (Phase.REQUESTED, Ev.REQUEST): Phase.REQUESTED,  # coalesced: one DO_CHECKPOINT per checkpoint
    (Phase.REQUESTED, Ev.COLO_CHECKPOINT): Phase.READY,
    (Phase.REQUESTED, Ev.CLOSED): Phase.CLOSED,
    (Phase.CLOSED, Ev.REQUEST): Phase.CLOSED,  # nobody to ask: the output stays held
    (Phase.CLOSED, Ev.CLOSED): Phase.CLOSED,
}


class IllegalTransition(RuntimeError):
    pass


@dataclass
class SessionStats:
    requests: int = 0  # checkpoint requests from the comparator
    do_checkpoints: int = 0  # DO_CHECKPOINT messages sent
    coalesced: int = 0  # requests covered by an outstanding DO_CHECKPOINT
    checkpoints: int = 0  # COLO_CHECKPOINT received
    periodic: int = 0  # ... of which libxl took on its own
    unknown: int = 0  # messages we do not know (libxl would not send them)
    last_checkpoint_at: float | None = None
    requested_at: float | None = None  # when the outstanding DO_CHECKPOINT went out
    last_latency: float | None = None  # DO_CHECKPOINT to COLO_CHECKPOINT, seconds

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LibxlSession:
    """One libxl connection, sans-IO: `received`, `request`, `closed` return commands."""

    def __init__(self) -> None:
        self.phase = Phase.AWAIT_INIT
        self.decoder = FrameDecoder()
        self.stats = SessionStats()
        self._pending: str | None = None  # a request that arrived before INIT

    @property
    def closed_now(self) -> bool:
        return self.phase is Phase.CLOSED

    def _fire(self, ev: Ev) -> Phase:
        nxt = TRANSITIONS.get((self.phase, ev))
        if nxt is None:
            raise IllegalTransition(f"{ev.value} in {self.phase.name}")
        self.phase = nxt
        return nxt

    def received(self, data: bytes, now: float) -> list[Command]:
        if self.phase is Phase.CLOSED:
            return []
        try:
            frames = self.decoder.feed(data)
        except FrameError as exc:
            return [*self.closed(now), Close(str(exc))]
        out: list[Command] = []
        for payload in frames:
            out += self._message(payload, now)
            if self.closed_now:  # a protocol error ended the session: ignore the rest
                break
        return out

    def _message(self, payload: bytes, now: float) -> list[Command]:
        msg = text_of(payload)
        if msg == INIT:
            before = self.phase
            if before is not Phase.AWAIT_INIT:
                # Not libxl's behaviour: it says INIT once per connection. Answer anyway.
                return [Send(INIT_REPLY), Log(logging.WARNING, "libxl said INIT again")]
            self._fire(Ev.INIT)
            out: list[Command] = [Send(INIT_REPLY),
                                  Log(logging.INFO, "libxl connected (userspace COLO proxy)")]
            if self._pending is not None:
                reason, self._pending = self._pending, None
                out += self._send_request(reason, now)
            return out
        if msg == COLO_CHECKPOINT:
            if self.phase is Phase.AWAIT_INIT:
                return [*self.closed(now), Close("COLO_CHECKPOINT before INIT")]
            requested = self.phase is Phase.REQUESTED
            self._fire(Ev.COLO_CHECKPOINT)
            st = self.stats
            st.checkpoints += 1
            if requested and st.requested_at is not None:
                st.last_latency = now - st.requested_at
            else:
                st.periodic += 1
            st.requested_at = None
            st.last_checkpoint_at = now
            return [CheckpointDone(requested)]
        self.stats.unknown += 1
        return [Log(logging.WARNING, f"unknown message from libxl: {payload[:64]!r}")]

    def request(self, reason: str, now: float) -> list[Command]:
        """The comparator asks for a checkpoint (a RequestCheckpoint command)."""
        self.stats.requests += 1
        phase = self.phase
        if phase is Phase.READY:
            return self._send_request(reason, now)
        self._fire(Ev.REQUEST)
        if phase is Phase.AWAIT_INIT:
            self._pending = self._pending or reason
            return [Log(logging.INFO, f"checkpoint request ({reason}) held until libxl's INIT")]
        if phase is Phase.REQUESTED:
            self.stats.coalesced += 1
            return []
        return [Log(logging.WARNING, f"checkpoint request ({reason}) but libxl is not "
                                     "connected: output stays held")]

    def _send_request(self, reason: str, now: float) -> list[Command]:
        self._fire(Ev.REQUEST)
        self.stats.do_checkpoints += 1
        self.stats.requested_at = now
        return [Send(DO_CHECKPOINT), Log(logging.INFO, f"DO_CHECKPOINT sent ({reason})")]

    def closed(self, now: float) -> list[Command]:
        if self.phase is Phase.CLOSED:
            return []
        was = self.phase
        self._fire(Ev.CLOSED)
        self._pending = None
        return [Log(logging.WARNING, f"libxl disconnected in {was.name}: xl remus ended "
                                     "(failover, error or shutdown)")]


# The socket adapter -------------------------------------------------------------------
class LibxlBridge:
    """Serve libxl on TCP; speak the proxy service's JSON control protocol on its unix socket.

    One thread runs a selector loop over: the TCP listener, the libxl connection (the newest
    wins: libxl reconnects when `xl remus` restarts), the control connection (reconnected
    every `reconnect` seconds: the proxy may restart) and a wake-up socketpair for requests
    from other threads (`request_checkpoint`).
    """

    def __init__(self, listen: tuple[str, int], control_path: str | None, *,
                 clock: Callable[[], float] = time.monotonic, reconnect: float = 0.5,
                 on_checkpoint: Callable[[CheckpointDone], None] | None = None) -> None:
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
        return {"listen": f"{self.address[0]}:{self.address[1]}",
                "libxl_connected": self.connected, "proxy_connected": self.proxy_connected,
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
        if self._libxl is not None:
            log.warning("libxl connected again from %s: dropping the old connection", peer)
            self._drop_libxl()
        conn.setblocking(False)
        self._libxl = conn
        with self._cond:
            self.session = LibxlSession()
            self.sessions += 1
            self._cond.notify_all()
        self._sel.register(conn, selectors.EVENT_READ, "libxl")

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
                # The proxy first: its held output waits on this message.
                if not self._ctl_send({"type": "checkpoint_done"}):
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


def _recv(sock: socket.socket) -> bytes | None:
    """What a non-blocking socket has: None if nothing yet, b"" if the peer has gone."""
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m colo_orch.backends.xen.libxl",
        description="Serve libxl's userspace COLO proxy protocol (xl remus -c -p) for a "
                    "running colo-proxy primary.")
    p.add_argument("--listen", default="0.0.0.0:9911",
                   help="ADDR:PORT = the first vif's colo_checkpoint_host:colo_checkpoint_port")
    p.add_argument("--control", required=True, help="the colo-proxy control socket")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host, _, port = a.listen.rpartition(":")
    bridge = LibxlBridge((host, int(port)), a.control).start()
    log.info("serving libxl on %s:%d for the proxy at %s", *bridge.address, a.control)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        bridge.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
