"""Lending a flow to a fast path: what ``Comparator.lend`` hands over, and when it refuses.

A bulk flow is in sync (nothing held, nothing kept) only between super-packets: the PVM
is usually a packet ahead of the SVM, or the SVM ahead of the PVM. ``lend`` hands such a
flow over with the ahead side's unmatched bytes, split by the packets that carried them,
and ``take_back`` with the same state restores the comparator's decisions.
"""

from __future__ import annotations

import pytest

from colo_proxy.compare import (
    SUPER,
    Comparator,
    CompareConfig,
    LentFlow,
    Release,
)
from tests.support.packets import ACK, FIN, PSH
from tests.unit.proxy.compare.test_tcp import P, S, established, pdata, sdata

A, B = b"a" * 3000, b"b" * 2000  # two PVM super-packets


@pytest.fixture
def c() -> Comparator:
    cmp = Comparator(CompareConfig(compare_timeout=1.0))
    established(cmp)
    return cmp


def key(c: Comparator) -> bytes:
    return next(iter(c._tcp))


def back(c: Comparator, lent: LentFlow) -> None:
    """take_back with exactly what was lent (as lending.lend does when C cannot take it)."""
    held = [(pid, end, aoff, t, gso) for pid, end, aoff, t, gso, _d in lent.held]
    p_segs = [(end - len(d), d) for _p, end, _a, _t, _g, d in lent.held if d]
    kept = [(900 + i, s, d) for i, (s, d) in enumerate(lent.s_kept)]
    c.take_back(key(c), lent.matched, lent.p_top, lent.s_top, lent.s_ack, lent.p_amax, held,
                p_segs, kept, 0.5, lent.s_prog)


def test_the_pvm_ahead_goes_with_its_held_packets_and_their_bytes(c: Comparator) -> None:
    c.packet(P, 10, pdata(0, A), 0.1, SUPER)
    c.packet(P, 11, pdata(3000, B), 0.1, SUPER)
    c.packet(S, 2, sdata(0, A[:1000]), 0.2)  # the SVM is 1000 bytes into the first
    lent = c.lend(key(c))
    assert lent is not None
    assert (lent.matched, lent.p_top, lent.s_top, lent.s_prog) == (1000, 5000, 1000, 0.2)
    # The first packet's stored bytes start below matched: C compares from matched on.
    assert [(pid, end, gso, len(d)) for pid, end, _a, _t, gso, d in lent.held] == [
        (10, 3000, True, 3000), (11, 5000, True, 2000)]
    assert lent.s_kept == ()
    assert c.held_packets == 0 and c.held_bytes == 0
    assert c.lend(key(c)) is None  # lent already


def test_the_svm_ahead_goes_with_its_kept_segments(c: Comparator) -> None:
    c.packet(P, 10, pdata(0, A), 0.1, SUPER)
    c.packet(S, 2, sdata(0, A[:1448]), 0.2)
    c.packet(S, 3, sdata(1448, A[1448:]), 0.2)  # releases 10
    c.packet(S, 4, sdata(3000, B[:1448]), 0.3)
    c.packet(S, 5, sdata(4448, B[1448:]), 0.3)
    lent = c.lend(key(c))
    assert lent is not None
    assert (lent.matched, lent.p_top, lent.s_top) == (3000, 3000, 5000)
    assert lent.held == ()
    assert lent.s_kept == ((3000, B[:1448]), (4448, B[1448:]))


def test_given_back_as_lent_the_comparator_decides_as_before(c: Comparator) -> None:
    c.packet(P, 10, pdata(0, A), 0.1, SUPER)
    c.packet(P, 11, pdata(3000, B), 0.1, SUPER)
    c.packet(S, 2, sdata(0, A[:1000]), 0.2)
    lent = c.lend(key(c))
    assert lent is not None
    back(c, lent)
    assert c.held_packets == 2 and c.held_bytes == 5000
    assert c.packet(S, 3, sdata(1000, A[1000:] + B), 0.6)[0] == Release((10, 11))


@pytest.mark.parametrize("scene", ["both ahead", "fin held", "svm copy again", "gap"])
def test_what_only_the_comparator_can_take_is_not_lent(c: Comparator, scene: str) -> None:
    if scene == "both ahead":  # the SVM's bytes past a hole: no single side ahead
        c.packet(P, 10, pdata(0, A), 0.1)
        c.packet(S, 2, sdata(3100, b"x" * 10), 0.2)
    elif scene == "fin held":  # waits for the SVM's FIN, not for bytes
        c.packet(P, 10, pdata(0, A, flags=ACK | PSH | FIN), 0.1)
        c.packet(S, 2, sdata(0, A), 0.2)
    elif scene == "svm copy again":  # a retransmission kept as a packet with no new bytes
        c.packet(P, 10, pdata(0, A), 0.1)
        c.packet(S, 2, sdata(3000, B), 0.2)
        c.packet(S, 3, sdata(3000, B[:100]), 0.2)
    else:  # the PVM's next packet came before one it skipped
        c.packet(P, 10, pdata(3000, B), 0.1)
        c.packet(P, 11, pdata(0, A[:10]), 0.1)
    held, nbytes = c.held_packets, c.held_bytes
    assert c.lend(key(c)) is None
    assert (c.held_packets, c.held_bytes) == (held, nbytes)
