"""nfnetlink_queue encoding, parsing and the batch-verdict planner."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from colo_proxy.wire import nfqueue_msgs as p


def _packet_msg(pid: int, payload: bytes, *, gso: bool = False, cap: int | None = None) -> bytes:
    attrs = p._attr(p.NFQA_PACKET_HDR, struct.pack("!IHBx", pid, 0x0800, 2))
    attrs += p._attr(p.NFQA_PAYLOAD, payload)
    if gso:
        attrs += p._attr(p.NFQA_SKB_INFO, struct.pack("!I", p.NFQA_SKB_GSO))
    if cap is not None:
        attrs += p._attr(p.NFQA_CAP_LEN, struct.pack("!I", cap))
    body = struct.pack("!BBH", 2, 0, 7) + attrs
    return struct.pack("=IHHII", 16 + len(body), (3 << 8) | 0, 0, 0, 0) + body


def _decode_verdicts(buf: bytes) -> list[tuple[str, int, int]]:
    out = []
    off = 0
    while off < len(buf):
        mlen, mtype = struct.unpack_from("=IH", buf, off)
        verdict, pid = struct.unpack_from("!II", buf, off + 24)
        kind = "batch" if mtype & 0xFF == p.NFQNL_MSG_VERDICT_BATCH else "single"
        out.append((kind, pid, verdict))
        off += mlen
    return out


def test_parse_reads_id_payload_and_gso() -> None:
    buf = _packet_msg(5, b"\x45abc", gso=True) + _packet_msg(6, b"xyz", cap=100)
    a, b = list(p.parse(buf))
    assert isinstance(a, p.QueuedPacket) and isinstance(b, p.QueuedPacket)
    assert (a.packet_id, a.payload, a.gso, a.truncated) == (5, b"\x45abc", True, False)
    assert (b.packet_id, b.truncated, b.cap_len) == (6, True, 100)


def test_parse_reads_acks() -> None:
    msg = struct.pack("=IHHII", 36, p.NLMSG_ERROR, 0, 9, 0) + struct.pack("=i", -16) + bytes(16)
    assert list(p.parse(msg)) == [p.Ack(9, 16)]


@given(st.binary(max_size=300))
def test_parse_never_raises_on_junk(junk: bytes) -> None:
    list(p.parse(junk))
    list(p.parse(_packet_msg(1, b"x") + junk))


def test_prefix_release_is_one_batch_verdict() -> None:
    pl = p.VerdictPlanner()
    for i in range(1, 6):
        pl.held(i)
    assert pl.plan([1, 2, 3]) == (3, [], [])
    assert pl.outstanding() == [4, 5]


def test_release_past_a_held_packet_uses_single_verdicts() -> None:
    pl = p.VerdictPlanner()
    for i in range(1, 6):
        pl.held(i)
    # 3 stays held: a batch up to 5 would release it too.
    assert pl.plan([1, 2, 4, 5]) == (2, [4, 5], [])
    assert pl.plan([3]) == (3, [], [])
    assert len(pl) == 0


def test_drops_are_never_covered_by_a_batch() -> None:
    pl = p.VerdictPlanner()
    for i in range(1, 5):
        pl.held(i)
    assert pl.plan([1, 3, 4], drop=[2]) == (1, [3, 4], [2])


def test_encode_builds_netlink_verdicts() -> None:
    pl = p.VerdictPlanner()
    for i in (10, 11, 12):
        pl.held(i)
    msgs = _decode_verdicts(pl.encode(7, [10, 12]))
    assert msgs == [("single", 12, p.NF_ACCEPT), ("batch", 10, p.NF_ACCEPT)]


def test_requeue_sends_ids_on_to_the_other_queue_in_order_before_the_batch() -> None:
    pl = p.VerdictPlanner()
    for i in (10, 11, 12, 13):
        pl.held(i)
    msgs = _decode_verdicts(pl.encode(7, [10, 13], requeue=[12, 11], to=9))
    to_9 = p.NF_QUEUE | (9 << 16)
    # 11 and 12 leave queue 7 in the order given (their segments queue in that order), and
    # no batch verdict passes over them: 13 goes alone.
    assert msgs == [("single", 13, p.NF_ACCEPT), ("single", 12, to_9), ("single", 11, to_9),
                    ("batch", 10, p.NF_ACCEPT)]
    assert len(pl) == 0
    assert pl.encode(7, [], requeue=[11], to=9) == b""  # decided already


def test_unknown_ids_are_ignored() -> None:
    pl = p.VerdictPlanner()
    pl.held(1)
    assert pl.plan([99]) == (None, [], [])


@given(st.sets(st.integers(1, 40)), st.data())
def test_plan_is_exactly_the_release(held: set[int], data: st.DataObject) -> None:
    """Applying the planned verdicts the way the kernel does accepts exactly the release."""
    pl = p.VerdictPlanner()
    for i in sorted(held):
        pl.held(i)
    acc = data.draw(st.sets(st.sampled_from(sorted(held)))) if held else set()
    drp = data.draw(st.sets(st.sampled_from(sorted(held - acc)))) if held - acc else set()
    batch, singles, drops = pl.plan(sorted(acc), sorted(drp))
    kernel = set(held)
    accepted = set(singles)
    kernel -= set(singles) | set(drops)
    if batch is not None:
        covered = {i for i in kernel if i <= batch}
        accepted |= covered
        kernel -= covered
    assert accepted == acc
    assert set(drops) == drp
    assert kernel == held - acc - drp == set(pl.outstanding())


@given(st.sets(st.integers(1, 40), min_size=1), st.data())
def test_single_release_encodes_like_the_general_plan(held: set[int], data: st.DataObject) -> None:
    """encode()'s one-id path sends exactly the verdict plan() would (per verdict kind)."""
    fast, general = p.VerdictPlanner(), p.VerdictPlanner()
    for i in sorted(held):
        fast.held(i)
        general.held(i)
    for pid in data.draw(st.lists(st.sampled_from([*sorted(held), 99]), max_size=8)):
        batch, singles, _ = general.plan([pid])
        want = [("single", i, p.NF_ACCEPT) for i in singles]
        want += [("batch", batch, p.NF_ACCEPT)] if batch is not None else []
        assert _decode_verdicts(fast.encode(7, [pid])) == want
        assert fast.outstanding() == general.outstanding()


def _nfq_id_after(packet_id: int, max_id: int) -> bool:
    """The kernel's `nfq_id_after` (net/netfilter/nfnetlink_queue.c): `(int)(id - max) > 0`."""
    diff = (packet_id - max_id) & 0xFFFFFFFF
    return diff != 0 and diff < 0x80000000


def _kernel_verdicts(queue: list[int], batch: int | None, singles: list[int],
                     drops: list[int]) -> tuple[set[int], list[int]]:
    """What the kernel accepts for these verdicts, and what it still holds (in queue order).

    A batch verdict walks the queue oldest first and stops at the first id after the
    batch id (`nfqnl_recv_verdict_batch`); single verdicts find their id anywhere.
    """
    accepted = set(singles)
    left = [i for i in queue if i not in accepted and i not in drops]
    if batch is not None:
        taken = 0
        while taken < len(left) and not _nfq_id_after(left[taken], batch):
            taken += 1
        accepted |= set(left[:taken])
        left = left[taken:]
    return accepted, left


def test_batch_across_the_wrap_leaves_the_held_packet() -> None:
    """0xffffffff is held while 0 and 1, queued after it, are released."""
    pl = p.VerdictPlanner()
    queue = [0xFFFFFFFF, 0, 1]
    for i in queue:
        pl.held(i)
    accepted, left = _kernel_verdicts(queue, *pl.plan([0, 1]))
    assert accepted == {0, 1}
    assert left == [0xFFFFFFFF] == pl.outstanding()


@given(st.one_of(st.integers(0xFFFFFFD8, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF)),
       st.integers(1, 40), st.data())
def test_plan_is_exactly_the_release_at_any_id(start: int, count: int,
                                                data: st.DataObject) -> None:
    """Over any stretch of ids (wrapping or not), the kernel accepts exactly the release."""
    queue = [(start + k) & 0xFFFFFFFF for k in range(count)]
    pl = p.VerdictPlanner()
    for i in queue:
        pl.held(i)
    acc = data.draw(st.sets(st.sampled_from(queue)))
    rest = [i for i in queue if i not in acc]
    drp = data.draw(st.sets(st.sampled_from(rest))) if rest else set()
    batch, singles, drops = pl.plan(data.draw(st.permutations(sorted(acc))), sorted(drp))
    accepted, left = _kernel_verdicts(queue, batch, singles, drops)
    assert accepted == acc
    assert set(drops) == drp
    assert left == [i for i in queue if i not in acc | drp] == pl.outstanding()


@given(st.integers(0xFFFFFFF0, 0xFFFFFFFF), st.integers(2, 30), st.data())
def test_single_release_across_the_wrap(start: int, count: int, data: st.DataObject) -> None:
    """encode()'s one-id path never sends a batch that covers a held packet across the wrap."""
    queue = [(start + k) & 0xFFFFFFFF for k in range(count)]
    pl = p.VerdictPlanner()
    for i in queue:
        pl.held(i)
    left = list(queue)
    for pid in data.draw(st.permutations(queue)):
        [(kind, vid, _)] = _decode_verdicts(pl.encode(7, [pid]))
        if kind == "batch":
            _, left = _kernel_verdicts(left, vid, [], [])
        else:
            left.remove(vid)
        assert pid not in left
        assert left == pl.outstanding()
