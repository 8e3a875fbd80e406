"""libxl's userspace-proxy protocol: codec, session playbooks, and the proxy core (the same
`PrimaryProxy` and comparator as for QEMU) against the libxl simulation."""

from __future__ import annotations

import logging
import struct
from typing import Any

import pytest

from colo_orch.backends.xen.libxl.session import (
    COLO_CHECKPOINT,
    DO_CHECKPOINT,
    INIT,
    INIT_REPLY,
    CheckpointDone,
    Close,
    Ev,
    FrameDecoder,
    FrameError,
    IllegalTransition,
    LibxlSession,
    Log,
    Phase,
    Send,
    encode,
)
from colo_proxy.compare import CompareConfig
from colo_proxy.service.primary import PrimaryProxy
from colo_proxy.service.settings import ProxySettings
from tests.support.fakes import FakeQueue, FakeSource
from tests.support.libxl_sim import LibxlLoopModel, SimulationError, frame, libxl_strcmp_view
from tests.support.packets import ACK, CLIENT_ISN, PSH, PVM_ISN, SVM_ISN, SYN, tcp


def sends(cmds: list[Any]) -> list[bytes]:
    return [c.payload for c in cmds if isinstance(c, Send)]


def ready_session() -> LibxlSession:
    s = LibxlSession()
    s.received(frame(INIT), 0.0)
    return s


# Codec ----------------------------------------------------------------------------------
def test_frames_are_big_endian_length_then_payload() -> None:
    assert encode(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode(DO_CHECKPOINT) == struct.pack("!I", 14) + b"DO_CHECKPOINT\x00"


def test_decoder_waits_for_whole_frames_and_splits_joined_ones() -> None:
    d = FrameDecoder()
    wire = frame(INIT) + frame(COLO_CHECKPOINT)
    assert d.feed(wire[:3]) == []
    assert d.feed(wire[3:10]) == []
    assert d.feed(wire[10:]) == [INIT, COLO_CHECKPOINT]
    assert d.buf == bytearray()


def test_oversized_frames_are_refused_both_ways() -> None:
    with pytest.raises(FrameError):
        encode(bytes(1025))
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack("!I", 1025))


def test_what_we_send_survives_libxls_strcmp_on_an_uninitialised_buffer() -> None:
    assert libxl_strcmp_view(DO_CHECKPOINT) == b"DO_CHECKPOINT"
    with pytest.raises(SimulationError):
        libxl_strcmp_view(b"DO_CHECKPOINT")  # what QEMU's colo-compare sends


# Session playbooks ----------------------------------------------------------------------
def test_init_is_answered_at_once() -> None:
    s = LibxlSession()
    cmds = s.received(frame(INIT), 0.0)
    assert sends(cmds) == [INIT_REPLY]
    assert INIT_REPLY.endswith(b"\0")
    assert s.phase is Phase.READY


def test_divergence_sends_do_checkpoint_at_once_and_coalesces_until_colo_checkpoint() -> None:
    s = ready_session()
    assert sends(s.request("payload", 1.0)) == [DO_CHECKPOINT]
    assert s.phase is Phase.REQUESTED
    assert s.request("timeout", 1.1) == []  # libxl would read it after this checkpoint
    assert s.stats.coalesced == 1
    assert s.received(frame(COLO_CHECKPOINT), 1.25) == [CheckpointDone(requested=True)]
    assert Phase(s.phase) is Phase.READY
    assert s.stats.last_latency == pytest.approx(0.25)
    assert sends(s.request("payload", 2.0)) == [DO_CHECKPOINT]  # a new checkpoint, a new ask


def test_libxls_own_periodic_checkpoint_also_releases() -> None:
    s = ready_session()
    assert s.received(frame(COLO_CHECKPOINT), 5.0) == [CheckpointDone(requested=False)]
    assert s.stats.periodic == 1 and s.stats.checkpoints == 1


def test_a_request_before_init_waits_for_init() -> None:
    s = LibxlSession()
    assert sends(s.request("payload", 0.0)) == []
    assert sends(s.received(frame(INIT), 0.1)) == [INIT_REPLY, DO_CHECKPOINT]
    assert s.phase is Phase.REQUESTED


def test_colo_checkpoint_before_init_closes() -> None:
    s = LibxlSession()
    cmds = s.received(frame(COLO_CHECKPOINT), 0.0)
    assert any(isinstance(c, Close) for c in cmds)
    assert s.phase is Phase.CLOSED


def test_unknown_messages_are_logged_not_fatal() -> None:
    s = ready_session()
    cmds = s.received(frame(b"HELLO\0"), 1.0)
    assert [type(c) for c in cmds] == [Log] and s.phase is Phase.READY


def test_after_libxl_disconnects_requests_send_nothing() -> None:
    s = ready_session()
    s.request("payload", 1.0)
    cmds = s.closed(1.1)
    assert [c.level for c in cmds if isinstance(c, Log)] == [logging.WARNING]
    assert s.phase is Phase.CLOSED
    assert sends(s.request("payload", 1.2)) == []
    assert s.received(frame(COLO_CHECKPOINT), 1.3) == []


def test_an_illegal_transition_raises_and_changes_nothing() -> None:
    s = LibxlSession()
    with pytest.raises(IllegalTransition):
        s._fire(Ev.COLO_CHECKPOINT)
    assert s.phase is Phase.AWAIT_INIT


# The proxy core against the simulated libxl, clock injected ---------------------------
CACK = CLIENT_ISN + 1  # what the client has acknowledged: its SYN


class Wiring:
    """PrimaryProxy <-> LibxlSession <-> LibxlLoopModel, in memory, on one fake clock.

    The same glue as LibxlBridge: the proxy's checkpoint_request becomes
    `session.request`, the session's CheckpointDone becomes the proxy's checkpoint_done.
    """

    def __init__(self, compare_timeout: float = 60.0) -> None:
        self.now = 0.0
        self.q, self.svm = FakeQueue(), FakeSource()
        settings = ProxySettings(compare=CompareConfig(compare_timeout=compare_timeout))
        self.proxy = PrimaryProxy(settings, self.q, self.svm, notify=self._notify,
                                  clock=lambda: self.now)
        self.session = LibxlSession()
        self.libxl = LibxlLoopModel()
        self.to_libxl: list[bytes] = []
        self.done: list[CheckpointDone] = []
        self._to_session(self.libxl.start(self.now))
        self.libxl.init_reply(self.to_libxl.pop(0), self.now)
        self._to_session(self.libxl.svm_ready(self.now))  # initial sync done

    def _notify(self, msg: dict[str, Any]) -> bool:
        assert msg["type"] == "checkpoint_request"
        self._apply(self.session.request(msg["reason"], self.now))
        return True

    def _to_session(self, payload: bytes) -> None:
        self._apply(self.session.received(frame(payload), self.now))

    def _apply(self, cmds: list[Any]) -> None:
        for c in cmds:
            if isinstance(c, Send):
                self.to_libxl.append(c.payload)
            elif isinstance(c, CheckpointDone):
                self.done.append(c)
                self.proxy.on_control({"type": "checkpoint_done"})

    def libxl_reads(self) -> None:
        """libxl's wait child reads one message if there is one."""
        if self.to_libxl:
            self.libxl.message(self.to_libxl.pop(0), self.now)

    def libxl_finishes_checkpoint(self) -> None:
        self._to_session(self.libxl.svm_ready(self.now))

    def pvm(self, pid: int, off: int, data: bytes) -> None:
        self.q.push(pid, tcp(PVM_ISN + 1 + off, CACK, ACK | PSH, data))
        self.proxy.on_pvm_readable()

    def svm_(self, off: int, data: bytes) -> None:
        self.svm.push(tcp(SVM_ISN + 1 + off, CACK, ACK | PSH, data))
        self.proxy.on_svm_readable()

    def handshake(self) -> None:
        self.q.push(1, tcp(PVM_ISN, CACK, SYN | ACK))
        self.proxy.on_pvm_readable()
        self.svm.push(tcp(SVM_ISN, CACK, SYN | ACK))
        self.proxy.on_svm_readable()
        assert self.q.accepted == [1]


def test_initial_sync_counts_as_a_checkpoint_for_the_proxy() -> None:
    w = Wiring()
    assert w.done == [CheckpointDone(requested=False)]
    assert w.proxy.checkpoints == 1


def test_divergence_reaches_libxl_at_once_and_colo_checkpoint_releases() -> None:
    w = Wiring()
    w.handshake()
    w.now = 10.0
    w.pvm(2, 0, b"hello")
    w.svm_(0, b"hellx")  # diverges at offset 4
    assert w.to_libxl == [DO_CHECKPOINT]  # sent in the same event, no timer in between
    assert w.q.accepted == [1]  # the divergent packet is held
    w.libxl_reads()
    assert w.libxl.checkpoints[-1].why == "do_checkpoint"
    assert w.libxl.checkpoints[-1].at == 10.0
    w.now = 10.2
    w.libxl_finishes_checkpoint()  # COLO_CHECKPOINT before the PVM resumes
    assert w.q.accepted == [1, 2]  # flushed on COLO_CHECKPOINT
    assert w.done[-1] == CheckpointDone(requested=True)
    assert w.session.stats.last_latency == pytest.approx(0.2)


def test_periodic_path_every_5_s_flushes_without_a_request() -> None:
    w = Wiring()
    w.handshake()
    w.pvm(2, 0, b"waiting for the SVM")  # no twin yet; compare_timeout is 60 s
    w.now = 4.999
    assert not w.libxl.tick(w.now)
    assert w.q.accepted == [1]
    w.now = 5.0
    assert w.libxl.tick(w.now)
    assert w.libxl.checkpoints[-1].why == "timeout"
    w.libxl_finishes_checkpoint()
    assert w.q.accepted == [1, 2]
    assert w.session.stats.periodic == 2  # the initial sync and this one
    assert w.to_libxl == []  # nothing asked: libxl's own timer did it
    w.now = 9.999
    assert not w.libxl.tick(w.now)  # the next wait runs 5 s from the last checkpoint
    w.now = 10.0
    assert w.libxl.tick(w.now)


def test_requests_during_a_checkpoint_are_coalesced() -> None:
    w = Wiring()
    w.handshake()
    w.pvm(2, 0, b"aaaa")
    w.svm_(0, b"bbbb")
    w.pvm(3, 0, b"cc")  # a second flow would diverge too; the same flow here: held
    assert w.to_libxl == [DO_CHECKPOINT]
    w.session.request("timeout", w.now)
    assert w.to_libxl == [DO_CHECKPOINT]
    w.libxl_reads()
    w.libxl_finishes_checkpoint()
    assert w.libxl.phase == "waiting" and w.to_libxl == []  # no stale DO_CHECKPOINT queued
    assert len(w.libxl.checkpoints) == 1


def test_libxl_disconnecting_leaves_output_held() -> None:
    w = Wiring()
    w.handshake()
    w.session.closed(w.now)
    w.pvm(2, 0, b"hello")
    w.svm_(0, b"jello")
    assert w.to_libxl == []
    assert w.q.accepted == [1]  # nothing goes out uncompared: failover decides
