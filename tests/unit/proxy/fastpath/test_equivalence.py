"""The C fast path decides nothing the comparator would not: the same packet streams fed to
the comparator alone and through the fast path (lending, give-back, comparator) give the
same releases and the same checkpoint requests after every event, and hold the same.

Without a build of the fast path these skip, except under COLO_REQUIRE_COMPILED=1
(`make test`), where the bootstrap must have built it.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from colo_proxy import fastpath
from colo_proxy.compare import (
    SUPER,
    WHOLE,
    Comparator,
    CompareConfig,
    Release,
    RequestCheckpoint,
    Resegment,
    Side,
)
from colo_proxy.fastpath import lending
from tests.support.packets import ACK, FIN, PSH, RST, SYN, tcp, udp

if not fastpath.available():
    if os.environ.get("COLO_REQUIRE_COMPILED") == "1":
        raise RuntimeError("COLO_REQUIRE_COMPILED=1 but no fast path build matches the "
                           "sources: run scripts/build-fastpath (the bootstrap does)")
    pytest.skip("no fast path build (scripts/build-fastpath)", allow_module_level=True)

P, S = Side.PRIMARY, Side.SECONDARY
CACK = 5001


@dataclass(frozen=True)
class Ev:
    kind: str  # "pkt", "tick", "done"
    now: float
    side: Side = P
    pid: int = 0
    packet: bytes = b""
    gso: bool = False  # a PVM super-packet the proxy could have segmented (SUPER)


Outcome = list[tuple[list[int], list[tuple[str, object]]]]


def _outcome(cmds: list) -> tuple[list[int], list[tuple[str, object]]]:
    """Releases (ids), checkpoint requests and resegmented ids (as requests: each flow's
    in order, the flows in any order, as one tick may find several due)."""
    rel = [i for c in cmds if isinstance(c, Release) for i in c.packet_ids]
    req: list[tuple[str, object]] = [
        (str(c.reason), c.offset) for c in cmds if isinstance(c, RequestCheckpoint)]
    req += sorted(("resegment", c.packet_ids) for c in cmds if isinstance(c, Resegment))
    return rel, req


def run_comparator(cfg: CompareConfig, events: list[Ev]) -> tuple[Outcome, int]:
    cmp = Comparator(cfg)
    out: Outcome = []
    for e in events:
        if e.kind == "pkt":
            cmds = cmp.packet(e.side, e.pid, e.packet, e.now, SUPER if e.gso else WHOLE)
        elif e.kind == "tick":
            cmds = cmp.tick(e.now)
        else:
            cmds = cmp.checkpoint_done(e.now)
        rel, req = _outcome(cmds)
        out.append((sorted(rel), req))
    return out, cmp.held_packets


def run_fast(cfg: CompareConfig, events: list[Ev]) -> tuple[Outcome, int, dict[str, int]]:
    cmp = Comparator(cfg)
    fp = fastpath.FastPath(cfg.max_flow_packets, cfg.max_flow_bytes)
    svm_ids = itertools.count(1_000_000)
    out: Outcome = []
    for e in events:
        cmds: list = []
        taken = False
        if e.kind == "pkt":
            taken = (fp.pvm(e.pid, e.packet, e.now, e.gso) if e.side is P
                     else fp.svm(e.packet, e.now))
        elif e.kind == "tick":
            fp.expire(e.now)  # the proxy gives back before the comparator's timeout
        else:
            fp.reclaim_all()
        rel = fp.released()
        for rec in fp.records():
            assert isinstance(rec, fastpath.GivenBack)
            cmds += lending.give_back(cmp, rec, lambda: next(svm_ids), e.now)
        if e.kind == "pkt":
            if not taken:
                cmds += cmp.packet(e.side, e.pid, e.packet, e.now, SUPER if e.gso else WHOLE)
            key = lending.tcp_key(e.packet)
            if key is not None:
                lending.lend(cmp, fp, [key], e.now, lambda: next(svm_ids))
        elif e.kind == "tick":
            cmds += cmp.tick(e.now)
        else:
            cmds += cmp.checkpoint_done(e.now)
        r, req = _outcome(cmds)
        out.append((sorted(rel + r), req))
    return out, cmp.held_packets + fp.held_packets, fp.stats()


# -- streams -------------------------------------------------------------------------------

@st.composite
def side_packets(draw: st.DrawFn, data: bytes, isn: int, dport: int, close: int,
                 ) -> list[bytes]:
    """One side's output of one flow: handshake, data in segments with growing ACKs and pure
    ACKs between them, maybe a retransmission or a swap, maybe a FIN or an RST."""
    pkts = [tcp(isn, CACK, SYN | ACK, dport=dport)]
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=8))))
    bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
    ack = CACK
    for a, b in itertools.pairwise(bounds):
        ack += draw(st.sampled_from([0, 0, 10]))
        if draw(st.integers(0, 4)) == 0:
            pkts.append(tcp(isn + 1 + a, ack, ACK, dport=dport))
        pkts.append(tcp(isn + 1 + a, ack, ACK | PSH, data[a:b], dport=dport))
    end = isn + 1 + len(data)
    if draw(st.integers(0, 5)) == 0:
        ack += 10
        pkts.append(tcp(end, ack, ACK, dport=dport))
    if close == 1:
        pkts.append(tcp(end, ack, FIN | ACK, dport=dport))
    elif close == 2:
        pkts.append(tcp(end, ack, RST | ACK, dport=dport))
    if len(pkts) > 3 and draw(st.integers(0, 4)) == 0:
        i = draw(st.integers(1, len(pkts) - 1))
        pkts.append(pkts[i])  # a retransmission
    if len(pkts) > 3 and draw(st.integers(0, 5)) == 0:
        i = draw(st.integers(1, len(pkts) - 2))
        pkts[i], pkts[i + 1] = pkts[i + 1], pkts[i]
    return pkts


@st.composite
def streams(draw: st.DrawFn) -> list[Ev]:
    sides: list[list[tuple[Side, bytes]]] = []
    for dport in range(40000, 40000 + draw(st.integers(1, 2))):
        data = draw(st.binary(min_size=1, max_size=4000))
        sdata = data
        if draw(st.integers(0, 4)) == 0:  # the SVM diverges somewhere
            i = draw(st.integers(0, len(data) - 1))
            sdata = data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1 :]
        p_isn = draw(st.integers(0, 0xFFFFFFFF))
        s_isn = p_isn if draw(st.booleans()) else draw(st.integers(0, 0xFFFFFFFF))
        pc = draw(st.sampled_from([0, 0, 0, 1, 2]))
        sc = pc if draw(st.integers(0, 3)) else draw(st.sampled_from([0, 1, 2]))
        sides.append([(P, p) for p in draw(side_packets(data, p_isn, dport, pc))])
        sides.append([(S, p) for p in draw(side_packets(sdata, s_isn, dport, sc))])
    if draw(st.booleans()):
        sides.append([(P, udp(b"x")), (S, udp(b"x"))])
    # Interleave, each side keeping its own order; ticks and checkpoints among them.
    evs: list[Ev] = []
    now = 0.0
    pid = 0
    while any(sides):
        now += draw(st.sampled_from([0.0, 0.001, 0.01, 0.3, 0.7]))
        r = draw(st.integers(0, 19))
        if r == 0:
            evs.append(Ev("tick", now))
            continue
        if r == 1:
            evs.append(Ev("done", now))
            continue
        live = [s for s in sides if s]
        side, pkt = live[draw(st.integers(0, len(live) - 1))].pop(0)
        pid += 1
        # Some PVM data segments stand for super-packets (the kernel's GSO mark): the
        # fast path must hand that mark back with the flow, or the comparator would never
        # resegment what C held.
        gso = side is P and len(pkt) > 40 and draw(st.integers(0, 2)) == 0
        evs.append(Ev("pkt", now, side, pid, pkt, gso))
    evs.append(Ev("tick", now + 5.0))
    return evs


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(streams())
def test_fast_path_decides_as_the_comparator(events: list[Ev]) -> None:
    cfg = CompareConfig()
    want, held = run_comparator(cfg, events)
    got, fast_held, _ = run_fast(cfg, events)
    assert got == want
    assert fast_held == held


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(streams())
def test_same_decisions_at_tight_limits(events: list[Ev]) -> None:
    """The per-flow limits: the fast path gives the flow back before it would cross one."""
    cfg = CompareConfig(max_flow_packets=3, max_flow_bytes=700)
    want, held = run_comparator(cfg, events)
    got, fast_held, _ = run_fast(cfg, events)
    assert got == want
    assert fast_held == held


def _exchange(n: int, p_isn: int = 1000, s_isn: int = 9000) -> list[Ev]:
    """A keep-alive flow: n request/response exchanges, PVM first, then the SVM's twin."""
    evs = [Ev("pkt", 0.0, P, 1, tcp(p_isn, CACK, SYN | ACK)),
           Ev("pkt", 0.0, S, 0, tcp(s_isn, CACK, SYN | ACK))]
    pid = 1
    for i in range(n):
        body = b"HTTP/1.1 200 OK\r\n\r\nreply %03d" % i
        off = 1 + i * len(body)
        ack = CACK + 10 * (i + 1)
        pid += 1
        evs.append(Ev("pkt", i * 0.01, P, pid, tcp(p_isn + off, ack, ACK | PSH, body)))
        evs.append(Ev("pkt", i * 0.01, S, 0, tcp(s_isn + off, ack, ACK | PSH, body)))
    return evs


def test_steady_exchanges_are_taken_in_c() -> None:
    """The case it is for: after the first exchange every PVM reply is released in C."""
    events = _exchange(50)
    want, _ = run_comparator(CompareConfig(), events)
    got, held, stats = run_fast(CompareConfig(), events)
    assert got == want and held == 0
    assert stats["released"] == 49 and stats["pvm_packets"] == 49
    assert sum(v for k, v in stats.items() if k.startswith("handbacks_")) == 0


def test_a_differing_byte_goes_back_to_the_comparator() -> None:
    events = _exchange(3)
    last = events[-1]
    bad = bytearray(last.packet)
    bad[-1] ^= 1
    events[-1] = Ev("pkt", last.now, S, 0, bytes(bad))
    want, _ = run_comparator(CompareConfig(), events)
    got, _, stats = run_fast(CompareConfig(), events)
    assert got == want
    size = len(last.packet) - 40
    assert want[-1][1] == [("payload", 3 * size - 1)]
    assert stats["handbacks_mismatch"] == 1


def _bulk(p_size: int, s_size: int, svm_leads: bool, n: int = 60_000) -> list[Ev]:
    """One download whose two sides never meet in sync: the PVM in super-packets of
    p_size, the SVM in segments of s_size, one side always a packet ahead of the other."""
    data = bytes((i * 7 + i // 251) & 0xFF for i in range(n))
    p_isn, s_isn = 1000, 9000
    cuts: list[tuple[int, int, Side, bytes]] = []
    for side, size, isn in ((P, p_size, p_isn), (S, s_size, s_isn)):
        lead = (side is S) == svm_leads
        for a in range(0, n, size):
            b = min(n, a + size)
            # The leading side sends a packet once the other reached its start; the other
            # sends up to its end. Ties: the leading side first.
            cuts.append((a if lead else b, 0 if lead else 1, side,
                         tcp(isn + 1 + a, CACK, ACK | PSH, data[a:b])))
    evs = [Ev("pkt", 0.0, P, 1, tcp(p_isn, CACK, SYN | ACK)),
           Ev("pkt", 0.0, S, 0, tcp(s_isn, CACK, SYN | ACK))]
    for i, (_at, _o, side, pkt) in enumerate(sorted(cuts, key=lambda c: c[:2])):
        evs.append(Ev("pkt", 0.001 * i, side, i + 2, pkt, side is P))
    evs.append(Ev("tick", 0.001 * len(cuts)))
    return evs


@pytest.mark.parametrize(("p_size", "s_size", "svm_leads"), [
    (8000, 1448, False), (8000, 1448, True), (5000, 7000, False), (5000, 7000, True)])
def test_a_bulk_flow_out_of_sync_is_lent_with_what_it_holds(
        p_size: int, s_size: int, svm_leads: bool) -> None:
    """Super-packets of other sizes on the two sides, never in sync between them: the flow
    goes to C with its held packets or kept segments and stays there."""
    events = _bulk(p_size, s_size, svm_leads)
    want, held = run_comparator(CompareConfig(), events)
    got, fast_held, stats = run_fast(CompareConfig(), events)
    assert got == want and fast_held == held == 0
    packets = -(-60_000 // p_size)
    assert sum(len(r) for r, _ in want) == packets + 1  # and the SYN-ACK
    # All but the first one or two, before the flow's first match (before: none, or
    # only while the SVM happened to catch up between two super-packets).
    assert stats["lent"] == 1 and stats["pvm_packets"] >= packets - 2
    assert sum(v for k, v in stats.items() if k.startswith("handbacks_")) == 0


def test_a_flow_given_back_for_a_retransmission_is_lent_again() -> None:
    events = _bulk(8000, 1448, False)
    i = next(i for i, e in enumerate(events) if e.side is S and e.now > 0.02)
    events.insert(i + 1, events[i])  # the SVM sends one segment twice
    want, _ = run_comparator(CompareConfig(), events)
    got, held, stats = run_fast(CompareConfig(), events)
    assert got == want and held == 0
    assert stats["handbacks_order"] == 1 and stats["lent"] == 2
    assert stats["pvm_packets"] >= -(-60_000 // 8000) - 3


@pytest.mark.parametrize("why", ["not its id", "held too long"])
def test_a_flow_the_fast_path_must_not_take_stays_as_it_was(why: str) -> None:
    """A held id from the segmenting queue, or a packet older than the fast path's hold
    limit: lend gives the flow straight back, and the comparator decides as before."""
    events = _bulk(8000, 1448, False)
    cut = next(i for i, e in enumerate(events) if e.side is P and e.now > 0.01)
    cmp = Comparator(CompareConfig())
    fp = fastpath.FastPath(100, 1 << 20)
    for e in events[:cut + 1]:
        cmp.packet(e.side, e.pid, e.packet, e.now, SUPER if e.gso else WHOLE)
    held, nbytes = cmp.held_packets, cmp.held_bytes
    assert held
    key = lending.tcp_key(events[cut].packet)
    assert key is not None
    ids = itertools.count(1_000_000)
    if why == "not its id":
        moved = lending.lend(cmp, fp, [key], 0.1, lambda: next(ids), lambda pid: pid > 10**9)
    else:
        moved = lending.lend(cmp, fp, [key], 0.1, lambda: next(ids), None, held_after=0.05)
    assert moved == [] and fp.lent_flows == 0
    assert (cmp.held_packets, cmp.held_bytes) == (held, nbytes)
    want, _ = run_comparator(CompareConfig(), events)
    rest = [_outcome(cmp.packet(e.side, e.pid, e.packet, e.now, SUPER if e.gso else WHOLE))
            for e in events[cut + 1 : -1]]
    assert [(sorted(r), q) for r, q in rest] == want[cut + 1 : -1]
    # At the end nothing is held: lent now, with nothing to hand over.
    assert lending.lend(cmp, fp, [key], 0.1, lambda: next(ids)) == [] and fp.lent_flows == 1
