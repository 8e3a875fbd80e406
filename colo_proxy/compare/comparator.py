"""The comparator: packets and clock ticks in, commands out. No I/O, no clock of its own.

Theory of operation
-------------------
``packet`` parses just enough of an IP packet to find its flow and what to compare, then
hands it to the flow (``_flows``). Flows live in two insertion-ordered tables (TCP,
datagram), kept in least-recently-used order, so eviction looks only at the front. A flow
that holds something is also in ``_busy`` (so a checkpoint touches only those) and, while it
holds PVM packets, has one entry in a timer heap whose deadline is a lower bound of its
oldest packet's timeout; ``tick`` re-arms entries that fired early. Checkpoints bump an epoch
and every other flow resynchronises lazily when it next sees a packet, so neither a checkpoint
nor a timeout ever walks the whole table.

Each divergent flow yields one ``RequestCheckpoint`` and then waits for ``checkpoint_done``;
the orchestrator coalesces requests. Command order in one returned list: Release, Drop,
Resegment, RequestCheckpoint(s), Wakeup.

With ``resegment_after`` a flow holding a super-packet also has a second kind of heap entry,
the resegment check (``_flows`` says what it decides).

One responsibility, and so one module despite its length: the flow tables, timers and
epochs that every packet and tick goes through; what one flow does is ``_flows``.
"""

from __future__ import annotations

import heapq
import itertools
import struct
from collections import OrderedDict
from typing import TypeVar

from colo_proxy.compare import parse
from colo_proxy.compare._flows import (
    COMPARE,
    DIVERGED,
    PASS,
    SPLITTABLE,
    DatagramFlow,
    Divergence,
    FlowState,
    HeldTcp,
    TcpFlow,
)
from colo_proxy.compare._flows import HALF as _HALF
from colo_proxy.compare._flows import MASK as _MASK
from colo_proxy.compare._flows import NO_ACK as _NO_ACK
from colo_proxy.compare._flows import NO_TOP as _NO_TOP
from colo_proxy.compare._stream import Segment
from colo_proxy.compare.config import CompareConfig, Policy
from colo_proxy.compare.events import (
    SUPER,
    Command,
    Drop,
    Flow,
    LentFlow,
    PacketId,
    Reason,
    Release,
    RequestCheckpoint,
    Resegment,
    Side,
    Wakeup,
    flow_from_key,
)

# IPv4 header with the first 14 bytes of TCP when IHL is 5 (the usual case): version/IHL,
# total length, flags/fragment offset, protocol, ports, seq, ack, data offset, flags.
_V4TCP = struct.Struct("!BxHxxHxB10xHHIIBB")
_TCP = struct.Struct("!4xIIBB")
_NO_PORTS = parse.NO_PORTS
_UNPARSEABLE_KEY = b""
_UNPARSEABLE_FLOW = Flow(-1, "", 0, "", 0)


def _signed(x: int) -> int:
    """A 32-bit difference as a signed number."""
    return ((x + _HALF) & _MASK) - _HALF


_F = TypeVar("_F", bound=FlowState)
_RELEASE_MOVE = 1.0  # seconds between LRU moves of a busy flow (only ordering, not safety)


# The counters of CompareStats by name (a module constant: compiled classes have no
# __slots__ attribute to list them at run time).
_COUNTERS: tuple[str, ...] = (
    "checkpoint_requests",
    "dropped_packets",
    "flows_created",
    "flows_evicted",
    "flows_over_limit",
    "fragments",
    "internal_errors",
    "non_ip",
    "other_protocol",
    "parse_errors",
    "pass_through_packets",
    "primary_packets",
    "released_packets",
    "resegmented_packets",
    "secondary_packets",
)


def _lent_held(
    held: list[HeldTcp] | None, segs: list[Segment] | None, m: int, top: int
) -> tuple[tuple[PacketId, int, int, float, bool, bytes], ...] | None:
    """The held packets with their unmatched bytes, if ``segs`` (one per packet that has
    bytes past ``m``, contiguous from it to ``top``) can be split so; else None."""
    out: list[tuple[PacketId, int, int, float, bool, bytes]] = []
    i = 0
    pos = m
    for pid, end, aoff, need, t in held or ():
        if need & ~SPLITTABLE:
            return None  # waits for flags or a checkpoint: the comparator's to decide
        data = b""
        if end > pos:
            if segs is None or i >= len(segs):
                return None
            start, data = segs[i]
            i += 1
            if start > pos or start + len(data) != end:
                return None
            pos = end
        out.append((pid, end, aoff, t, bool(need & SPLITTABLE), data))
    if pos != top or (segs is not None and i != len(segs)):
        return None
    return tuple(out)


def _lent_kept(
    ids: list[tuple[PacketId, int]] | None, segs: list[Segment] | None, m: int, top: int
) -> tuple[tuple[int, bytes], ...] | None:
    """The SVM's kept segments, one per kept packet and contiguous from ``m`` to ``top``;
    None otherwise (a packet whose bytes an earlier copy brought is not one of them)."""
    if not ids and not segs:
        return () if top == m else None
    if ids is None or segs is None or len(ids) != len(segs):
        return None
    pos = m
    for (_sid, end), (start, data) in zip(ids, segs, strict=True):
        if start > pos or start + len(data) != end or end <= pos:
            return None
        pos = end
    return tuple(segs) if pos == top else None


class CompareStats:
    """Counters for metrics export; plain attributes, read them at scrape time."""

    __slots__ = ("divergences", *_COUNTERS)

    def __init__(self) -> None:
        self.primary_packets = 0
        self.secondary_packets = 0
        self.released_packets = 0
        self.resegmented_packets = 0  # held PVM packets sent back to be segmented
        self.dropped_packets = 0
        self.parse_errors = 0  # IP packets too short or inconsistent to read (incl. non_ip)
        self.non_ip = 0  # first nibble neither 4 nor 6
        self.internal_errors = 0  # exceptions caught at the core's boundary (bugs)
        self.fragments = 0
        self.other_protocol = 0
        self.pass_through_packets = 0
        self.checkpoint_requests = 0
        self.flows_created = 0
        self.flows_evicted = 0
        self.flows_over_limit = 0  # a flow was created while the table was full
        self.divergences: dict[str, int] = {r.value: 0 for r in Reason}

    def as_dict(self) -> dict[str, int]:
        out = {name: getattr(self, name) for name in _COUNTERS}
        for reason, n in self.divergences.items():
            out[f"divergences_{reason}"] = n
        return out


class Comparator:
    """Compare PVM output with SVM output; see the module docstring and docs/COMPARE.md."""

    def __init__(self, config: CompareConfig | None = None) -> None:
        self.config = config = config if config is not None else CompareConfig()
        self.stats = CompareStats()
        self._timeout = config.compare_timeout
        self._reseg = config.resegment_after
        self._window = config.datagram_window
        self._tcp: OrderedDict[bytes, TcpFlow] = OrderedDict()
        self._dgram: OrderedDict[bytes, DatagramFlow] = OrderedDict()
        self._busy: set[FlowState] = set()
        # (deadline, tie-break, flow, kind): kind 0 the compare timeout, 1 a resegment check.
        self._heap: list[tuple[float, int, FlowState, int]] = []
        self._seq = itertools.count()
        self._epoch = 0
        self._now = float("-inf")
        self._wakeup_at: float | None = None
        self._npkts = 0  # held/kept packets over all flows
        self._nbytes = 0  # stored payload bytes over all flows
        self._orphans: list[PacketId] = []  # PVM packets held for a checkpoint, no flow
        self._orphan_requested = False
        self._requests = 0  # checkpoint requests since the last checkpoint_done
        self._fast_ok = True
        self._max_fp = config.max_flow_packets
        self._max_fb = config.max_flow_bytes
        self._max_tp = config.max_total_packets
        self._max_tb = (
            config.max_total_bytes
        )  # tests turn the inlined fast path off to compare both paths

    # -- public API ------------------------------------------------------------------------
    @property
    def checkpoint_pending(self) -> bool:
        """A checkpoint was requested and ``checkpoint_done`` has not been called since."""
        return self._requests > 0

    @property
    def flow_count(self) -> int:
        return len(self._tcp) + len(self._dgram)

    @property
    def held_packets(self) -> int:
        return self._npkts + len(self._orphans)

    @property
    def held_bytes(self) -> int:
        return self._nbytes

    def packet(
        self, side: Side, packet_id: PacketId, ip_packet: bytes, now: float, copy: int = 0
    ) -> list[Command]:
        """One packet a VM sent, from its IP header on. Never raises for any input bytes.

        ``copy`` (PVM only): events.WHOLE, SUPER (a GSO super-packet the adapter can have
        segmented) or SEGMENT (a segment of a packet sent back by Resegment).
        """
        if now > self._now:
            self._now = now
        else:
            now = self._now
        try:
            # The steady state, inlined because it runs for nearly every packet: IPv4 without
            # options, TCP with ACK and no SYN/FIN/RST, in-order data on an established flow,
            # PVM segment first and then its SVM twin with equal bytes. It must behave exactly
            # like TcpFlow.primary/secondary (a test replays random traffic through both);
            # anything else goes to _general.
            if len(ip_packet) >= 40 and ip_packet[0] == 0x45 and self._fast_ok and not copy:
                _, tot, frag, proto, _sp, _dp, seq, ack, off, flags = _V4TCP.unpack_from(ip_packet)
                doff = (off >> 2) & 0x3C
                if (
                    proto == 6
                    and flags & 0x17 == 0x10
                    and not frag & 0x3FFF
                    and tot <= len(ip_packet)
                    and 20 <= doff <= tot - 20
                ):
                    key = ip_packet[12:24]
                    f = self._tcp.get(key)
                    if f is not None and f.epoch == self._epoch and not f.state:
                        m = f.matched
                        if side:  # Side.SECONDARY: equal to the PVM's oldest unmatched segment?
                            ps = f.p_segs
                            ab = f.s_abase
                            base = f.s_base
                            if (
                                ps
                                and ab is not None
                                and base is not None
                                and m is not None
                                and f.s_segs is None
                                and f.p_fin is None
                                and not (seq - base - m) & _MASK
                            ):
                                pst, pd = ps[0]
                                n = len(pd)
                                # startswith at an offset compares in place: no copy of
                                # the SVM's payload on the hot path.
                                if (
                                    pst == m
                                    and n == tot - 20 - doff
                                    and ip_packet.startswith(pd, 20 + doff)
                                ):
                                    f.matched = m = m + n
                                    f.nbytes -= n
                                    self._nbytes -= n
                                    if m > f.s_top:
                                        f.s_top = m
                                        f.s_prog = now
                                    if len(ps) == 1:
                                        f.p_segs = None
                                    else:
                                        del ps[0]
                                    sack = f.s_ack
                                    if sack == _NO_ACK:
                                        f.s_ack = sack = _signed(ack - ab)
                                    else:
                                        d = (ack - ab - sack) & _MASK
                                        if d and d < _HALF:
                                            f.s_ack = sack = sack + d
                                    stats = self.stats
                                    stats.secondary_packets += 1
                                    stats.dropped_packets += 1
                                    held = f.held
                                    if held:
                                        pid, end, pa, need, _t = held[0]
                                        if end <= m and pa <= sack and not need & ~SPLITTABLE:
                                            if len(held) == 1:
                                                f.held = None
                                                f.npkts -= 1
                                                self._npkts -= 1
                                                stats.released_packets += 1
                                                return [Release((pid,)), Drop((packet_id,))]
                                            rel: list[PacketId] = []
                                            f._release(rel)
                                            self._npkts -= len(rel)
                                            stats.released_packets += len(rel)
                                            return [Release(tuple(rel)), Drop((packet_id,))]
                                    return [Drop((packet_id,))]
                        else:
                            base = f.p_base
                            ab = f.p_abase
                            top = f.p_top
                            if (
                                base is not None
                                and ab is not None
                                and m is not None
                                and f.s_segs is None
                                and f.s_fin is None
                                and f.s_rst == _NO_TOP
                                and not (seq - base - top) & _MASK
                                and top >= m
                                and f.reseg == _NO_TOP
                            ):
                                sack = f.s_ack
                                aref = sack if sack != _NO_ACK else 0
                                aoff = aref + ((ack - ab - aref + _HALF) & _MASK) - _HALF
                                if aoff > f.p_amax:
                                    f.p_amax = aoff
                                if now - f.last > _RELEASE_MOVE:
                                    self._tcp.move_to_end(key)
                                f.last = now
                                stats = self.stats
                                stats.primary_packets += 1
                                n = tot - 20 - doff
                                held = f.held
                                if n:
                                    end = f.p_top = top + n
                                    data = ip_packet[20 + doff : tot]
                                    if f.p_segs is None:
                                        f.p_segs = [(top, data)]
                                    else:
                                        f.p_segs.append((top, data))
                                    f.nbytes += n
                                    self._nbytes += n
                                elif not held and top <= m and aoff <= sack:
                                    stats.released_packets += 1
                                    return [Release((packet_id,))]
                                else:
                                    end = top
                                if held is None:
                                    f.held = [(packet_id, end, aoff, 0, now)]
                                else:
                                    held.append((packet_id, end, aoff, 0, now))
                                f.npkts += 1
                                self._npkts += 1
                                if (
                                    f.timer
                                    and f.busy
                                    and f.npkts <= self._max_fp
                                    and f.nbytes <= self._max_fb
                                    and self._npkts <= self._max_tp
                                    and self._nbytes <= self._max_tb
                                ):
                                    return []
                                return self._held_more(f, now)
            return self._general(side, packet_id, ip_packet, now, copy)
        except Exception:  # the boundary of the core: count and fail safe, never propagate
            self.stats.internal_errors += 1
            out: list[Command] = []
            self._orphan(side, packet_id, Reason.UNPARSEABLE, [], [], out)
            return self._finish([], [packet_id] if side else [], out)

    def _general(
        self, side: Side, pid: PacketId, pkt: bytes, now: float, copy: int = 0
    ) -> list[Command]:
        """Every packet the inlined fast path does not take."""
        rel: list[PacketId] = []
        drop: list[PacketId] = []
        out: list[Command] = []
        try:
            if side == Side.PRIMARY:
                self.stats.primary_packets += 1
            else:
                self.stats.secondary_packets += 1
            n = len(pkt)
            if n >= 40 and pkt[0] == 0x45:
                _, tot, frag, proto, _sp, _dp, seq, ack, off, flags = _V4TCP.unpack_from(pkt)
                if proto == 6 and not frag & 0x3FFF and 40 <= tot <= n:
                    doff = (off >> 2) & 0x3C
                    if doff >= 20 and 20 + doff <= tot:
                        self._tcp_packet(
                            side,
                            pid,
                            pkt[12:24],
                            seq,
                            ack,
                            flags,
                            pkt[20 + doff : tot],
                            now,
                            rel,
                            drop,
                            out,
                            copy,
                        )
                        return self._finish(rel, drop, out)
            self._slow_packet(side, pid, pkt, now, rel, drop, out, copy)
        except Exception:  # the boundary of the core: count and fail safe, never propagate
            self.stats.internal_errors += 1
            self._fail_safe(side, pid, rel, drop, out)
        return self._finish(rel, drop, out)

    def _held_more(self, f: TcpFlow, now: float) -> list[Command]:
        """After the PVM fast path held a packet: bounds, busy set, timer."""
        cfg = self.config
        if (
            f.npkts > cfg.max_flow_packets
            or f.nbytes > cfg.max_flow_bytes
            or self._npkts > cfg.max_total_packets
            or self._nbytes > cfg.max_total_bytes
        ):
            out: list[Command] = []
            drop: list[PacketId] = []
            self._diverge(f, Reason.QUEUE_FULL, None, drop, out)
            if not f.busy:
                f.busy = True
                self._busy.add(f)
            return self._finish([], drop, out)
        if not f.busy:
            f.busy = True
            self._busy.add(f)
        if not f.timer:
            deadline = now + self._timeout
            self._arm(f, deadline)
            if self._wakeup_at is None or deadline < self._wakeup_at:
                self._wakeup_at = deadline
                return [Wakeup(deadline)]
        return []

    def tick(self, now: float) -> list[Command]:
        """The clock: time out held packets, forget idle flows, ask for the next tick."""
        if now > self._now:
            self._now = now
        else:
            now = self._now
        rel: list[PacketId] = []
        drop: list[PacketId] = []
        out: list[Command] = []
        try:
            if self._wakeup_at is not None and now >= self._wakeup_at:
                self._wakeup_at = None
            heap = self._heap
            timeout = self._timeout
            due: list[tuple[float, int, FlowState, int]] = []
            while heap and heap[0][0] <= now:
                due.append(heapq.heappop(heap))
            # Resegment checks before timeouts: a packet both due to be withdrawn and
            # timed out is withdrawn (its segments wait afresh), whichever was armed first,
            # so a decision never depends on when a timer happened to be armed (the fast
            # path's give-back re-arms them).
            for _d, _s, f, kind in due:
                if kind:
                    f.lagtimer = False
                    if isinstance(f, TcpFlow):
                        self._lag_check(f, now, out)
            for _d, _s, f, kind in due:
                if kind:
                    continue
                f.timer = False
                if f.state != COMPARE:
                    continue
                t = f.oldest()
                if t is None:
                    continue
                if t + timeout <= now:
                    if isinstance(f, DatagramFlow):
                        reason, offset = f.mismatch()
                    else:
                        reason, offset = Reason.TIMEOUT, None
                    self._diverge(f, reason, offset, drop, out)
                else:
                    self._arm(f, t + timeout)
            self._sweep(self._tcp, now, 64)
            self._sweep(self._dgram, now, 64)
        except Exception:
            self.stats.internal_errors += 1
        return self._finish(rel, drop, out)

    def checkpoint_done(self, now: float) -> list[Command]:
        """The SVM now holds the PVM's state: release all held, drop all kept, start afresh."""
        if now > self._now:
            self._now = now
        rel: list[PacketId] = []
        drop: list[PacketId] = []
        self._epoch += 1
        epoch = self._epoch
        for f in self._busy:
            f.flush(rel, drop)
            f.resync(epoch)
            f.busy = False
        self._busy.clear()
        for entry in self._heap:
            entry[2].timer = False
            entry[2].lagtimer = False
        self._heap.clear()
        rel.extend(self._orphans)
        self._orphans = []
        self._orphan_requested = False
        self._npkts = 0
        self._nbytes = 0
        self._requests = 0
        return self._finish(rel, drop, [])

    # -- lending a flow to a fast path -----------------------------------------------------
    def lend(self, key: bytes) -> LentFlow | None:
        """Hand an IPv4 TCP flow's state to a fast path, or None if it cannot take it.

        It can when the flow is comparing, this epoch, the SVM's ACK known, no FIN or RST
        on either side, not lagging, its held packets wait for nothing but bytes and ACKs,
        and at most one side is ahead of the matched offset, with its unmatched bytes
        stored whole per packet from there on (a bulk flow between two super-packets,
        whichever side sent first). Until ``take_back`` the flow holds and keeps nothing
        here, is not evicted, and the caller must not give this comparator a packet of it.
        """
        f = self._tcp.get(key)
        if (
            f is None
            or len(key) != 12
            or f.lent
            or f.state != COMPARE
            or f.epoch != self._epoch
            or f.reseg != _NO_TOP
        ):
            return None
        m, pb, sb, pab, sab = f.matched, f.p_base, f.s_base, f.p_abase, f.s_abase
        if m is None or pb is None or sb is None or pab is None or sab is None:
            return None
        p_top, s_top = f.p_top, f.s_top
        if (
            p_top < m
            or s_top < m
            or (p_top != m and s_top != m)
            or f.s_ack == _NO_ACK
            or f.p_fin is not None
            or f.s_fin is not None
            or f.p_rst != _NO_TOP
            or f.s_rst != _NO_TOP
        ):
            return None
        held = _lent_held(f.held, f.p_segs, m, p_top)
        kept = _lent_kept(f.s_ids, f.s_segs, m, s_top)
        if held is None or kept is None:
            return None
        nbytes = sum(len(h[5]) for h in held) + sum(len(d) for _s, d in kept)
        if nbytes != f.nbytes or len(held) + len(kept) != f.npkts:
            return None  # stored otherwise than one segment per packet: stays here
        f.lent = True
        self._npkts -= f.npkts
        self._nbytes -= f.nbytes
        f.npkts = 0
        f.nbytes = 0
        f.held = None
        f.p_segs = None
        f.s_segs = None
        f.s_ids = None
        if f.busy:
            f.busy = False
            self._busy.discard(f)
        return LentFlow(pb, sb, pab, sab, m, f.s_ack, f.p_amax, p_top, s_top, f.s_prog,
                        held, kept)

    def take_back(
        self,
        key: bytes,
        matched: int,
        p_top: int,
        s_top: int,
        s_ack: int,
        p_amax: int,
        held: list[tuple[PacketId, int, int, float, bool]],
        p_segs: list[tuple[int, bytes]],
        s_kept: list[tuple[PacketId, int, bytes]],
        now: float,
        s_prog: float = -1.0,
    ) -> list[Command]:
        """Install the state a fast path reached for a lent flow; it compares here again.

        held: PVM packets still held (id, stream end, ACK offset, arrival time, whether
        a super-packet the adapter can have segmented); p_segs:
        their bytes not yet matched (start, bytes); s_kept: SVM packets whose bytes are
        not yet matched (id, start, bytes); s_prog: when the SVM last sent new bytes
        while lent (-1.0: not since the lend). Raises KeyError for a flow not lent.
        """
        f = self._tcp.get(key)
        if f is None or not f.lent:
            raise KeyError(key)
        f.lent = False
        if now > self._now:
            self._now = now
        f.matched = matched
        f.p_top = p_top
        f.s_top = s_top
        if s_prog > f.s_prog:
            f.s_prog = s_prog
        f.s_ack = s_ack
        f.p_amax = p_amax
        f.held = [
            (pid, end, aoff, SPLITTABLE if split else 0, t) for pid, end, aoff, t, split in held
        ] or None
        f.p_segs = list(p_segs) or None
        f.s_segs = [(start, data) for _sid, start, data in s_kept] or None
        f.s_ids = [(sid, start + len(data)) for sid, start, data in s_kept] or None
        npkts = len(held) + len(s_kept)
        nbytes = sum(len(d) for _s, d in p_segs) + sum(len(d) for _i, _s, d in s_kept)
        self._npkts += npkts - f.npkts
        self._nbytes += nbytes - f.nbytes
        f.npkts = npkts
        f.nbytes = nbytes
        if self._now - f.last > _RELEASE_MOVE:
            self._tcp.move_to_end(key)
        f.last = self._now
        if npkts and not f.busy:
            f.busy = True
            self._busy.add(f)
        if held and not f.timer:
            self._arm(f, held[0][3] + self._timeout)
        if held and self._reseg and not f.lagtimer and f.splittable_held():
            since = f.lag_since()
            assert since is not None  # held
            self._arm_lag(f, since + self._reseg)
        return self._finish([], [], [])

    def flows(self) -> list[Flow]:
        """Names of the flows in the table (for diagnostics; walks the table)."""
        return [flow_from_key(6, k) for k in self._tcp] + [
            self._flow_name(f) for f in self._dgram.values()
        ]

    # -- TCP -------------------------------------------------------------------------------
    def _tcp_packet(
        self,
        side: Side,
        pid: PacketId,
        key: bytes,
        seq: int,
        ack: int,
        flags: int,
        data: bytes,
        now: float,
        rel: list[PacketId],
        drop: list[PacketId],
        out: list[Command],
        copy: int = 0,
    ) -> None:
        f = self._lookup(self._tcp, TcpFlow, key, 6, key, now)
        p0 = f.npkts
        b0 = f.nbytes
        if side == Side.PRIMARY:
            again: list[PacketId] = []
            div = f.primary(pid, seq, ack, flags, data, now, rel, drop, copy, again)
            if again:
                self.stats.resegmented_packets += len(again)
                out.append(Resegment(tuple(again)))
        else:
            div = f.secondary(pid, seq, ack, flags, data, now, rel, drop)
        self._after(f, p0, b0, div, now, drop, out)
        # Armed when a super-packet is held (never scanning the held list per packet); the
        # check re-arms itself while one is held.
        if copy == SUPER and self._reseg and not f.lagtimer and f.state == COMPARE and f.held:
            self._arm_lag(f, now + self._reseg)

    def _after(
        self,
        f: FlowState,
        p0: int,
        b0: int,
        div: Divergence | None,
        now: float,
        drop: list[PacketId],
        out: list[Command],
    ) -> None:
        """Account, bound, arm the timer and report, after a flow took a packet."""
        self._npkts += f.npkts - p0
        self._nbytes += f.nbytes - b0
        if div is not None:
            self._reported(f, div[0], div[1], out)
        elif f.npkts:
            cfg = self.config
            if f.state == COMPARE and (
                f.npkts > cfg.max_flow_packets
                or f.nbytes > cfg.max_flow_bytes
                or self._npkts > cfg.max_total_packets
                or self._nbytes > cfg.max_total_bytes
            ):
                self._diverge(f, Reason.QUEUE_FULL, None, drop, out)
            elif not f.timer and f.state == COMPARE:
                t = f.oldest()
                if t is not None:
                    self._arm(f, t + self._timeout)
        if f.npkts and not f.busy:
            f.busy = True
            self._busy.add(f)

    # -- everything but IPv4 TCP without options -------------------------------------------
    def _slow_packet(
        self,
        side: Side,
        pid: PacketId,
        pkt: bytes,
        now: float,
        rel: list[PacketId],
        drop: list[PacketId],
        out: list[Command],
        copy: int = 0,
    ) -> None:
        kind, proto, addrs, l4, tot, extra = parse.locate(pkt)
        if kind == parse.FRAGMENT:
            self.stats.fragments += 1
            self._policy(
                side,
                pid,
                proto,
                addrs,
                extra + pkt[l4:tot],
                self.config.fragment_policy,
                now,
                rel,
                drop,
                out,
            )
            return
        if kind != parse.L4:
            if kind == parse.NON_IP:
                self.stats.non_ip += 1
            self._unparseable(side, pid, pkt, now, rel, drop, out)
            return
        size = tot - l4
        if proto == 6:
            if size < 20:
                self._unparseable(side, pid, pkt, now, rel, drop, out)
                return
            seq, ack, off, flags = _TCP.unpack_from(pkt, l4)
            doff = (off >> 2) & 0x3C
            if doff < 20 or doff > size:
                self._unparseable(side, pid, pkt, now, rel, drop, out)
                return
            self._tcp_packet(
                side,
                pid,
                addrs + pkt[l4 : l4 + 4],
                seq,
                ack,
                flags,
                pkt[l4 + doff : tot],
                now,
                rel,
                drop,
                out,
                copy,
            )
        elif proto == 17:
            if size < 8:
                self._unparseable(side, pid, pkt, now, rel, drop, out)
                return
            # Ports are in the key, the length follows from the payload, and the checksum
            # may be left partial by offload: compare the payload only.
            self._datagram(
                side, pid, 17, addrs + pkt[l4 : l4 + 4], pkt[l4 + 8 : tot], now, rel, drop, out
            )
        elif proto == 1 or proto == 58:
            if size < 4:
                self._unparseable(side, pid, pkt, now, rel, drop, out)
                return
            # Type, code and the rest of the message; not the checksum (offload, see UDP).
            self._datagram(
                side,
                pid,
                proto,
                addrs + _NO_PORTS,
                pkt[l4 : l4 + 2] + pkt[l4 + 4 : tot],
                now,
                rel,
                drop,
                out,
            )
        else:
            self.stats.other_protocol += 1
            self._policy(
                side, pid, proto, addrs, pkt[l4:tot], self.config.other_policy, now, rel, drop, out
            )

    def _policy(
        self,
        side: Side,
        pid: PacketId,
        proto: int,
        addrs: bytes,
        body: bytes,
        policy: Policy,
        now: float,
        rel: list[PacketId],
        drop: list[PacketId],
        out: list[Command],
    ) -> None:
        self._by_policy(policy, Reason.POLICY, side, pid, proto, addrs + _NO_PORTS, body, now,
                        rel, drop, out)

    def _by_policy(
        self,
        policy: Policy,
        reason: Reason,
        side: Side,
        pid: PacketId,
        proto: int,
        key: bytes,
        body: bytes,
        now: float,
        rel: list[PacketId],
        drop: list[PacketId],
        out: list[Command],
    ) -> None:
        """Compare as a datagram, pass, or hand to the checkpoint (reason), as configured."""
        if policy == Policy.COMPARE:
            self._datagram(side, pid, proto, key, body, now, rel, drop, out)
        elif policy == Policy.PASS:
            self.stats.pass_through_packets += 1
            (rel if side == Side.PRIMARY else drop).append(pid)
        else:
            self._orphan(side, pid, reason, rel, drop, out)

    def _unparseable(
        self,
        side: Side,
        pid: PacketId,
        pkt: bytes,
        now: float,
        rel: list[PacketId],
        drop: list[PacketId],
        out: list[Command],
    ) -> None:
        self.stats.parse_errors += 1
        self._by_policy(self.config.unparseable_policy, Reason.UNPARSEABLE, side, pid, -1,
                        _UNPARSEABLE_KEY, bytes(pkt), now, rel, drop, out)

    def _fail_safe(
        self,
        side: Side,
        pid: PacketId,
        rel: list[PacketId],
        drop: list[PacketId],
        out: list[Command],
    ) -> None:
        """After an internal error: whatever happened to the packet, hold it for a checkpoint."""
        if pid in rel or pid in drop:
            return
        self._orphan(side, pid, Reason.UNPARSEABLE, rel, drop, out)

    def _orphan(
        self,
        side: Side,
        pid: PacketId,
        reason: Reason,
        rel: list[PacketId],
        drop: list[PacketId],
        out: list[Command],
    ) -> None:
        """Hold a PVM packet outside any flow until the next checkpoint (requested once)."""
        if side != Side.PRIMARY:
            drop.append(pid)
            return
        self._orphans.append(pid)
        self.stats.divergences[reason] += 1
        if not self._orphan_requested:
            self._orphan_requested = True
            self._request(reason, None, None, out)

    # -- datagrams -------------------------------------------------------------------------
    def _datagram(
        self,
        side: Side,
        pid: PacketId,
        proto: int,
        rest: bytes,
        body: bytes,
        now: float,
        rel: list[PacketId],
        drop: list[PacketId],
        out: list[Command],
    ) -> None:
        key = bytes((proto & 0xFF,)) + rest
        f = self._lookup(self._dgram, DatagramFlow, key, proto, rest, now)
        p0 = f.npkts
        b0 = f.nbytes
        if side == Side.PRIMARY:
            div = f.primary(pid, body, now, self._window, rel, drop)
        else:
            div = f.secondary(pid, body, self._window, rel, drop)
        self._after(f, p0, b0, div, now, drop, out)

    # -- flow table ------------------------------------------------------------------------
    def _initial_state(self, proto: int, rest: bytes) -> int:
        allow = self.config.pass_through
        if allow and rest:
            flow = flow_from_key(proto, rest)
            if any(m.matches(flow) for m in allow):
                return PASS
        return COMPARE

    def _lookup(
        self,
        table: OrderedDict[bytes, _F],
        cls: type[_F],
        key: bytes,
        proto: int,
        rest: bytes,
        now: float,
    ) -> _F:
        """The flow for ``key``, created if new, resynchronised after a checkpoint."""
        f = table.get(key)
        if f is None:
            f = cls(key, proto, now, self._epoch, self._initial_state(proto, rest))
            self._add_flow(table, key, f, now)
            return f
        if f.epoch != self._epoch:
            f.resync(self._epoch)
        if now - f.last > _RELEASE_MOVE:
            table.move_to_end(key)
        f.last = now
        return f

    def _add_flow(self, table: OrderedDict[bytes, _F], key: bytes, f: _F, now: float) -> None:
        self.stats.flows_created += 1
        # Evicting a little at every creation keeps the table bounded without a sweep.
        self._sweep(table, now, 2)
        if self.flow_count >= self.config.max_flows:
            self._evict_for_room(table)
        table[key] = f

    def _sweep(self, table: OrderedDict[bytes, _F], now: float, budget: int) -> None:
        cfg = self.config
        while table and budget > 0:
            budget -= 1
            key, f = next(iter(table.items()))
            if f.npkts or f.state == DIVERGED or f.lent:
                return
            limit = cfg.closed_timeout if f.is_closed() else cfg.idle_timeout
            if now - f.last < limit:
                return
            del table[key]
            self._forget(f)

    def _evict_for_room(self, table: OrderedDict[bytes, _F]) -> None:
        for _ in range(8):
            if not table:
                break
            key, f = next(iter(table.items()))
            if f.npkts or f.state == DIVERGED or f.lent:
                table.move_to_end(key)
                continue
            del table[key]
            self._forget(f)
            return
        self.stats.flows_over_limit += 1

    def _forget(self, f: FlowState) -> None:
        self.stats.flows_evicted += 1
        if f.busy:
            self._busy.discard(f)
            f.busy = False

    # -- checkpoint requests and timers ----------------------------------------------------
    def _diverge(
        self,
        f: FlowState,
        reason: str,
        offset: int | None,
        drop: list[PacketId],
        out: list[Command],
    ) -> None:
        p0 = f.npkts
        b0 = f.nbytes
        f.diverge(drop)
        self._npkts += f.npkts - p0
        self._nbytes += f.nbytes - b0
        self._reported(f, reason, offset, out)

    def _reported(self, f: FlowState, reason: str, offset: int | None, out: list[Command]) -> None:
        self.stats.divergences[reason] += 1
        self._request(reason, self._flow_name(f), offset, out)

    def _request(
        self, reason: str, flow: Flow | None, offset: int | None, out: list[Command]
    ) -> None:
        self.stats.checkpoint_requests += 1
        self._requests += 1
        out.append(RequestCheckpoint(reason, flow, offset))

    def _flow_name(self, f: FlowState) -> Flow:
        if isinstance(f, TcpFlow):
            return flow_from_key(6, f.key)
        if f.proto == -1:
            return _UNPARSEABLE_FLOW
        return flow_from_key(f.proto, f.key[1:])

    def _arm(self, f: FlowState, deadline: float) -> None:
        f.timer = True
        heapq.heappush(self._heap, (deadline, next(self._seq), f, 0))

    def _arm_lag(self, f: FlowState, deadline: float) -> None:
        f.lagtimer = True
        heapq.heappush(self._heap, (deadline, next(self._seq), f, 1))

    def _lag_check(self, f: TcpFlow, now: float, out: list[Command]) -> None:
        """A resegment check came due: withdraw the flow's held packets, or check again."""
        again: list[PacketId] = []
        p0 = f.npkts
        if f.resegment(now, self._reseg, again):
            self._npkts += f.npkts - p0
            self.stats.resegmented_packets += len(again)
            out.append(Resegment(tuple(again)))
        elif f.state == COMPARE and f.splittable_held():
            # Not yet, or not the oldest yet: look again when the oldest could be due.
            # When it is not due yet, exactly then (the SVM's bytes moved it on); when it is
            # (the packet waits for an ACK or flags), no sooner than a quarter period.
            t = f.lag_since()
            due = now + self._reseg if t is None else t + self._reseg
            if due <= now:
                due = now + self._reseg / 4
            self._arm_lag(f, due)

    def _finish(
        self, rel: list[PacketId], drop: list[PacketId], out: list[Command]
    ) -> list[Command]:
        """Assemble the returned commands, with a Wakeup when the earliest deadline moved."""
        cmds: list[Command] = []
        if rel:
            self.stats.released_packets += len(rel)
            cmds.append(Release(tuple(rel)))
        if drop:
            self.stats.dropped_packets += len(drop)
            cmds.append(Drop(tuple(drop)))
        if out:
            cmds.extend(out)
        heap = self._heap
        if heap and (self._wakeup_at is None or heap[0][0] < self._wakeup_at):
            self._wakeup_at = heap[0][0]
            cmds.append(Wakeup(heap[0][0]))
        return cmds
