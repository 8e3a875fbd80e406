"""Playbooks for resegmenting: a super-packet the SVM stopped inside goes back to the kernel.

The scene is the stall of docs/PROXY.md, "Bulk transfers": the PVM's GSO super-packet is
held whole, the SVM (congestion-limited) has sent only its first part and waits for ACKs
the client cannot send. With ``resegment_after`` the comparator withdraws the held packets
(Resegment) once the super-packet waited that long, and their segments (copy=SEGMENT)
release as far as the SVM matched.
"""

from __future__ import annotations

import pytest

from colo_proxy.compare import (
    SEGMENT,
    SUPER,
    Comparator,
    CompareConfig,
    Drop,
    Release,
    RequestCheckpoint,
    Resegment,
    Wakeup,
)
from tests.unit.proxy.compare.test_tcp import CACK, P, S, established, pdata, sdata

AFTER = 0.05
BODY = bytes(range(256)) * 16  # 4096 bytes: a super-packet of about three segments
MSS = 1448


@pytest.fixture
def c() -> Comparator:
    cmp = Comparator(CompareConfig(compare_timeout=1.0, resegment_after=AFTER))
    established(cmp)
    return cmp


def stalled(c: Comparator) -> None:
    """PVM super-packet 10 held; the SVM sent its first MSS and stopped."""
    assert c.packet(P, 10, pdata(0, BODY), 0.1, SUPER) == [Wakeup(0.1 + AFTER)]
    assert c.packet(S, 2, sdata(0, BODY[:MSS]), 0.1) == [Drop((2,))]


def acts(cmds: list[object]) -> list[object]:
    """Commands other than the timer's (its wakeups are lower bounds, tested elsewhere)."""
    return [x for x in cmds if not isinstance(x, Wakeup)]


def segments(first_id: int, data: bytes, at: int = 0) -> list[tuple[int, bytes]]:
    """The kernel's segments of `data` (stream offset `at`), with fresh ids."""
    return [(first_id + i, pdata(at + off, data[off : off + MSS]))
            for i, off in enumerate(range(0, len(data), MSS))]


def test_a_stalled_super_packet_is_resegmented_and_released_as_far_as_matched(
        c: Comparator) -> None:
    stalled(c)
    assert not c.tick(0.1 + AFTER - 0.001)  # not yet
    assert c.tick(0.1 + AFTER)[:1] == [Resegment((10,))]
    assert c.held_packets == 0
    segs = segments(100, BODY)
    # The first segment's bytes are matched: out at once; the others wait for the SVM.
    assert c.packet(P, *segs[0], 0.16, SEGMENT) == [Release((100,))]
    assert c.packet(P, *segs[1], 0.16, SEGMENT) == []
    assert c.packet(P, *segs[2], 0.16, SEGMENT) == []
    # The client's ACK reaches the SVM, which goes on: the rest matches and goes out.
    assert c.packet(S, 3, sdata(MSS, BODY[MSS:]), 0.17) == [Release((101, 102)), Drop((3,))]
    assert c.held_packets == 0 and c.held_bytes == 0
    assert c.stats.resegmented_packets == 1


def test_without_resegment_after_the_same_stall_times_out() -> None:
    """The negative control: the stall the feature exists for."""
    c = Comparator(CompareConfig(compare_timeout=1.0, resegment_after=0))
    established(c)
    assert c.packet(P, 10, pdata(0, BODY), 0.1, SUPER) == []
    c.packet(S, 2, sdata(0, BODY[:MSS]), 0.11)
    assert c.tick(1.1) == [RequestCheckpoint("timeout", c.flows()[0], None)]


def test_a_super_packet_matched_in_time_is_not_resegmented(c: Comparator) -> None:
    c.packet(P, 10, pdata(0, BODY), 0.1, SUPER)
    assert c.packet(S, 2, sdata(0, BODY), 0.12) == [Release((10,)), Drop((2,))]
    assert acts(c.tick(0.1 + AFTER)) == []
    assert c.stats.resegmented_packets == 0


def test_a_plain_packet_is_never_resegmented(c: Comparator) -> None:
    """Only a super-packet can be split; a late SVM on one segment just waits."""
    assert c.packet(P, 10, pdata(0, BODY[:MSS]), 0.1) == []
    assert acts(c.tick(0.1 + AFTER)) == []
    assert acts(c.tick(0.5)) == []


def test_a_super_packet_waiting_only_for_the_svm_ack_is_not_resegmented(
        c: Comparator) -> None:
    # The PVM acknowledged client data the SVM has not: segments would carry the same ACK.
    c.packet(P, 10, pdata(0, BODY, ack=CACK + 5), 0.1, SUPER)
    c.packet(S, 2, sdata(0, BODY), 0.11)
    assert c.held_packets == 1
    cmds = c.tick(0.1 + AFTER)
    assert not any(isinstance(x, Resegment) for x in cmds)


def test_a_lagging_flow_sends_its_output_after_the_copies_until_the_svm_caught_up(
        c: Comparator) -> None:
    stalled(c)
    tail = b"T" * 100
    assert c.packet(P, 11, pdata(len(BODY), tail), 0.12) == []  # held behind 10
    assert c.tick(0.1 + AFTER)[0] == Resegment((10, 11))
    # While lagging, new PVM output of the flow takes the same way at once (held here it
    # would come before the copies and wait for bytes the SVM cannot send yet).
    more = b"M" * 50
    assert c.packet(P, 12, pdata(len(BODY) + 100, more), 0.16) == [Resegment((12,))]
    for pid, pkt in segments(100, BODY):
        c.packet(P, pid, pkt, 0.17, SEGMENT)
    c.packet(P, 103, pdata(len(BODY), tail), 0.17, SEGMENT)
    assert c.packet(P, 104, pdata(len(BODY) + 100, more), 0.17, SEGMENT) == []
    # Every copy is back but the SVM is still behind: lagging goes on.
    assert c.packet(P, 13, pdata(len(BODY) + 150, b"n"), 0.18) == [Resegment((13,))]
    assert c.packet(P, 105, pdata(len(BODY) + 150, b"n"), 0.18, SEGMENT) == []
    assert c.held_packets == 5  # 101, 102, 103, 104, 105
    c.packet(S, 3, sdata(MSS, BODY[MSS:] + tail + more + b"n"), 0.19)
    assert c.held_packets == 0
    # The SVM caught up: the flow holds its packets as usual again.
    assert acts(c.packet(P, 14, pdata(len(BODY) + 151, b"o"), 0.2)) == []
    assert c.held_packets == 1
    assert c.stats.resegmented_packets == 4


def test_copies_count_no_byte_twice(c: Comparator) -> None:
    """The withdrawn bytes stay stored; their copies add nothing to compare."""
    stalled(c)
    stored = c.held_bytes
    c.tick(0.1 + AFTER)
    for pid, pkt in segments(100, BODY):
        c.packet(P, pid, pkt, 0.16, SEGMENT)
    assert c.held_bytes == stored


def test_a_differing_copy_byte_is_not_compared_against_the_pvm_itself(c: Comparator) -> None:
    """The SVM's bytes are compared with the PVM's first copy: a divergence is still found."""
    stalled(c)
    c.tick(0.1 + AFTER)
    for pid, pkt in segments(100, BODY):
        c.packet(P, pid, pkt, 0.16, SEGMENT)
    bad = bytearray(BODY[MSS:])
    bad[7] ^= 0xFF
    cmds = c.packet(S, 3, sdata(MSS, bytes(bad)), 0.17)
    assert RequestCheckpoint("payload", c.flows()[0], MSS + 7) in cmds


def test_a_checkpoint_ends_the_resegmenting(c: Comparator) -> None:
    stalled(c)
    c.tick(0.1 + AFTER)
    c.checkpoint_done(0.2)
    # A copy after the checkpoint is committed output: released at once.
    pid, pkt = segments(100, BODY)[2]
    assert c.packet(P, pid, pkt, 0.21, SEGMENT) == [Release((pid,))]
    # And new output is held again, not sent away.
    assert acts(c.packet(P, 20, pdata(len(BODY), b"x"), 0.22)) == []
    assert c.held_packets == 1


def test_a_flow_with_copies_on_their_way_is_not_lent(c: Comparator) -> None:
    stalled(c)
    c.tick(0.1 + AFTER)
    c.packet(S, 3, sdata(MSS, BODY[MSS:]), 0.12)  # the SVM caught up meanwhile
    key = next(iter(c._tcp))
    assert c.lend(key) is None
    for pid, pkt in segments(100, BODY):
        c.packet(P, pid, pkt, 0.16, SEGMENT)
    assert c.lend(key) is not None


def test_the_check_waits_for_a_super_packet_behind_a_plain_one(c: Comparator) -> None:
    assert c.packet(P, 9, pdata(0, b"p" * 10), 0.1) == []
    assert c.packet(P, 10, pdata(10, BODY), 0.1, SUPER) == [Wakeup(0.1 + AFTER)]
    c.packet(S, 2, sdata(0, b"p" * 10 + BODY[:MSS]), 0.11)  # releases 9; 10 stalls
    # Counted from the SVM's last bytes (0.11), not from 10's arrival.
    assert not acts(c.tick(0.1 + AFTER))
    assert c.tick(0.11 + AFTER)[:1] == [Resegment((10,))]


def test_an_svm_late_but_still_sending_is_not_taken_for_a_stalled_one(
        c: Comparator) -> None:
    """The SVM started its answer later than the PVM (its guest ran later) and sends on:
    the PVM's super-packets waited longer than resegment_after, but each SVM packet moves
    the check on, so nothing is withdrawn and the flow stays whole (the 1 MB downloads of
    docs/BENCHMARKS.md, "1 MB downloads on new connections")."""
    released = c.stats.released_packets
    assert c.packet(P, 10, pdata(0, BODY), 0.1, SUPER) == [Wakeup(0.1 + AFTER)]
    assert c.packet(P, 11, pdata(len(BODY), BODY), 0.1, SUPER) == []
    t = 0.3  # the SVM's first bytes, long after both arrived
    for i, off in enumerate(range(0, 2 * len(BODY), MSS)):
        c.packet(S, 2 + i, sdata(off, (BODY + BODY)[off : off + MSS]), t)
        assert not any(isinstance(x, Resegment) for x in c.tick(t + AFTER * 0.9))
        t += AFTER * 0.9
    assert c.held_packets == 0
    assert c.stats.resegmented_packets == 0
    assert c.stats.released_packets == released + 2


def test_an_svm_that_stops_inside_after_a_late_start_is_resegmented(c: Comparator) -> None:
    c.packet(P, 10, pdata(0, BODY), 0.1, SUPER)
    c.packet(S, 2, sdata(0, BODY[:MSS]), 0.3)  # late, then stopped inside 10
    assert not acts(c.tick(0.3 + AFTER - 0.001))
    assert c.tick(0.3 + AFTER)[:1] == [Resegment((10,))]


def test_the_wait_counts_from_svm_bytes_that_match_a_whole_pvm_segment(
        c: Comparator) -> None:
    """The comparator's inline path (an SVM segment equal to the PVM's oldest unmatched
    one) moves the check on too. The lab's downloads: the PVM's headers, then its body as
    super-packets, held until the SVM's headers came 100 ms later."""
    head = b"H" * 70
    c.packet(P, 10, pdata(0, head), 0.2)
    c.packet(P, 11, pdata(70, BODY), 0.21, SUPER)
    while (cmds := c.tick(0.3)) and any(isinstance(x, Wakeup) and x.at <= 0.3 for x in cmds):
        pass  # the checks due meanwhile: the headers, not a super-packet, are the oldest
    assert c.packet(S, 2, sdata(0, head), 0.3) == [Release((10,)), Drop((2,))]
    assert not acts(c.tick(0.3 + AFTER - 0.001))
    assert c.packet(S, 3, sdata(70, BODY), 0.3 + AFTER - 0.0005) == [Release((11,)), Drop((3,))]
    assert c.stats.resegmented_packets == 0


def test_a_tick_that_finds_both_due_resegments_rather_than_times_out(c: Comparator) -> None:
    """The compare timeout came due before the resegment check now due with it: the
    check goes first, whatever the order they were armed in (a flow given back by the
    fast path has its timers re-armed at the give-back)."""
    assert c.packet(P, 10, pdata(0, BODY), 0.1, SUPER) == [Wakeup(0.1 + AFTER)]
    # The SVM goes on sending, never all of it; each tick finds the check not yet due
    # and moves it on (the last one to 1.11, after the packet's timeout at 1.1).
    for at, tick, (a, b) in ((0.12, 0.169, (0, 1000)), (0.5, 0.549, (1000, 2000)),
                             (1.06, 1.08, (2000, 3000))):
        c.packet(S, int(at * 100), sdata(a, BODY[a:b]), at)
        assert not acts(c.tick(tick))
    cmds = c.tick(1.2)  # the timeout (1.1) and the check (1.11) are both due
    assert Resegment((10,)) in cmds
    assert not [x for x in cmds if isinstance(x, RequestCheckpoint)]
