"""Playbooks for TCP: this event in, exactly these commands out."""

from __future__ import annotations

import pytest

from colo_proxy.compare import (
    Comparator,
    CompareConfig,
    Drop,
    FlowMatch,
    Release,
    RequestCheckpoint,
    Side,
    Wakeup,
)
from tests.support.packets import ACK, FIN, PSH, RST, SYN, tcp, tcp_flow

P, S = Side.PRIMARY, Side.SECONDARY
P_ISN, S_ISN, C_ISN = 1000, 900_000, 7000  # the replicas pick different ISNs
CACK = C_ISN + 1  # the client's first data byte, acknowledged by both replicas
FLOW = tcp_flow()


def established(c: Comparator, p_isn: int = P_ISN, s_isn: int = S_ISN) -> None:
    """Handshake at time 0; the caller's timer is then set for compare_timeout."""
    timeout = c.config.compare_timeout
    assert c.packet(P, 1, tcp(p_isn, CACK, SYN | ACK), 0.0) == [Wakeup(timeout)]
    assert c.packet(S, 1, tcp(s_isn, CACK, SYN | ACK), 0.0) == [Release((1,)), Drop((1,))]


def pdata(off: int, data: bytes, ack: int = CACK, flags: int = ACK | PSH, **kw: int) -> bytes:
    return tcp(P_ISN + 1 + off, ack, flags, data, **kw)


def sdata(off: int, data: bytes, ack: int = CACK, flags: int = ACK | PSH, **kw: int) -> bytes:
    return tcp(S_ISN + 1 + off, ack, flags, data, **kw)


@pytest.fixture
def c() -> Comparator:
    cmp = Comparator(CompareConfig(compare_timeout=1.0))
    established(cmp)
    return cmp


def test_handshake_syn_ack_waits_for_the_svm_syn_ack() -> None:
    established(Comparator())


def test_same_segmentation_pvm_first(c: Comparator) -> None:
    assert c.packet(P, 2, pdata(0, b"hello"), 0.1) == []
    assert c.packet(S, 2, sdata(0, b"hello"), 0.1) == [Release((2,)), Drop((2,))]
    assert c.held_packets == 0 and c.held_bytes == 0


def test_same_segmentation_svm_first(c: Comparator) -> None:
    assert c.packet(S, 2, sdata(0, b"hello"), 0.1) == []
    assert c.packet(P, 2, pdata(0, b"hello"), 0.1) == [Release((2,)), Drop((2,))]


def test_different_segmentation_never_diverges(c: Comparator) -> None:
    assert c.packet(P, 2, pdata(0, b"0123456789"), 0.1) == []
    assert c.packet(S, 2, sdata(0, b"0123"), 0.1) == [Drop((2,))]
    assert c.packet(S, 3, sdata(4, b"456789ab"), 0.1) == [Release((2,))]
    assert c.packet(P, 3, pdata(10, b"ab"), 0.1) == [Release((3,)), Drop((3,))]


def test_headers_that_differ_do_not_count(c: Comparator) -> None:
    assert c.packet(P, 2, pdata(0, b"x", ident=1, ttl=64, tos=0, window=100), 0.1) == []
    other = sdata(
        0, b"x", ident=999, ttl=63, tos=0x10, window=7, options=b"\x01\x01\x08\x0a" + bytes(8)
    )
    assert c.packet(S, 2, other, 0.1) == [Release((2,)), Drop((2,))]


def test_retransmissions_are_released_or_dropped_at_once(c: Comparator) -> None:
    c.packet(P, 2, pdata(0, b"abc"), 0.1)
    c.packet(S, 2, sdata(0, b"abc"), 0.1)
    assert c.packet(P, 3, pdata(0, b"abc"), 0.2) == [Release((3,))]
    assert c.packet(S, 3, sdata(0, b"abc"), 0.2) == [Drop((3,))]


def test_svm_reordered_on_arrival(c: Comparator) -> None:
    assert c.packet(P, 2, pdata(0, b"aaaa"), 0.1) == []
    assert c.packet(P, 3, pdata(4, b"bbbb"), 0.1) == []
    assert c.packet(S, 3, sdata(4, b"bbbb"), 0.1) == []
    assert c.packet(S, 2, sdata(0, b"aaaa"), 0.1) == [Release((2, 3)), Drop((3, 2))]


def test_pvm_reordered_on_arrival_is_released_in_arrival_order(c: Comparator) -> None:
    assert c.packet(P, 3, pdata(4, b"bbbb"), 0.1) == []
    assert c.packet(P, 2, pdata(0, b"aaaa"), 0.1) == []
    assert c.packet(S, 2, sdata(0, b"aaaabbbb"), 0.1) == [Release((3, 2)), Drop((2,))]


def test_payload_divergence_reports_the_stream_offset(c: Comparator) -> None:
    c.packet(P, 2, pdata(0, b"hello "), 0.1)
    c.packet(S, 2, sdata(0, b"hello "), 0.1)
    assert c.packet(P, 3, pdata(6, b"world"), 0.2) == []
    assert c.packet(S, 3, sdata(6, b"wOrld"), 0.2) == [
        Drop((3,)),
        RequestCheckpoint("payload", FLOW, 7),
    ]
    assert c.checkpoint_pending
    # The flow now waits for the checkpoint: PVM output is held, SVM output dropped.
    assert c.packet(P, 4, pdata(11, b"!"), 0.3) == []
    assert c.packet(S, 4, sdata(11, b"!"), 0.3) == [Drop((4,))]
    assert c.checkpoint_done(0.5) == [Release((3, 4))]
    assert not c.checkpoint_pending


def test_after_checkpoint_both_sides_share_the_pvm_sequence_space(c: Comparator) -> None:
    c.packet(P, 2, pdata(0, b"abc"), 0.1)
    c.packet(S, 2, sdata(0, b"xyz"), 0.1)
    assert c.checkpoint_done(0.2) == [Release((2,))]
    # The SVM now runs the PVM's TCP state, so it sends from the PVM's sequence numbers.
    assert c.packet(S, 3, pdata(3, b"next"), 0.3) == []
    assert c.packet(P, 3, pdata(3, b"next"), 0.3) == [Release((3,)), Drop((3,))]


def test_checkpoint_done_releases_all_held_and_drops_all_kept(c: Comparator) -> None:
    c.packet(P, 2, pdata(0, b"abc"), 0.1)
    c.packet(S, 5, sdata(100, b"ahead"), 0.1)
    assert c.checkpoint_done(0.2) == [Release((2,)), Drop((5,))]
    assert c.held_packets == 0 and c.held_bytes == 0


def test_fin_must_match(c: Comparator) -> None:
    assert c.packet(P, 2, pdata(0, b"bye", flags=ACK | FIN), 0.1) == []
    assert c.packet(S, 2, sdata(0, b"bye"), 0.1) == [Drop((2,))]
    assert c.packet(S, 3, sdata(3, b"", flags=ACK | FIN), 0.1) == [Release((2,)), Drop((3,))]


def test_acks_after_the_fin_use_its_sequence_slot(c: Comparator) -> None:
    c.packet(P, 2, pdata(0, b"bye", flags=ACK | FIN), 0.1)
    c.packet(S, 2, sdata(0, b"bye", flags=ACK | FIN), 0.1)
    # The ACK of the client's FIN comes from sequence number FIN + 1.
    assert c.packet(P, 3, pdata(4, b"", ack=CACK + 1, flags=ACK), 0.2) == []
    assert c.packet(S, 3, sdata(4, b"", ack=CACK + 1, flags=ACK), 0.2) == [
        Release((3,)),
        Drop((3,)),
    ]
    assert c.held_packets == 0


def test_fin_at_another_position_diverges(c: Comparator) -> None:
    assert c.packet(P, 2, pdata(0, b"bye", flags=ACK | FIN), 0.1) == []
    assert c.packet(S, 2, sdata(0, b"by", flags=ACK | FIN), 0.1) == [
        Drop((2,)),
        RequestCheckpoint("tcp_flags", FLOW, 2),
    ]


def test_data_past_the_other_sides_fin_diverges(c: Comparator) -> None:
    assert c.packet(S, 2, sdata(0, b"", flags=ACK | FIN), 0.1) == [Drop((2,))]
    assert c.packet(P, 2, pdata(0, b"more"), 0.1) == [RequestCheckpoint("tcp_flags", FLOW, 0)]


def test_rst_must_match(c: Comparator) -> None:
    assert c.packet(P, 2, pdata(0, b"", flags=RST | ACK), 0.1) == []
    assert c.packet(S, 2, sdata(0, b"", flags=RST | ACK), 0.1) == [Release((2,)), Drop((2,))]


def test_pvm_rst_alone_times_out(c: Comparator) -> None:
    assert c.packet(P, 2, pdata(0, b"", flags=RST | ACK), 0.1) == []  # tick at 1.0 re-arms
    assert c.tick(1.1) == [RequestCheckpoint("timeout", FLOW, None)]


def test_svm_rst_first_then_the_pvm_twin(c: Comparator) -> None:
    assert c.packet(S, 2, sdata(0, b"", flags=RST | ACK), 0.1) == [Drop((2,))]
    assert c.packet(P, 2, pdata(0, b"", flags=RST | ACK), 0.1) == [Release((2,))]


def test_svm_rst_alone_diverges_at_the_pvm_data_it_never_sends(c: Comparator) -> None:
    assert c.packet(P, 2, pdata(0, b"hello"), 0.1) == []
    assert c.packet(S, 2, sdata(0, b"hello"), 0.1) == [Release((2,)), Drop((2,))]
    assert c.packet(S, 3, sdata(5, b"", flags=RST | ACK), 0.2) == [Drop((3,))]
    assert c.packet(P, 3, pdata(5, b"more"), 0.3) == [RequestCheckpoint("tcp_flags", FLOW, 5)]
    assert c.checkpoint_done(0.4) == [Release((3,))]
    # The SVM now holds the PVM's (open) connection, in the PVM's sequence space.
    assert c.packet(P, 4, pdata(9, b"next"), 0.5) == []
    assert c.packet(S, 4, pdata(9, b"next"), 0.5) == [Release((4,)), Drop((4,))]


def test_a_pvm_ack_waiting_after_an_svm_rst_may_be_freed_by_the_next_rst(c: Comparator) -> None:
    # A reset socket answers every segment with an RST; a later one may carry the ACK the
    # waiting PVM packet needs, so an SVM RST alone is no divergence for it.
    assert c.packet(P, 2, pdata(0, b"", ack=CACK + 10, flags=ACK), 0.1) == []
    assert c.packet(S, 2, sdata(0, b"", flags=RST), 0.2) == [Drop((2,))]
    assert c.packet(S, 3, sdata(0, b"", ack=CACK + 10, flags=RST | ACK), 0.3) == [
        Release((2,)),
        Drop((3,)),
    ]


def test_a_pvm_ack_the_svm_never_gives_after_its_rst_times_out(c: Comparator) -> None:
    assert c.packet(P, 2, pdata(0, b"", ack=CACK + 10, flags=ACK), 0.1) == []
    assert c.packet(S, 2, sdata(0, b"", flags=RST | ACK), 0.2) == [Drop((2,))]
    assert c.tick(1.2) == [RequestCheckpoint("timeout", FLOW, None)]


def test_ack_gating_waits_for_the_svm_to_acknowledge_client_data(c: Comparator) -> None:
    assert c.packet(P, 2, pdata(0, b"resp", ack=CACK + 100), 0.1) == []
    # Same bytes, but the SVM has not yet received the client's 100 bytes.
    assert c.packet(S, 2, sdata(0, b"resp", ack=CACK + 50), 0.1) == [Drop((2,))]
    assert c.held_packets == 1
    assert c.packet(S, 3, sdata(4, b"", ack=CACK + 100, flags=ACK), 0.1) == [
        Release((2,)),
        Drop((3,)),
    ]


def test_pure_ack_released_as_soon_as_the_svm_acked_as_far(c: Comparator) -> None:
    assert c.packet(S, 2, sdata(0, b"", ack=CACK + 10, flags=ACK), 0.1) == [Drop((2,))]
    assert c.packet(P, 2, pdata(0, b"", ack=CACK + 10, flags=ACK), 0.1) == [Release((2,))]
    assert c.packet(P, 3, pdata(0, b"", ack=CACK + 20, flags=ACK), 0.1) == []
    assert c.packet(S, 3, sdata(0, b"", ack=CACK + 20, flags=ACK), 0.1) == [
        Release((3,)),
        Drop((3,)),
    ]


def test_timeout_requests_one_checkpoint_then_waits() -> None:
    c = Comparator(CompareConfig(compare_timeout=0.5))
    established(c)
    assert c.tick(0.5) == []
    assert c.packet(P, 2, pdata(0, b"x"), 10.0) == [Wakeup(10.5)]
    assert c.tick(10.4) == []
    assert c.tick(10.5) == [RequestCheckpoint("timeout", FLOW, None)]
    assert c.tick(20.0) == []
    assert c.packet(S, 2, sdata(0, b"x"), 20.0) == [Drop((2,))]
    assert c.checkpoint_done(20.1) == [Release((2,))]


def test_wakeup_follows_the_oldest_held_packet(c: Comparator) -> None:
    assert c.tick(1.0) == []  # the handshake's timer: nothing held any more
    assert c.packet(P, 2, pdata(0, b"a"), 1.1) == [Wakeup(2.1)]
    assert c.packet(P, 3, pdata(1, b"b"), 1.2) == []
    assert c.packet(S, 2, sdata(0, b"a"), 1.3) == [Release((2,)), Drop((2,))]
    # The timer fires early for packet 3 and re-arms for it.
    assert c.tick(2.1) == [Wakeup(2.2)]
    assert c.packet(S, 3, sdata(1, b"b"), 2.15) == [Release((3,)), Drop((3,))]
    assert c.tick(2.2) == []


def test_queue_full_per_flow() -> None:
    c = Comparator(CompareConfig(max_flow_packets=2))
    established(c)
    assert c.packet(P, 2, pdata(0, b"a"), 0.1) == []
    assert c.packet(P, 3, pdata(1, b"b"), 0.1) == []
    assert c.packet(P, 4, pdata(2, b"c"), 0.1) == [RequestCheckpoint("queue_full", FLOW, None)]
    assert c.checkpoint_done(0.2) == [Release((2, 3, 4))]


def test_queue_full_in_total_over_flows() -> None:
    c = Comparator(CompareConfig(max_total_bytes=10))
    established(c)
    c.packet(P, 2, tcp(5000, CACK, SYN | ACK, dport=40001), 0.0)
    c.packet(S, 2, tcp(6000, CACK, SYN | ACK, dport=40001), 0.0)
    assert c.packet(P, 3, pdata(0, b"123456"), 0.1) == []
    assert c.packet(P, 4, tcp(5001, CACK, ACK, b"7890ab", dport=40001), 0.1) == [
        RequestCheckpoint("queue_full", tcp_flow(dport=40001), None)
    ]


def test_no_handshake_aligns_by_absolute_sequence_numbers() -> None:
    c = Comparator()
    assert c.packet(S, 1, tcp(555, 9, ACK, b"mid"), 0.0) == []
    assert c.packet(P, 1, tcp(555, 9, ACK, b"mid"), 0.0) == [Release((1,)), Drop((1,))]
    assert c.packet(P, 2, tcp(558, 9, ACK, b"dle"), 0.0) == [Wakeup(1.0)]
    assert c.packet(S, 2, tcp(558, 9, ACK, b"dlE"), 0.0) == [
        Drop((2,)),
        RequestCheckpoint("payload", FLOW, 5),
    ]


def test_svm_bytes_before_a_mid_stream_anchor_are_dropped() -> None:
    c = Comparator()
    assert c.packet(S, 1, tcp(100, 9, ACK, b"old"), 0.0) == []
    assert c.packet(P, 1, tcp(103, 9, ACK, b"new"), 0.0) == [Drop((1,)), Wakeup(1.0)]
    assert c.packet(S, 2, tcp(103, 9, ACK, b"new"), 0.0) == [Release((1,)), Drop((2,))]


def test_sequence_numbers_wrap() -> None:
    c = Comparator()
    established(c, p_isn=0xFFFFFFF0, s_isn=0xFFFFFFFE)
    c.packet(P, 2, tcp(0xFFFFFFF1, CACK, ACK, b"a" * 40), 0.1)
    assert c.packet(S, 2, tcp(0xFFFFFFFF, CACK, ACK, b"a" * 40), 0.1) == [
        Release((2,)),
        Drop((2,)),
    ]
    c.packet(P, 3, tcp(0xFFFFFFF1 + 40, CACK, ACK, b"b"), 0.1)
    assert c.packet(S, 3, tcp(0xFFFFFFFF + 40, CACK, ACK, b"c"), 0.1)[-1] == (
        RequestCheckpoint("payload", FLOW, 40)
    )


def test_ipv6() -> None:
    c = Comparator()
    assert c.packet(P, 1, tcp(P_ISN, CACK, SYN | ACK, v6=True), 0.0) == [Wakeup(1.0)]
    assert c.packet(S, 1, tcp(S_ISN, CACK, SYN | ACK, v6=True), 0.0) == [
        Release((1,)),
        Drop((1,)),
    ]
    c.packet(P, 2, tcp(P_ISN + 1, CACK, ACK, b"six", v6=True), 0.1)
    assert c.packet(S, 2, tcp(S_ISN + 1, CACK, ACK, b"siX", v6=True), 0.1) == [
        Drop((2,)),
        RequestCheckpoint("payload", tcp_flow(v6=True), 2),
    ]


def test_allow_listed_flows_pass_through() -> None:
    c = Comparator(CompareConfig(pass_through=(FlowMatch(proto=6, sport=80),)))
    assert c.packet(P, 1, tcp(1, 2, ACK, b"x"), 0.0) == [Release((1,))]
    assert c.packet(S, 1, tcp(9, 2, ACK, b"y"), 0.0) == [Drop((1,))]


def test_idle_and_closed_flows_are_evicted() -> None:
    c = Comparator(CompareConfig(idle_timeout=100.0, closed_timeout=5.0))
    established(c)
    c.packet(P, 2, tcp(1, 2, ACK, b"x", dport=1), 0.0)
    c.packet(S, 2, tcp(1, 2, ACK, b"x", dport=1), 0.0)
    c.packet(P, 3, pdata(0, b"", flags=ACK | FIN), 1.0)
    c.packet(S, 3, sdata(0, b"", flags=ACK | FIN), 1.0)
    assert c.flow_count == 2
    c.tick(6.0)  # the closed flow went first; the idle one is younger than idle_timeout
    assert c.flows() == [tcp_flow(dport=1)]
    c.tick(101.0)
    assert c.flow_count == 0
    assert c.stats.flows_evicted == 2


def test_table_full_evicts_least_recently_used_idle_flow() -> None:
    c = Comparator(CompareConfig(max_flows=2))
    for port in (1, 2, 3):
        c.packet(P, port, tcp(1, 2, ACK, b"x", dport=port), float(port))
        c.packet(S, port, tcp(1, 2, ACK, b"x", dport=port), float(port))
    assert c.flows() == [tcp_flow(dport=2), tcp_flow(dport=3)]


def test_after_a_divergence_the_stream_resumes_where_the_pvm_got_to() -> None:
    # The PVM keeps sending after the divergence; the checkpoint commits all of it, and the
    # SVM (now in the PVM's state and sequence space) continues from the PVM's end.
    c = Comparator(CompareConfig())
    established(c)
    c.packet(P, 2, pdata(0, b"abcX"), 0.1)
    cmds = c.packet(S, 2, sdata(0, b"abcY"), 0.1)
    assert cmds == [Drop((2,)), RequestCheckpoint("payload", FLOW, 3)]
    assert c.packet(P, 3, pdata(4, b"more"), 0.2) == []
    assert c.checkpoint_done(0.3) == [Release((2, 3))]
    assert c.packet(P, 4, pdata(8, b"post"), 0.4) == []
    # The SVM's segment carries the PVM's sequence number now.
    assert c.packet(S, 3, pdata(8, b"post"), 0.4) == [Release((4,)), Drop((3,))]
