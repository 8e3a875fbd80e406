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
`TRANSITIONS`, an illegal one raises and changes nothing). It imports no socket, thread or
clock: `bridge.LibxlBridge` is its socket adapter.
"""

from __future__ import annotations

import enum
import logging
import struct
from dataclasses import dataclass, field
from typing import Any

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
