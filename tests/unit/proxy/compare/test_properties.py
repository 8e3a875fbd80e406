"""Properties of the comparator, checked with hypothesis."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from colo_proxy.compare import (
    Command,
    Comparator,
    CompareConfig,
    Drop,
    Release,
    RequestCheckpoint,
    Side,
    Wakeup,
)
from tests.support.packets import ACK, PSH, SYN, tcp, tcp_flow, udp

P, S = Side.PRIMARY, Side.SECONDARY
CACK = 5001
FLOW = tcp_flow()

isns = st.integers(min_value=0, max_value=0xFFFFFFFF)
streams = st.binary(min_size=1, max_size=3000)


def cut(data: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    """Split a stream into (offset, bytes) segments at the given cut points."""
    points = sorted({c % len(data) for c in cuts} - {0})
    out = []
    prev = 0
    for p in [*points, len(data)]:
        out.append((prev, data[prev:p]))
        prev = p
    return out


def segments(draw: st.DrawFn, data: bytes, isn: int, side: Side) -> list[tuple[Side, bytes]]:
    segs = cut(data, draw(st.lists(st.integers(0, 10_000), max_size=12)))
    if draw(st.booleans()):  # a retransmission of some segment
        segs.append(segs[draw(st.integers(0, len(segs) - 1))])
    pkts = [(side, tcp(isn + 1 + off, CACK, ACK | PSH, d)) for off, d in segs]
    if side == S and draw(st.booleans()):  # the SVM's output may be reordered on arrival
        pkts = draw(st.permutations(pkts))
    return pkts


@st.composite
def two_runs(
    draw: st.DrawFn, svm_data: bytes | None = None
) -> tuple[bytes, list[tuple[Side, bytes]]]:
    data = draw(streams)
    p_isn, s_isn = draw(isns), draw(isns)
    ps = segments(draw, data, p_isn, P)
    ss = segments(draw, data, s_isn, S)
    # Interleave the two sides' packets, keeping each side's own order.
    order = draw(st.lists(st.booleans(), min_size=len(ps) + len(ss), max_size=len(ps) + len(ss)))
    merged: list[tuple[Side, bytes]] = []
    i = j = 0
    for take_p in order:
        if (take_p and i < len(ps)) or j >= len(ss):
            merged.append(ps[i])
            i += 1
        else:
            merged.append(ss[j])
            j += 1
    hs = [(P, tcp(p_isn, CACK, SYN | ACK)), (S, tcp(s_isn, CACK, SYN | ACK))]
    return data, hs + merged


def feed(c: Comparator, events: list[tuple[Side, bytes]], now: float = 0.0) -> list[Command]:
    out: list[Command] = []
    for i, (side, pkt) in enumerate(events):
        out += c.packet(side, i, pkt, now)
    return out


def requests(cmds: list[Command]) -> list[RequestCheckpoint]:
    return [c for c in cmds if isinstance(c, RequestCheckpoint)]


@given(two_runs())
@settings(max_examples=300, deadline=None)
def test_any_two_segmentations_never_diverge(run: tuple[bytes, list[tuple[Side, bytes]]]) -> None:
    _, events = run
    c = Comparator()
    cmds = feed(c, events)
    assert requests(cmds) == []
    released = [i for cmd in cmds if isinstance(cmd, Release) for i in cmd.packet_ids]
    dropped = [i for cmd in cmds if isinstance(cmd, Drop) for i in cmd.packet_ids]
    assert sorted(released) == sorted(i for i, (side, _) in enumerate(events) if side == P)
    assert sorted(dropped) == sorted(i for i, (side, _) in enumerate(events) if side == S)
    assert c.held_packets == 0 and c.held_bytes == 0


@given(two_runs(), st.integers(min_value=0), st.integers(1, 255))
@settings(max_examples=300, deadline=None)
def test_one_changed_byte_is_reported_at_its_offset(
    run: tuple[bytes, list[tuple[Side, bytes]]], where: int, delta: int
) -> None:
    data, events = run
    offset = where % len(data)
    changed = []
    for side, pkt in events:
        if side == S:
            # Patch the byte in whichever SVM segment carries stream offset `offset`.
            b = bytearray(pkt)
            seq = int.from_bytes(b[24:28], "big")
            base = int.from_bytes(events[1][1][24:28], "big") + 1
            start = (seq - base) & 0xFFFFFFFF
            payload_at = 20 + (b[32] >> 4) * 4
            if start <= offset < start + len(b) - payload_at:
                b[payload_at + offset - start] = (b[payload_at + offset - start] + delta) % 256
            pkt = bytes(b)
        changed.append((side, pkt))
    assert requests(feed(Comparator(), changed)) == [RequestCheckpoint("payload", FLOW, offset)]


@given(
    st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=8),
    st.floats(min_value=0.01, max_value=5.0),
)
@settings(max_examples=200, deadline=None)
def test_svm_delayed_past_the_timeout_gives_exactly_one_timeout(
    chunks: list[bytes], timeout: float
) -> None:
    c = Comparator(CompareConfig(compare_timeout=timeout))
    cmds: list[Command] = []
    wake: float | None = None

    def collect(new: list[Command]) -> None:
        nonlocal wake
        for cmd in new:
            if isinstance(cmd, Wakeup):
                wake = cmd.at
        cmds.extend(new)

    collect(c.packet(P, 0, tcp(99, CACK, SYN | ACK), 0.0))
    collect(c.packet(S, 0, tcp(77, CACK, SYN | ACK), 0.0))
    off = 0
    for i, chunk in enumerate(chunks, 1):
        t = i * timeout / (2 * len(chunks))
        while wake is not None and wake <= t:  # the caller honours every Wakeup
            at, wake = wake, None
            collect(c.tick(at))
        collect(c.packet(P, i, tcp(100 + off, CACK, ACK, chunk), t))
        off += len(chunk)
    late = 3 * timeout
    while wake is not None and wake <= late:
        at, wake = wake, None
        collect(c.tick(at))
    collect(c.packet(S, 1, tcp(78, CACK, ACK, b"".join(chunks)), late))
    collect(c.tick(late * 2))
    assert requests(cmds) == [RequestCheckpoint("timeout", FLOW, None)]


valid = st.sampled_from(
    [
        tcp(1, 2, ACK, b"abc"),
        tcp(1, 2, SYN),
        udp(b"x"),
        udp(b"y", v6=True),
        tcp(5, 6, ACK, b"six", v6=True),
    ]
)


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    pkt = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, 4))):
        pkt[draw(st.integers(0, len(pkt) - 1))] = draw(st.integers(0, 255))
    return bytes(pkt[: draw(st.integers(0, len(pkt)))])


@given(
    st.lists(
        st.tuples(
            st.sampled_from([P, S]), st.one_of(st.binary(max_size=80), mangled()), st.floats(0, 10)
        ),
        max_size=30,
    )
)
@settings(max_examples=500, deadline=None)
def test_arbitrary_bytes_never_raise(events: list[tuple[Side, bytes, float]]) -> None:
    c = Comparator(CompareConfig(max_flow_packets=3, datagram_window=2))
    for i, (side, pkt, t) in enumerate(events):
        assert isinstance(c.packet(side, i, pkt, t), list)
        assert isinstance(c.tick(t), list)
    c.checkpoint_done(11.0)
    assert c.stats.internal_errors == 0


@given(two_runs(), st.booleans(), st.integers(min_value=0))
@settings(max_examples=300, deadline=None)
def test_fast_path_behaves_like_the_general_path(
    run: tuple[bytes, list[tuple[Side, bytes]]], change: bool, where: int
) -> None:
    _, events = run
    if change:  # make the SVM differ somewhere, so divergence goes through both paths too
        k = where % len(events)
        side, pkt = events[k]
        events = [*events[:k], (side, pkt[:-1] + bytes([(pkt[-1] + 1) % 256])), *events[k + 1 :]]
    fast, general = Comparator(), Comparator()
    general._fast_ok = False
    for i, (side, pkt) in enumerate(events):
        t = i * 0.01
        assert fast.packet(side, i, pkt, t) == general.packet(side, i, pkt, t)
        assert fast.tick(t) == general.tick(t)
    assert fast.checkpoint_done(9.0) == general.checkpoint_done(9.0)
