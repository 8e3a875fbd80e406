"""A simulation of libxl's userspace-proxy side of COLO (the primary's `xl remus -c -p`), and
of the back channel that the secondary's libxl writes (`xl migrate-receive --colo`).

Not libxl: a model built from the behaviour documented in xen.git
tools/libs/light/libxl_colo_proxy.c, libxl_colo_save.c and libxl_colo.h (see the module
docstring of colo_orch/backends/xen/libxl/session.py for the list of facts), so that our proxy can be
tested where no Xen hypervisor runs. What it reproduces on purpose:

- INIT is sent without a NUL; any reply within 500 ms is accepted, none fails the setup.
- each wait reads one message as libxl does: a 4-byte length, then ONE recv of that many
  bytes into a 1024-byte buffer that libxl never initialises, compared with strcmp. The model
  refuses (SimulationError) a message without a NUL, since real libxl would read garbage.
- a wait ends on DO_CHECKPOINT, on any other message, on the timeout (5 s by default), or
  on end-of-file; all of them start a checkpoint.
- after each checkpoint, before the primary resumes, COLO_CHECKPOINT goes to the proxy.

`LibxlLoopModel` is sans-IO with the clock passed in (the periodic path is tested without
waiting 5 s); `SimulatedLibxl` drives it over a real TCP socket in a thread, the way libxl's
forked wait child reads its socket with SO_RCVTIMEO.

`RestoreBackChannel` is the secondary: not libxl either, but the bytes that xen.git's
tools/xl/xl_migrate.c and libxl_colo_restore.c write on `xl migrate-receive`'s stdout (see
the docstring of colo_orch/backends/xen/libxl/backchannel.py), encoded here from those
sources and not with the product's code: xl's banner, then per checkpoint the
checkpoint-state records SVM_SUSPENDED, SVM_READY and, once the SVM runs again, SVM_RESUMED.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field

INIT = b"COLO_USERSPACE_PROXY_INIT"
COLO_CHECKPOINT = b"COLO_CHECKPOINT"
RECV_BUFFER = 1024


class SimulationError(AssertionError):
    """The proxy did something real libxl would mishandle."""


def libxl_strcmp_view(payload: bytes) -> bytes:
    """What strcmp sees in libxl's uninitialised buffer after one recv of `payload`."""
    if len(payload) > RECV_BUFFER:
        raise SimulationError(f"{len(payload)} bytes overflow libxl's {RECV_BUFFER}-byte buffer")
    if b"\0" not in payload:
        raise SimulationError(f"{payload!r} has no NUL: libxl's strcmp would run into "
                              "uninitialised memory")
    return payload.split(b"\0", 1)[0]


@dataclass
class Checkpoint:
    at: float
    why: str  # "do_checkpoint", "timeout", "eof", "other"


@dataclass
class LibxlLoopModel:
    """libxl's checkpoint loop with the clock injected.

    Phases: "init" (INIT sent, waiting for any reply) -> "syncing" (initial migration) ->
    "waiting" (until deadline) -> "checkpointing" -> (svm_ready) -> "waiting" ...
    """

    timeout: float = 5.0
    init_timeout: float = 0.5
    phase: str = "new"
    deadline: float = 0.0
    checkpoints: list[Checkpoint] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)

    def start(self, now: float) -> bytes:
        self.phase, self.deadline = "init", now + self.init_timeout
        return INIT

    def init_reply(self, payload: bytes | None, now: float) -> None:
        if payload is None or now > self.deadline:
            raise SimulationError("no reply to COLO_USERSPACE_PROXY_INIT within 500 ms: "
                                  "xl remus would fail its setup")
        self.phase = "syncing"  # libxl ignores the content of the reply

    def svm_ready(self, now: float) -> bytes:
        """The secondary reported CHECKPOINT_SVM_READY: tell the proxy, resume, wait again."""
        assert self.phase in ("syncing", "checkpointing"), self.phase
        self.phase, self.deadline = "waiting", now + self.timeout
        self.sent.append(COLO_CHECKPOINT)
        return COLO_CHECKPOINT

    def message(self, payload: bytes, now: float) -> None:
        assert self.phase == "waiting", self.phase
        text = libxl_strcmp_view(payload)
        self._checkpoint(now, "do_checkpoint" if text == b"DO_CHECKPOINT" else "other")

    def eof(self, now: float) -> None:
        if self.phase == "waiting":
            self._checkpoint(now, "eof")

    def tick(self, now: float) -> bool:
        """True when the wait timed out and a checkpoint began."""
        if self.phase == "waiting" and now >= self.deadline:
            self._checkpoint(now, "timeout")
            return True
        return False

    def _checkpoint(self, now: float, why: str) -> None:
        self.phase = "checkpointing"
        self.checkpoints.append(Checkpoint(now, why))


def frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


class SimulatedLibxl:
    """The model over TCP: connect, INIT, then `checkpoints` rounds of wait/checkpoint.

    `stop()` closes the socket: libxl disconnecting (xl remus ended).
    """

    def __init__(self, address: tuple[str, int], *, timeout: float = 5.0,
                 rounds: int = 1000) -> None:
        self.address = address
        self.model = LibxlLoopModel(timeout=timeout)
        self.rounds = rounds
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self.sock: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, name="libxl-sim", daemon=True)

    def start(self) -> SimulatedLibxl:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        s = self.sock
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(timeout=5)
        if s is not None:
            s.close()

    def wait_for(self, cond: object, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(cond, timeout)  # type: ignore[arg-type]

    def _recv_one(self, wait: float) -> bytes | None:
        """libxl's colo_userspace_proxy_recv: length, then one recv; None on timeout."""
        assert self.sock is not None
        self.sock.settimeout(wait)
        try:
            hdr = self.sock.recv(4, socket.MSG_WAITALL)
        except TimeoutError:
            return None
        if len(hdr) < 4:
            raise EOFError
        (n,) = struct.unpack("!I", hdr)
        return self.sock.recv(n) if n else b""

    def _notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _run(self) -> None:
        import time

        m = self.model
        try:
            self.sock = socket.create_connection(self.address, timeout=2)
            self.sock.sendall(frame(m.start(time.monotonic())))
            m.init_reply(self._recv_one(m.init_timeout), time.monotonic())
            self.sock.sendall(frame(m.svm_ready(time.monotonic())))  # the initial sync is done
            self._notify()
            while len(m.checkpoints) < self.rounds and not self._stop.is_set():
                left = m.deadline - time.monotonic()
                try:
                    msg = self._recv_one(max(left, 0.001))
                except (EOFError, OSError):
                    m.eof(time.monotonic())
                    self._notify()
                    return
                if msg is None:
                    m.tick(max(time.monotonic(), m.deadline))
                else:
                    m.message(msg, time.monotonic())
                self._notify()
                # The checkpoint itself (suspend, copy, SVM ready) is instantaneous here.
                self.sock.sendall(frame(m.svm_ready(time.monotonic())))
                self._notify()
        except BaseException as exc:  # reported to the test through .error
            if not self._stop.is_set():
                self.error = exc
            self._notify()


def forge(address: tuple[str, int], *, source: str = "127.0.0.1") -> bytes:
    """Not libxl but someone on its port: INIT and COLO_CHECKPOINT at once (what would
    release held output), then the first bytes back; b"" when the bridge closed the
    connection unanswered."""
    with socket.create_connection(address, timeout=10, source_address=(source, 0)) as s:
        try:
            s.sendall(frame(INIT) + frame(COLO_CHECKPOINT))
            return s.recv(4096)
        except (BrokenPipeError, ConnectionResetError):
            return b""  # closed with our bytes unread: a reset, and nothing answered


# The secondary's back channel --------------------------------------------------------
RECEIVER_BANNER = b"xl migration receiver ready, send binary domain data.\n"  # xl.h
SVM_SUSPENDED, SVM_READY, SVM_RESUMED = 1, 2, 3  # libxl_sr_stream_format.h


def checkpoint_state_record(state: int) -> bytes:
    """libxl__stream_write_checkpoint_state: {type 5, length 4} in host order, the id, and
    zero padding to 8 bytes."""
    return struct.pack("=III", 5, 4, state) + bytes(4)


def dirty_pfn_list_record(pfns: list[int]) -> bytes:
    """libxc's send_checkpoint_dirty_pfn_list (xg_sr_restore.c), written on the same
    channel after the SVM is suspended: {type 0xf, length 8 * n}, then the n pfns as
    uint64, host order, no padding. Run G on Xen 4.17 showed one with n = 0."""
    return struct.pack(f"=II{len(pfns)}Q", 0xF, 8 * len(pfns), *pfns)


@dataclass
class RestoreBackChannel:
    """What the secondary writes to the primary, step by step of libxl_colo_restore.c."""

    resumed: int = 0

    def start(self) -> bytes:
        """xl's migrate_receive, before the stream is read."""
        return RECEIVER_BANNER

    def initial_sync(self) -> bytes:
        """The first resume: devices set up, SVM_READY, the SVM unpaused, SVM_RESUMED."""
        assert self.resumed == 0
        self.resumed += 1
        return checkpoint_state_record(SVM_READY) + checkpoint_state_record(SVM_RESUMED)

    def checkpoint(self, dirty: tuple[int, ...] = (0x9F, 0x10000)) -> bytes:
        """Suspended and reported; libxc's list of the pages the SVM dirtied; the state
        loaded, SVM_READY; resumed, SVM_RESUMED."""
        assert self.resumed > 0, "a checkpoint before the initial sync"
        self.resumed += 1
        return (checkpoint_state_record(SVM_SUSPENDED) + dirty_pfn_list_record(list(dirty))
                + checkpoint_state_record(SVM_READY) + checkpoint_state_record(SVM_RESUMED))
