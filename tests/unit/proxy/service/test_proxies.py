"""PrimaryProxy interprets the comparator's commands: fakes for the queue and the SVM source."""

from __future__ import annotations

import os
from typing import Any

import pytest

from colo_proxy.compare import CompareConfig
from colo_proxy.kernel.packet_socket import Frame
from colo_proxy.service.modes import (
    BUFFERED,
    BUFFERED_BARRIER,
    FENCED,
    PASSTHROUGH,
    PROTECTED,
    IllegalTransition,
)
from colo_proxy.service.primary import PrimaryProxy
from colo_proxy.service.secondary import SecondaryProxy
from colo_proxy.service.settings import ProxySettings
from colo_proxy.wire.control import ProtocolError
from tests.support.fakes import FakeQueue, FakeSource
from tests.support.packets import ACK, PSH, SYN, ether, tcp, udp


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env() -> tuple[PrimaryProxy, FakeQueue, FakeSource, list[dict[str, Any]], Clock]:
    q, s, sent, clock = FakeQueue(), FakeSource(), [], Clock()
    settings = ProxySettings(compare=CompareConfig(compare_timeout=0.5))
    proxy = PrimaryProxy(settings, q, s, notify=lambda m: sent.append(m) or 1, clock=clock)
    return proxy, q, s, sent, clock


def handshake(proxy: PrimaryProxy, q: FakeQueue, s: FakeSource) -> None:
    q.push(1, tcp(5000, 1000, SYN | ACK))
    proxy.on_pvm_readable()
    s.push(tcp(9000, 1000, SYN | ACK))
    proxy.on_svm_readable()
    assert q.accepted == [1]


def test_equal_payload_releases_the_pvm_packet(env: Any) -> None:
    proxy, q, s, sent, _ = env
    handshake(proxy, q, s)
    q.push(2, tcp(5001, 1000, PSH | ACK, b"hello"))
    proxy.on_pvm_readable()
    assert q.accepted == [1]  # held until the SVM said the same
    # The SVM's stream starts at its own ISN and is segmented differently.
    s.push(tcp(9001, 1000, PSH | ACK, b"hel"))
    s.push(tcp(9004, 1000, PSH | ACK, b"lo"))
    proxy.on_svm_readable()
    assert q.accepted == [1, 2]
    assert sent == []


def test_differing_payload_requests_a_checkpoint_and_holds(env: Any) -> None:
    proxy, q, s, sent, _ = env
    handshake(proxy, q, s)
    q.push(2, tcp(5001, 1000, PSH | ACK, b"abcX"))
    proxy.on_pvm_readable()
    s.push(tcp(9001, 1000, PSH | ACK, b"abcY"))
    proxy.on_svm_readable()
    assert [m["reason"] for m in sent] == ["payload"]
    assert sent[0]["flow"]["sport"] == 80 and sent[0]["offset"] == 3
    assert q.accepted == [1]
    assert proxy.on_control({"type": "checkpoint_done"}) == {"type": "ok",
                                                              "for": "checkpoint_done"}
    assert q.accepted == [1, 2]


def test_missing_twin_times_out_through_wakeup(env: Any) -> None:
    proxy, q, s, sent, clock = env
    handshake(proxy, q, s)
    q.push(2, tcp(5001, 1000, PSH | ACK, b"only the pvm"))
    proxy.on_pvm_readable()
    assert proxy.wake is not None and proxy.timeout() == pytest.approx(0.5)
    clock.t += 0.6
    proxy.on_timer()
    assert [m["reason"] for m in sent] == ["timeout"]


def test_a_super_packet_the_svm_lags_inside_goes_through_the_segmenting_queue() -> None:
    """The adapter's half of resegmenting: the comparator's Resegment becomes verdicts to
    the segmenting queue, and that queue's segments are compared and released there."""
    q, segq, s, sent, clock = FakeQueue(), FakeQueue(), FakeSource(), [], Clock()
    settings = ProxySettings(compare=CompareConfig(compare_timeout=0.5, resegment_after=0.01))
    proxy = PrimaryProxy(settings, q, s, notify=lambda m: sent.append(m) or 1, clock=clock,
                         segq=segq)
    handshake(proxy, q, s)
    body = b"0123456789" * 300  # one super-packet of 3000 bytes
    q.push(2, tcp(5001, 1000, PSH | ACK, body), gso=True)
    proxy.on_pvm_readable()
    s.push(tcp(9001, 1000, PSH | ACK, body[:1000]))  # the SVM stops inside it
    proxy.on_svm_readable()
    clock.t += 0.02
    proxy.on_timer()
    assert q.requeued == [2] and q.accepted == [1]
    # Its segments come back through the segmenting queue, with that queue's own ids.
    for i, off in enumerate(range(0, 3000, 1000)):
        segq.push(1 + i, tcp(5001 + off, 1000, PSH | ACK, body[off:off + 1000]))
    proxy.on_seg_readable()
    assert segq.accepted == [1]  # as far as the SVM matched
    s.push(tcp(9001 + 1000, 1000, PSH | ACK, body[1000:]))
    proxy.on_svm_readable()
    assert segq.accepted == [1, 2, 3] and q.accepted == [1]
    assert sent == [] and proxy.status()["held_packets"] == 0


def test_without_a_segmenting_queue_a_super_packet_waits_whole(env: Any) -> None:
    proxy, q, s, sent, clock = env
    handshake(proxy, q, s)
    q.push(2, tcp(5001, 1000, PSH | ACK, b"x" * 3000), gso=True)
    proxy.on_pvm_readable()
    s.push(tcp(9001, 1000, PSH | ACK, b"x" * 1000))
    proxy.on_svm_readable()
    clock.t += 0.6
    proxy.on_timer()
    assert q.requeued == [] and [m["reason"] for m in sent] == ["timeout"]


def test_failover_releases_everything_and_passes_new_output(env: Any) -> None:
    proxy, q, s, _, _ = env
    handshake(proxy, q, s)
    q.push(2, tcp(5001, 1000, PSH | ACK, b"held"))
    proxy.on_pvm_readable()
    proxy.on_control({"type": "failover"})
    assert proxy.mode == PASSTHROUGH and q.accepted == [1, 2]
    q.push(3, tcp(5005, 1000, PSH | ACK, b"more"))
    proxy.on_pvm_readable()
    assert q.accepted == [1, 2, 3]
    proxy.on_control({"type": "resume"})
    assert proxy.mode == PROTECTED


def test_bad_input_never_raises_and_is_counted(env: Any) -> None:
    proxy, q, s, _, _ = env
    junk = [b"", b"\x45", b"\x60" + bytes(10), tcp(1, 1000, PSH | ACK)[:30], b"\xff" * 100]
    for i, j in enumerate(junk, 10):
        q.push(i, j)
        s.incoming.append(Frame(0x800, j))
    s.incoming.append(Frame(0x806, b"arp"))
    proxy.on_pvm_readable()
    proxy.on_svm_readable()
    st = proxy.status()
    assert st["svm_non_ip"] == 1
    assert st["compare"]["parse_errors"] + st["compare"]["non_ip"] > 0
    assert st["compare"]["internal_errors"] == 0


def test_unknown_control_message_is_refused(env: Any) -> None:
    proxy = env[0]
    with pytest.raises(ProtocolError):
        proxy.on_control({"type": "format_disk"})


class FakeDatapath:
    def __init__(self) -> None:
        self.mode_set: list[int] = []
        self.resets = 0

    def set_mode(self, mode: int) -> None:
        self.mode_set.append(mode)

    def counters(self) -> dict[str, int]:
        return {"ack_rewrites": 3}

    def carried(self) -> int:
        return 0

    def offsets(self) -> list[Any]:
        return []

    def reset_offsets(self) -> int:
        self.resets += 1
        return 2

    def carried_offsets(self) -> list[Any]:
        return []


class FakeRecorder:
    """kernel.packet_socket.TapRecorder: frames the SVM sent (with their arrival time on
    the wall clock), and what was replayed."""

    def __init__(self) -> None:
        self.queued: list[tuple[float, bytes]] = []
        self.sent: list[bytes] = []
        self.keeping = False

    def start(self) -> None:
        self.keeping = True

    def stop(self) -> None:
        self.keeping = False
        self.queued = []

    def svm_sends(self, at: float, *frames: bytes) -> None:
        if self.keeping:  # the socket's filter keeps nothing while idle
            self.queued += [(at, f) for f in frames]

    def read(self, limit: int = 256) -> list[tuple[float, bytes]]:
        out, self.queued = self.queued[:limit], self.queued[limit:]
        return out

    def send(self, frame: bytes) -> bool:
        self.sent.append(frame)
        return True


def test_secondary_resets_offsets_at_checkpoint_and_switches_mode() -> None:
    dp = FakeDatapath()
    sec = SecondaryProxy(dp)
    sec.on_control({"type": "checkpoint_done"})
    sec.on_control({"type": "failover"})
    assert dp.resets == 1 and dp.mode_set == [1] and sec.mode == PASSTHROUGH
    assert sec.on_control({"type": "status"})["datapath"] == {"ack_rewrites": 3}


def test_output_after_the_checkpoint_barrier_is_compared_in_the_new_epoch(env: Any) -> None:
    proxy, q, s, sent, _ = env
    handshake(proxy, q, s)
    q.push(2, tcp(5001, 1000, PSH | ACK, b"abcX"))
    proxy.on_pvm_readable()
    s.push(tcp(9001, 1000, PSH | ACK, b"abcY"))
    proxy.on_svm_readable()
    assert [m["reason"] for m in sent] == ["payload"]
    # Sent by the PVM before it stopped, not yet read by the proxy: pre-snapshot output.
    q.push(3, tcp(5005, 1000, PSH | ACK, b"more"))
    assert proxy.on_control({"type": "checkpoint_barrier"})["type"] == "ok"
    # The PVM resumed before checkpoint_done reached us: this is post-snapshot output.
    q.push(4, tcp(5009, 1000, PSH | ACK, b"post"))
    proxy.on_pvm_readable()
    proxy.on_control({"type": "checkpoint_done"})
    assert q.accepted == [1, 2, 3]  # 4 was not released with the old epoch
    # The SVM now runs the PVM's state (same sequence space) and says the same: released.
    s.push(tcp(5009, 1000, PSH | ACK, b"post"))
    proxy.on_svm_readable()
    assert q.accepted == [1, 2, 3, 4]
    # A post-barrier pair that both arrived before checkpoint_done is matched on re-feed.
    proxy.on_control({"type": "checkpoint_barrier"})
    q.push(5, tcp(5013, 1000, PSH | ACK, b"next"))
    proxy.on_pvm_readable()
    s.push(tcp(5013, 1000, PSH | ACK, b"next"))
    proxy.on_svm_readable()
    assert q.accepted == [1, 2, 3, 4]
    proxy.on_control({"type": "checkpoint_done"})
    assert q.accepted == [1, 2, 3, 4, 5]
    assert [m["reason"] for m in sent] == ["payload"]


def test_fence_drops_held_and_new_output_until_unfence(env: Any) -> None:
    proxy, q, s, _, _ = env
    handshake(proxy, q, s)
    q.push(2, tcp(5001, 1000, PSH | ACK, b"held"))
    proxy.on_pvm_readable()
    assert q.accepted == [1] and q.held == {2}  # waits for the SVM's twin
    proxy.on_control({"type": "fence"})
    assert q.dropped == [2] and q.held == set()
    q.push(3, tcp(5005, 1000, PSH | ACK, b"more"))
    s.push(tcp(9001, 1000, PSH | ACK, b"held"))
    proxy.on_pvm_readable()
    proxy.on_svm_readable()
    assert q.dropped == [2, 3] and q.accepted == [1]
    st = proxy.status()
    assert st["mode"] == "fenced" and st["fenced_drops"] == 2 and st["held_packets"] == 0
    # A checkpoint in flight ends while fenced: counted, and nothing is released.
    proxy.on_control({"type": "checkpoint_done"})
    assert q.accepted == [1] and proxy.mode is FENCED
    proxy.on_control({"type": "unfence"})
    assert proxy.mode is PROTECTED
    q.push(4, tcp(5009, 1000, PSH | ACK, b"x"))
    proxy.on_pvm_readable()
    assert 4 not in q.dropped  # compared again, not dropped


def test_hello_names_the_role_mode_pid_and_instance(env: Any) -> None:
    proxy = env[0]
    hello = proxy.on_control({"type": "hello"})
    assert hello == {"type": "hello", "role": "primary", "mode": "protected",
                     "pid": os.getpid(), "instance": "colo", "permits": True}
    sec = SecondaryProxy(FakeDatapath(), instance="web-b")
    assert sec.on_control({"type": "hello"})["pid"] == os.getpid()
    assert sec.on_control({"type": "hello"})["instance"] == "web-b"


def test_a_proxy_started_fenced_drops_from_the_first_packet_until_unfence() -> None:
    # A proxy (re)started while its orchestrator holds output: fenced only at its hello,
    # it compared (and released matching) packets before the fence arrived.
    q, s, clock = FakeQueue(), FakeSource(), Clock()
    proxy = PrimaryProxy(ProxySettings(fenced=True), q, s, notify=lambda m: 1, clock=clock)
    assert proxy.on_control({"type": "hello"})["mode"] == "fenced"
    q.push(1, tcp(5000, 1000, SYN | ACK))
    s.push(tcp(9000, 1000, SYN | ACK))
    proxy.on_pvm_readable()
    proxy.on_svm_readable()
    assert (q.accepted, q.dropped) == ([], [1])
    # Nothing but unfence releases it: pause, failover and resume are refused.
    for kind in ("pause", "failover", "resume"):
        with pytest.raises(IllegalTransition):
            proxy.on_control({"type": kind})
    proxy.on_control({"type": "unfence"})
    assert proxy.mode is PROTECTED
    handshake(proxy, q, s)


def test_a_secondary_started_fenced_keeps_the_svm_off_the_lan_until_unfence() -> None:
    dp = FakeDatapath()
    sec = SecondaryProxy(dp, fenced=True)
    assert sec.on_control({"type": "hello"})["mode"] == "fenced"
    with pytest.raises(IllegalTransition):
        sec.on_control({"type": "failover"})
    assert dp.mode_set == []  # still steered off the LAN, as the datapath started
    sec.on_control({"type": "unfence"})
    assert sec.mode is PROTECTED and dp.mode_set == [0]


@pytest.fixture
def remus() -> tuple[PrimaryProxy, FakeQueue, FakeSource, list[dict[str, Any]]]:
    q, s, sent = FakeQueue(), FakeSource(), []
    proxy = PrimaryProxy(ProxySettings(output="buffer"), q, s,
                         notify=lambda m: sent.append(m) or 1, clock=Clock())
    return proxy, q, s, sent


def test_buffering_holds_all_output_until_the_checkpoint_then_releases_it(remus: Any) -> None:
    proxy, q, s, sent = remus
    assert proxy.mode is BUFFERED and proxy.on_control({"type": "hello"})["mode"] == "protected"
    q.push(1, tcp(5000, 1000, SYN | ACK))
    q.push(2, tcp(5001, 1000, PSH | ACK, b"hello"))
    proxy.on_pvm_readable()
    s.push(tcp(9000, 1000, SYN | ACK))  # the SVM's output is not compared, and not needed
    proxy.on_svm_readable()
    assert q.accepted == [] and proxy.status()["held_packets"] == 2 and not proxy.idle()
    assert sent == []  # no divergence, no timeout: buffering never asks for a checkpoint
    proxy.on_control({"type": "checkpoint_done"})
    assert q.accepted == [1, 2] and proxy.idle() and proxy.mode is BUFFERED


def test_output_after_the_barrier_waits_for_the_next_checkpoint(remus: Any) -> None:
    proxy, q, _, _ = remus
    q.push(1, tcp(5000, 1000, PSH | ACK, b"before"))
    proxy.on_pvm_readable()
    q.push(2, tcp(5006, 1000, PSH | ACK, b"queued"))  # sent before the stop, read at barrier
    proxy.on_control({"type": "checkpoint_barrier"})
    assert proxy.mode is BUFFERED_BARRIER
    q.push(3, tcp(5012, 1000, PSH | ACK, b"after"))  # from the state after the snapshot
    proxy.on_pvm_readable()
    proxy.on_control({"type": "checkpoint_done"})
    assert q.accepted == [1, 2] and proxy.status()["held_packets"] == 1
    proxy.on_control({"type": "checkpoint_done"})
    assert q.accepted == [1, 2, 3]


def test_buffering_fails_closed_and_passes_on_failover(remus: Any) -> None:
    proxy, q, _, _ = remus
    q.push(1, tcp(5000, 1000, PSH | ACK, b"x"))
    proxy.on_pvm_readable()
    proxy.on_control({"type": "fence"})
    assert q.dropped == [1] and proxy.fenced_drops == 1 and proxy.idle()
    proxy.on_control({"type": "unfence"})
    assert proxy.mode is BUFFERED
    q.push(2, tcp(5001, 1000, PSH | ACK, b"y"))
    proxy.on_pvm_readable()
    proxy.on_control({"type": "failover"})
    assert q.accepted == [2] and proxy.mode is PASSTHROUGH
    proxy.on_control({"type": "resume"})
    assert proxy.mode is BUFFERED


# The release permit (service.permit) in the proxies --------------------------------------
def permit(proxy: PrimaryProxy | SecondaryProxy, seconds: float) -> dict[str, Any]:
    """A permit as the orchestrator sends it: echoing a token the proxy issued just now."""
    tok = proxy.permit.issue(proxy.clock())
    return proxy.on_control({"type": "permit", "seconds": seconds, "token": tok})


def test_no_release_after_the_permit_lapses_and_all_of_it_after_renewal(env: Any) -> None:
    proxy, q, s, _, clock = env
    assert permit(proxy, 1.0)["type"] == "permit"
    handshake(proxy, q, s)  # released under the permit
    clock.t += 1.0  # the deadline itself: no longer allowed
    proxy.on_timer()
    q.push(2, tcp(5001, 1000, PSH | ACK, b"hello"))
    proxy.on_pvm_readable()
    s.push(tcp(9001, 1000, PSH | ACK, b"hello"))
    proxy.on_svm_readable()
    assert q.accepted == [1] and q.held == {2}  # matched, but held in the kernel
    st = proxy.status()
    assert st["accepted_packets"] == 1 and st["compare"]["released_packets"] == 2
    assert st["permit"]["withheld_packets"] == 1 and st["permit"]["lapses"] == 1
    assert st["held_packets"] == 1 and not proxy.idle()
    # A checkpoint's release waits as well.
    q.push(3, tcp(5006, 1000, PSH | ACK, b"X"))
    proxy.on_pvm_readable()
    proxy.on_control({"type": "checkpoint_done"})
    assert q.accepted == [1]
    # The orchestrator, back and still holding the lease, renews: nothing was lost.
    permit(proxy, 1.0)
    assert q.accepted == [1, 2, 3] and q.held == set()
    assert proxy.status()["permit"]["withheld_packets"] == 0


def test_a_fence_after_the_lapse_drops_what_waited_for_the_permit(env: Any) -> None:
    proxy, q, s, _, clock = env
    permit(proxy, 0.5)
    handshake(proxy, q, s)
    clock.t += 0.6
    q.push(2, tcp(5001, 1000, PSH | ACK, b"hello"))
    proxy.on_pvm_readable()
    s.push(tcp(9001, 1000, PSH | ACK, b"hello"))
    proxy.on_svm_readable()
    proxy.on_control({"type": "fence"})  # the orchestrator came back without the lease
    assert q.dropped == [2] and proxy.status()["fenced_drops"] == 1
    permit(proxy, 1.0)
    assert q.accepted == [1]


def test_pass_through_without_a_permit_holds_until_one_comes(env: Any) -> None:
    proxy, q, s, _, clock = env
    permit(proxy, 0.5)
    handshake(proxy, q, s)
    q.push(2, tcp(5001, 1000, PSH | ACK, b"held"))
    proxy.on_pvm_readable()
    clock.t += 0.5
    proxy.on_control({"type": "failover"})
    q.push(3, tcp(5005, 1000, PSH | ACK, b"more"))
    proxy.on_pvm_readable()
    assert proxy.mode == PASSTHROUGH and q.accepted == [1] and q.held == {2, 3}
    permit(proxy, 1.0)
    assert q.accepted == [1, 2, 3]


def test_the_loop_wakes_at_the_permits_end(env: Any) -> None:
    proxy, _, _, _, clock = env
    assert proxy.timeout() == 1.0  # no permit yet, not enforced ("auto")
    permit(proxy, 0.3)
    assert proxy.timeout() == pytest.approx(0.3)
    clock.t += 0.3
    assert proxy.timeout() == 1.0  # lapsed: nothing to wake for


def test_a_required_permit_holds_from_the_first_packet() -> None:
    q, s, clock = FakeQueue(), FakeSource(), Clock()
    proxy = PrimaryProxy(ProxySettings(release_permit="required"), q, s,
                         notify=lambda m: 1, clock=clock)
    q.push(1, tcp(5000, 1000, SYN | ACK))
    s.push(tcp(9000, 1000, SYN | ACK))
    proxy.on_pvm_readable()
    proxy.on_svm_readable()
    assert q.accepted == []
    permit(proxy, 1.0)
    assert q.accepted == [1]


def test_a_secondary_passes_through_only_under_a_permit() -> None:
    dp, clock = FakeDatapath(), Clock()
    sec = SecondaryProxy(dp, clock, release_permit="required")
    assert sec.on_control({"type": "hello"})["permits"] is True
    sec.on_control({"type": "failover"})
    assert sec.mode == PASSTHROUGH and dp.mode_set == [0]  # steered off the LAN
    permit(sec, 0.5)
    assert dp.mode_set == [0, 1] and sec.timeout() == pytest.approx(0.5)
    clock.t += 0.5
    sec.on_timer()
    assert dp.mode_set == [0, 1, 0]
    assert sec.on_control({"type": "status"})["permit"]["lapses"] == 1
    permit(sec, 0.5)
    assert dp.mode_set == [0, 1, 0, 1]


def test_mirror_while_passing_restarts_the_mirror_and_output_still_passes() -> None:
    # Sent before a COLO migration: the SVM to be loaded needs every client packet the
    # stopped PVM reads later, and output passes until the STOP's resume.
    q, s, dp = FakeQueue(), FakeSource(), FakeDatapath()
    proxy = PrimaryProxy(ProxySettings(), q, s, notify=lambda m: 1, datapath=dp)
    proxy.on_control({"type": "mirror"})
    assert dp.mode_set == []  # comparing: the mirror never stopped
    proxy.on_control({"type": "pause"})
    proxy.on_control({"type": "mirror"})
    assert proxy.mode == PASSTHROUGH and dp.mode_set == [1, 0]
    q.push(1, tcp(5000, 1000, PSH | ACK, b"out"))
    proxy.on_pvm_readable()
    assert q.accepted == [1]
    proxy.on_control({"type": "fence"})
    proxy.on_control({"type": "mirror"})
    assert proxy.mode == FENCED and dp.mode_set == [1, 0]


def test_a_switchover_take_over_replays_what_the_svm_sent_since_the_final_checkpoint() -> None:
    # Sent to the primary's comparator between the final checkpoint and the take-over,
    # it was dropped there: the client waited for the guest's retransmission.
    dp, rec, clock = FakeDatapath(), FakeRecorder(), Clock()
    sec = SecondaryProxy(dp, clock, recorder=rec, release_permit="required")
    rec.svm_sends(1.0, ether(tcp(1, 1, ACK, b"idle")))
    sec.on_control({"type": "record"})
    rec.svm_sends(2.0, ether(tcp(2, 1, PSH | ACK, b"old epoch")))
    sec.on_record_readable()
    rec.svm_sends(3.0, ether(tcp(3, 1, PSH | ACK, b"queued before the checkpoint")))
    # The SVM answers at once after resuming (at 4.0), before its orchestrator says so.
    rec.svm_sends(4.01, ether(tcp(4, 1, PSH | ACK, b"answer")), ether(udp(b"dns")))
    sec.on_control({"type": "checkpoint_done", "resumed_at": 4.0})  # the final checkpoint
    sec.on_control({"type": "failover"})
    rec.svm_sends(4.2, ether(tcp(5, 1, PSH | ACK, b"more")))
    sec.on_record_readable()
    sec.on_control({"type": "replay"})
    assert rec.sent == []  # no permit yet: nothing reaches the clients
    permit(sec, 1.0)
    assert [f[-4:] for f in rec.sent] == [b"swer", b"more"]
    st = sec.on_control({"type": "status"})["record"]
    assert st["phase"] == "idle" and st["replayed"] == 2 and not rec.keeping
    permit(sec, 1.0)
    assert len(rec.sent) == 2  # once


def _recording() -> tuple[FakeDatapath, FakeRecorder, SecondaryProxy]:
    """A secondary recording since a checkpoint it resumed from at 4.0, with the SVM's
    answer after it, failed over: what a switchover's take-over leaves to replay."""
    dp, rec = FakeDatapath(), FakeRecorder()
    sec = SecondaryProxy(dp, Clock(), recorder=rec)
    sec.on_control({"type": "record"})
    sec.on_control({"type": "checkpoint_done", "resumed_at": 4.0})
    rec.svm_sends(4.5, ether(tcp(4, 1, PSH | ACK, b"answer")))
    sec.on_control({"type": "failover"})
    return dp, rec, sec


def test_a_checkpoint_done_after_the_failover_changes_nothing() -> None:
    # The take-over resumes the SVM too; its RESUME, reported as a checkpoint's, reset the
    # offsets the flows need from then on and dropped the recording (seen in the lab).
    dp, rec, sec = _recording()
    sec.on_control({"type": "checkpoint_done", "resumed_at": 5.0})
    assert dp.resets == 1
    sec.on_control({"type": "replay"})
    assert len(rec.sent) == 1


def test_the_take_over_replays_only_when_the_orchestrator_says_it_is_complete() -> None:
    # Its hook may be what connects this host to the clients (the lab's uplink).
    dp, rec, sec = _recording()
    assert rec.sent == [] and dp.mode_set == [1]
    sec.on_control({"type": "replay"})
    assert len(rec.sent) == 1


def test_a_recording_ends_at_a_fence_or_when_no_take_over_comes() -> None:
    dp, rec, clock = FakeDatapath(), FakeRecorder(), Clock()
    sec = SecondaryProxy(dp, clock, recorder=rec)
    sec.on_control({"type": "record"})
    sec.on_control({"type": "checkpoint_done"})
    rec.svm_sends(4.5, ether(tcp(4, 1, PSH | ACK, b"answer")))
    sec.on_control({"type": "fence"})
    assert not rec.keeping and sec.record.take() == []
    sec.on_control({"type": "unfence"})
    sec.on_control({"type": "record"})
    clock.t += 11.0
    sec.on_timer()
    assert not rec.keeping
    sec.on_control({"type": "failover"})
    sec.on_control({"type": "replay"})
    assert rec.sent == []
    with pytest.raises(ProtocolError, match="applies while protected"):
        sec.on_control({"type": "record"})
    with pytest.raises(ProtocolError, match="no recorder"):
        SecondaryProxy(FakeDatapath()).on_control({"type": "record"})
