"""Playbooks for UDP, ICMP, other protocols, fragments and unparseable input."""

from __future__ import annotations

from colo_proxy.compare import (
    Comparator,
    CompareConfig,
    Drop,
    Flow,
    Policy,
    Release,
    RequestCheckpoint,
    Side,
    Wakeup,
)
from tests.support.packets import CLIENT4, CLIENT6, VM4, VM6, icmp_echo_reply, ip4, ip6, udp

P, S = Side.PRIMARY, Side.SECONDARY
UDP_FLOW = Flow(17, VM4, 53, CLIENT4, 40000)


def test_udp_datagrams_match_in_any_order() -> None:
    c = Comparator()
    assert c.packet(P, 1, udp(b"one"), 0.0) == [Wakeup(1.0)]
    assert c.packet(P, 2, udp(b"two"), 0.0) == []
    assert c.packet(S, 1, udp(b"two"), 0.0) == [Release((2,)), Drop((1,))]
    assert c.packet(S, 2, udp(b"one"), 0.0) == [Release((1,)), Drop((2,))]
    assert c.packet(S, 3, udp(b"three"), 0.1) == []
    assert c.packet(P, 3, udp(b"three"), 0.1) == [Release((3,)), Drop((3,))]


def test_udp_checksum_is_not_compared() -> None:
    c = Comparator()
    c.packet(P, 1, udp(b"x", checksum=0x1234), 0.0)
    assert c.packet(S, 1, udp(b"x", checksum=0), 0.0) == [Release((1,)), Drop((1,))]


def test_udp_divergence_beyond_the_window() -> None:
    c = Comparator(CompareConfig(datagram_window=2))
    assert c.packet(P, 1, udp(b"abc"), 0.0) == [Wakeup(1.0)]
    assert c.packet(S, 1, udp(b"abX"), 0.0) == []
    assert c.packet(S, 2, udp(b"q"), 0.0) == []
    assert c.packet(S, 3, udp(b"r"), 0.0) == [
        Drop((1, 2, 3)),
        RequestCheckpoint("datagram", UDP_FLOW, 2),
    ]
    assert c.checkpoint_done(0.1) == [Release((1,))]


def test_udp_different_datagram_within_the_window_times_out_as_datagram() -> None:
    c = Comparator()
    c.packet(P, 1, udp(b"abc"), 0.0)
    c.packet(S, 1, udp(b"abX"), 0.0)
    assert c.tick(1.0) == [Drop((1,)), RequestCheckpoint("datagram", UDP_FLOW, 2)]


def test_udp_missing_svm_datagram_times_out() -> None:
    c = Comparator()
    c.packet(P, 1, udp(b"abc"), 0.0)
    assert c.tick(1.0) == [RequestCheckpoint("timeout", UDP_FLOW, None)]


def test_udp_ipv6() -> None:
    c = Comparator()
    c.packet(P, 1, udp(b"v6", v6=True), 0.0)
    assert c.packet(S, 1, udp(b"v6", v6=True), 0.0) == [Release((1,)), Drop((1,))]
    c.packet(P, 2, udp(b"v6", v6=True), 0.0)
    assert c.tick(1.0) == [RequestCheckpoint("timeout", Flow(17, VM6, 53, CLIENT6, 40000), None)]


def test_icmp_compares_all_but_the_checksum() -> None:
    c = Comparator()
    c.packet(P, 1, icmp_echo_reply(7, 1, b"ping", checksum=1), 0.0)
    assert c.packet(S, 1, icmp_echo_reply(7, 1, b"ping", checksum=2), 0.0) == [
        Release((1,)),
        Drop((1,)),
    ]


def test_other_protocols_compare_the_l3_payload_by_default() -> None:
    c = Comparator()
    c.packet(P, 1, ip4(47, b"gre!", ident=1), 0.0)
    assert c.packet(S, 1, ip4(47, b"gre!", ident=2), 0.0) == [Release((1,)), Drop((1,))]
    assert c.stats.other_protocol == 2


def test_other_protocol_policies() -> None:
    c = Comparator(CompareConfig(other_policy=Policy.PASS))
    assert c.packet(P, 1, ip4(47, b"x"), 0.0) == [Release((1,))]
    assert c.packet(S, 1, ip4(47, b"y"), 0.0) == [Drop((1,))]
    c = Comparator(CompareConfig(other_policy=Policy.CHECKPOINT))
    assert c.packet(P, 1, ip4(47, b"x"), 0.0) == [RequestCheckpoint("policy", None, None)]
    assert c.packet(P, 2, ip4(47, b"x"), 0.0) == []  # requested once per checkpoint
    assert c.packet(S, 1, ip4(47, b"x"), 0.0) == [Drop((1,))]
    assert c.checkpoint_done(0.1) == [Release((1, 2))]


def test_fragments_compare_offset_and_payload_not_the_ip_id() -> None:
    c = Comparator()
    frag = 0x2000  # more fragments, offset 0
    c.packet(P, 1, ip4(17, b"first part", ident=11, frag=frag), 0.0)
    assert c.packet(S, 1, ip4(17, b"first part", ident=99, frag=frag), 0.0) == [
        Release((1,)),
        Drop((1,)),
    ]
    assert c.stats.fragments == 2


def test_ipv6_fragment_header() -> None:
    c = Comparator()
    fh = bytes([17, 0, 0, 1]) + (1234).to_bytes(4, "big")  # next UDP, offset 0, M=1
    fh2 = bytes([17, 0, 0, 1]) + (4321).to_bytes(4, "big")
    c.packet(P, 1, ip6(44, fh + b"data"), 0.0)
    assert c.packet(S, 1, ip6(44, fh2 + b"data"), 0.0) == [Release((1,)), Drop((1,))]


def test_unparseable_is_counted_and_held_for_a_checkpoint_by_default() -> None:
    c = Comparator()
    assert c.packet(P, 1, b"\x45\x00", 0.0) == [RequestCheckpoint("unparseable", None, None)]
    assert c.packet(S, 1, b"\x00garbage", 0.0) == [Drop((1,))]
    assert c.stats.parse_errors == 2 and c.stats.non_ip == 1
    assert c.checkpoint_done(0.1) == [Release((1,))]


def test_unparseable_policies() -> None:
    c = Comparator(CompareConfig(unparseable_policy=Policy.PASS))
    assert c.packet(P, 1, b"\x00", 0.0) == [Release((1,))]
    c = Comparator(CompareConfig(unparseable_policy=Policy.COMPARE))
    c.packet(P, 1, b"\x00\x01", 0.0)
    assert c.packet(S, 1, b"\x00\x01", 0.0) == [Release((1,)), Drop((1,))]


def test_truncated_tcp_is_unparseable() -> None:
    c = Comparator(CompareConfig(unparseable_policy=Policy.PASS))
    pkt = ip4(6, b"\x00" * 10)
    assert c.packet(P, 1, pkt, 0.0) == [Release((1,))]
    assert c.stats.parse_errors == 1
