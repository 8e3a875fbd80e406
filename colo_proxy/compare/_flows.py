"""Per-flow comparison state: TCP byte streams and datagram sets.

Theory of operation (TCP)
-------------------------
Each side's payload is placed in one coordinate system, the *stream offset*: 0 is the first
payload byte (ISN + 1) when that side's SYN was seen; otherwise both sides are assumed to
share one sequence space (true after a checkpoint, and in production where the rewriter turns
SVM sequence numbers into the PVM's) and the offset is taken from a common base. 32-bit
sequence numbers are unwrapped against the current position, so streams beyond 4 GiB and
retransmissions below it work.

``matched`` is the offset up to which both sides produced the same bytes (or a checkpoint
made them equal). Bytes beyond it wait in per-side sorted segment lists and are compared as
soon as both sides have them, whatever the segmentation. A PVM packet is released when
``matched`` reaches its end, the SVM's FIN/RST/SYN agree with its flags, and the SVM has
acknowledged client data at least as far as the packet's ACK.

ACK gating compares ACK numbers directly: both VMs receive the same client packets, so they
acknowledge in the client's sequence space, not their own. Only when the two replicas were fed
by different clients (replay of two separate runs) do the client ISNs differ; the ACK is then
taken relative to the ACK of that side's handshake, like the payload offset.

Held PVM packets are released in arrival order: releasing a later segment first would only
make the client see reordering and send duplicate ACKs.

Resegmenting (docs/PROXY.md, "Bulk transfers"): a GSO super-packet is released only once the
SVM has sent all of its bytes, and an SVM whose congestion window ends inside it waits for
ACKs of bytes the client never gets. When such a packet (``SPLITTABLE``) is the oldest held
one and still not matched to its end after ``resegment_after``, the flow gives up every held
packet (``resegment``): the adapter has the kernel segment them and queue them again, and
their bytes come back as ``SEGMENT`` copies, which release as far as the SVM matched. Their
bytes were stored when the packets first came, so the copies add nothing to compare (like
retransmissions). From then on the flow is *lagging*: every other PVM packet of it that
would be held takes the same way, so held bytes stay in stream order and an SVM that stays
behind (a smaller congestion window all along) costs no further wait. It ends once the
last withdrawn byte is back (``reseg_back``) and the SVM has matched up to it.

One responsibility, and so one module despite its length: the comparison state of a single
flow (TCP or datagram, sharing `FlowState`); the tables of flows are ``comparator``.
"""

from __future__ import annotations

from typing import Any

from colo_proxy.compare import _stream
from colo_proxy.compare._stream import Segment
from colo_proxy.compare.events import PacketId, Reason

MASK = 0xFFFFFFFF
HALF = 0x80000000
# "Nothing acknowledged yet" for the SVM, "no ACK to gate on" for a PVM packet.
NO_ACK = -(1 << 62)
NO_TOP = -(1 << 62)

# Flow states.
COMPARE = 0
DIVERGED = 1  # a checkpoint is due: hold PVM output, discard SVM output
PASS = 2  # allow-listed or policy: release and drop at once

# What a held PVM packet waits for besides payload and ACK.
NEED_SYN = 1
NEED_FIN = 2
NEED_RST = 4
NEED_CHECKPOINT = 8  # held while DIVERGED: only a checkpoint releases it
# Not a need: the held packet is a GSO super-packet the kernel can segment (events.SUPER).
SPLITTABLE = 16

# Copies of PVM packets (events.WHOLE, SUPER, SEGMENT; not imported: mypyc inlines these).
_SUPER = 1
_SEGMENT = 2

FIN = 0x01
SYN = 0x02
RST = 0x04
ACK = 0x10

Divergence = tuple[str, int | None]
# Held PVM TCP packet: (id, stream end, ACK offset, NEED_* bits, arrival time).
HeldTcp = tuple[PacketId, int, int, int, float]
# Held PVM datagram: (id, compared bytes, arrival time).
HeldDatagram = tuple[PacketId, bytes, float]


class FlowState:
    """What every flow has: identity, liveness, and bookkeeping for the comparator."""

    __slots__ = (
        "busy",
        "epoch",
        "held",
        "key",
        "lagtimer",
        "last",
        "lent",
        "nbytes",
        "npkts",
        "proto",
        "s_ids",
        "state",
        "timer",
    )
    # Held PVM packets (id first) and kept SVM packets (id first); None when empty, to keep
    # idle flows small.
    held: list[Any] | None
    s_ids: list[Any] | None

    def __init__(self, key: bytes, proto: int, now: float, epoch: int, state: int) -> None:
        self.key = key
        self.proto = proto
        self.last = now
        self.epoch = epoch
        self.state = state
        self.timer = False  # has an entry in the comparator's timer heap
        self.lagtimer = False  # has a resegment check in that heap (TCP only)
        self.busy = False  # is in the comparator's set of flows holding something
        self.lent = False  # a fast path holds its state (Comparator.lend): not to evict
        self.npkts = 0  # packets held (PVM) or kept (SVM)
        self.nbytes = 0  # payload bytes stored for comparison
        # TCP: held (id, stream end, ACK offset, NEED_* bits, arrival time), kept SVM
        # (id, stream end), dropped once matched reaches the end. Datagrams: held
        # (id, compared bytes, arrival time), kept SVM (id, compared bytes).
        self.held = None
        self.s_ids = None

    def oldest(self) -> float | None:
        """Arrival time of the oldest held PVM packet."""
        raise NotImplementedError

    def is_closed(self) -> bool:
        """The VM ended its side of the flow: a short linger is enough before forgetting it."""
        return False

    def flush(self, rel: list[PacketId], drop: list[PacketId]) -> None:
        """Checkpoint done: give up every held PVM packet and every kept SVM packet."""
        if self.held:
            rel.extend(h[0] for h in self.held)
        if self.s_ids:
            drop.extend(s[0] for s in self.s_ids)
        self.held = None
        self.s_ids = None
        self.npkts = 0
        self.nbytes = 0
        self._forget_data()

    def diverge(self, drop: list[PacketId]) -> None:
        """Stop comparing until the checkpoint: keep held PVM packets, drop SVM data."""
        self.state = DIVERGED
        if self.s_ids:
            drop.extend(s[0] for s in self.s_ids)
            self.npkts -= len(self.s_ids)
        self.s_ids = None
        self.nbytes = 0
        self._forget_data()
        # Packets held from before keep their place; they now wait for the checkpoint only.
        if self.held:
            self.held = [self._waiting_for_checkpoint(h) for h in self.held]

    def _forget_data(self) -> None:
        """Drop what is stored for comparison besides the packet lists."""

    def _waiting_for_checkpoint(self, held: Any) -> Any:
        raise NotImplementedError

    def resync(self, epoch: int) -> None:
        """After a checkpoint the SVM holds the PVM's state: start comparing afresh."""
        self.epoch = epoch
        if self.state == DIVERGED:
            self.state = COMPARE


class TcpFlow(FlowState):
    __slots__ = (
        "matched",
        "p_abase",
        "p_amax",
        "p_base",
        "p_fin",
        "p_rst",
        "p_segs",
        "p_syn",
        "p_top",
        "reseg",
        "reseg_back",
        "s_abase",
        "s_ack",
        "s_base",
        "s_fin",
        "s_prog",
        "s_rst",
        "s_segs",
        "s_syn",
        "s_top",
    )

    def __init__(self, key: bytes, proto: int, now: float, epoch: int, state: int) -> None:
        super().__init__(key, proto, now, epoch, state)
        self.matched: int | None = None  # None until the first PVM packet anchors the stream
        self.p_base: int | None = None
        self.s_base: int | None = None
        self.p_abase: int | None = None
        self.s_abase: int | None = None
        self.p_syn = False
        self.s_syn = False
        self.p_top = NO_TOP  # highest stream end seen from each side
        self.s_top = NO_TOP
        # When the SVM last sent bytes beyond s_top (-1.0: not yet): a resegment check
        # counts from it, so an SVM that is late but still sending is not taken for one
        # stopped inside a super-packet.
        self.s_prog = -1.0
        self.p_amax = NO_ACK
        self.s_ack = NO_ACK
        self.p_fin: int | None = None
        self.s_fin: int | None = None
        # Where each side reset the connection (stream offset), NO_TOP if it has not: after
        # that it sends no more data (nor a FIN) on this connection.
        self.p_rst = NO_TOP
        self.s_rst = NO_TOP
        self.p_segs: list[Segment] | None = None
        self.s_segs: list[Segment] | None = None
        # Lagging (resegmenting): the end of the withdrawn bytes, NO_TOP when not lagging;
        # reseg_back: the copy of the last of them has come back.
        self.reseg = NO_TOP
        self.reseg_back = False

    # -- PVM ---------------------------------------------------------------------------
    def primary(
        self,
        pid: PacketId,
        seq: int,
        ack: int,
        flags: int,
        data: bytes,
        now: float,
        rel: list[PacketId],
        drop: list[PacketId],
        copy: int = 0,
        again: list[PacketId] | None = None,
    ) -> Divergence | None:
        st = self.state
        if st:
            if st == PASS:
                rel.append(pid)
            else:
                self._hold(pid, 0, NO_ACK, NEED_CHECKPOINT, now)
                # Still track how far the PVM's stream got: the checkpoint commits it, and
                # the SVM (then in the PVM's state) continues from there, not from where
                # the streams diverged.
                base = self.p_base
                if base is not None and (data or flags & FIN):
                    ref = 0 if self.matched is None else self.matched
                    end = ref + ((seq - base - ref + HALF) & MASK) - HALF + len(data)
                    if end > self.p_top:
                        self.p_top = end
                    if flags & FIN and self.p_fin is None:
                        self.p_fin = end
            return None
        if flags & SYN and not self.p_syn:
            self.p_syn = True
            self.p_base = (seq + 1) & MASK
            self.p_abase = None
        base = self.p_base
        if base is None:
            base = self.p_base = self.s_base if self.s_base is not None else seq
        m = self.matched
        ref = 0 if m is None else m
        start = ref + ((seq - base - ref + HALF) & MASK) - HALF
        if flags & SYN:
            start = 0 if start < 0 else start
        if m is None:
            m = self.matched = start
            if self.s_segs:
                self._trim_svm(m, drop)
        n = len(data)
        end = start + n
        if n:
            if end > self.p_top:
                self.p_top = end
        elif not flags & FIN:
            # No byte to prove (a pure ACK, or an RST/ACK after the FIN's sequence slot): it
            # waits only for the PVM data sent before it.
            end = start if self.p_top == NO_TOP else min(start, self.p_top)
        aoff = NO_ACK
        if flags & ACK:
            ab = self.p_abase
            if ab is None:
                ab = self.p_abase = ack if self.p_syn or self.s_abase is None else self.s_abase
            aref = self.s_ack if self.s_ack != NO_ACK else 0
            aoff = aref + ((ack - ab - aref + HALF) & MASK) - HALF
            if aoff > self.p_amax:
                self.p_amax = aoff
        need = 0
        if flags & (SYN | FIN | RST):
            if flags & SYN:
                need = NEED_SYN
            if flags & FIN:
                need |= NEED_FIN
                if self.p_fin is None:
                    self.p_fin = end
            if flags & RST:
                need |= NEED_RST
                if self.p_rst == NO_TOP:
                    # Past any data sent before it, whatever its own sequence number says.
                    self.p_rst = end if end > self.p_top else self.p_top
        div = None
        if n and end > m:
            segs = self.p_segs
            if segs is None:
                segs = self.p_segs = []
            self.nbytes += _stream.insert(
                segs, start if start >= m else m, data if start >= m else data[m - start :]
            )
            if self.s_segs:
                div = self._compare(drop)
        if div is None:
            div = self._check_close()
        if div is not None:
            self._hold(pid, end, aoff, need, now)
            self.diverge(drop)
            return div
        if self.held:
            self._release(rel)
        m = self.matched
        assert m is not None  # anchored above
        reseg = self.reseg
        if reseg != NO_TOP:
            if copy == _SEGMENT and end >= reseg:
                self.reseg_back = True  # the last withdrawn byte is back
            if self.reseg_back and m >= reseg:
                self.reseg = reseg = NO_TOP  # and the SVM caught up: no longer lagging
        if (
            not self.held
            and end <= m
            and aoff <= self.s_ack
            and (not need or self._flags_ready(need))
        ):
            rel.append(pid)
        elif reseg != NO_TOP and copy != _SEGMENT and again is not None:
            # Withdrawn bytes are on their way back: this packet follows them, or it would
            # be held ahead of them and wait for bytes the SVM cannot send yet.
            again.append(pid)
            if end > reseg:
                self.reseg = end
                self.reseg_back = False
        else:
            self._hold(pid, end, aoff, need | SPLITTABLE if copy == _SUPER else need, now)
        return None

    def resegment(self, now: float, after: float, again: list[PacketId]) -> bool:
        """Withdraw every held packet if the SVM lags inside the oldest, a super-packet.

        It must have waited ``after`` seconds with bytes not yet matched (a packet that
        waits only for the SVM's ACK or flags gains nothing from segments), counted from
        the later of its arrival and the SVM's last new bytes (``lag_since``). Returns
        whether it withdrew (their ids appended to ``again``, oldest first).
        """
        held = self.held
        if not held or self.state:
            return False
        _pid, end, _aoff, need, t = held[0]
        m = self.matched
        if t < self.s_prog:
            t = self.s_prog
        if not need & SPLITTABLE or t + after > now or m is None or end <= m:
            return False
        top = self.reseg
        for h in held:
            again.append(h[0])
            if h[1] > top:
                top = h[1]
        if top > self.reseg:
            self.reseg = top
            self.reseg_back = False
        self.npkts -= len(held)
        self.held = None
        return True

    def lag_since(self) -> float | None:
        """From when a resegment check counts: the later of the oldest held packet's
        arrival and the SVM's last new bytes; None if nothing is held."""
        if not self.held:
            return None
        t = self.held[0][4]
        return t if t > self.s_prog else self.s_prog

    def splittable_held(self) -> bool:
        """Some held packet is a super-packet (so a resegment check is due)."""
        return self.held is not None and any(h[3] & SPLITTABLE for h in self.held)

    # -- SVM ---------------------------------------------------------------------------
    def secondary(
        self,
        sid: PacketId,
        seq: int,
        ack: int,
        flags: int,
        data: bytes,
        now: float,
        rel: list[PacketId],
        drop: list[PacketId],
    ) -> Divergence | None:
        if self.state:
            drop.append(sid)
            return None
        if flags & SYN and not self.s_syn:
            self.s_syn = True
            self.s_base = (seq + 1) & MASK
            self.s_abase = None
        base = self.s_base
        if base is None:
            base = self.s_base = self.p_base if self.p_base is not None else seq
        m = self.matched
        ref = 0 if m is None else m
        start = ref + ((seq - base - ref + HALF) & MASK) - HALF
        if flags & SYN:
            start = 0 if start < 0 else start
        n = len(data)
        end = start + n
        if n and end > self.s_top:
            self.s_top = end
            self.s_prog = now
        if flags & ACK:
            ab = self.s_abase
            if ab is None:
                ab = self.s_abase = ack if self.s_syn or self.p_abase is None else self.p_abase
            aref = self.s_ack if self.s_ack != NO_ACK else 0
            aoff = aref + ((ack - ab - aref + HALF) & MASK) - HALF
            if aoff > self.s_ack:
                self.s_ack = aoff
        if flags & FIN and self.s_fin is None:
            self.s_fin = end
        if flags & RST and self.s_rst == NO_TOP:
            self.s_rst = end if end > self.s_top else self.s_top
        div = None
        if n and (m is None or end > m):
            segs = self.s_segs
            if segs is None:
                segs = self.s_segs = []
            if m is not None and start < m:
                self.nbytes += _stream.insert(segs, m, data[m - start :])
            else:
                self.nbytes += _stream.insert(segs, start, data)
            ids = self.s_ids
            if ids is None:
                self.s_ids = [(sid, end)]
            else:
                ids.append((sid, end))
            self.npkts += 1
            if self.p_segs and m is not None:
                div = self._compare(drop)
        else:
            drop.append(sid)
        if div is None:
            div = self._check_close()
        if div is not None:
            self.diverge(drop)
            return div
        if self.held:
            self._release(rel)
        return None

    # -- internals ---------------------------------------------------------------------
    def _hold(self, pid: PacketId, end: int, aoff: int, need: int, now: float) -> None:
        held = self.held
        if held is None:
            self.held = [(pid, end, aoff, need, now)]
        else:
            held.append((pid, end, aoff, need, now))
        self.npkts += 1

    def _flags_ready(self, need: int) -> bool:
        if need & NEED_CHECKPOINT:
            return False
        if need & NEED_SYN and not self.s_syn:
            return False
        if need & NEED_FIN and (self.s_fin is None or self.s_fin != self.p_fin):
            return False
        return not (need & NEED_RST and self.s_rst == NO_TOP)

    def _release(self, rel: list[PacketId]) -> None:
        held = self.held
        assert held is not None and self.matched is not None
        m = self.matched
        sack = self.s_ack
        n = 0
        for pid, end, aoff, need, _t in held:
            if end > m or aoff > sack or (need and not self._flags_ready(need)):
                break
            rel.append(pid)
            n += 1
        if n:
            if n == len(held):
                self.held = None
            else:
                del held[:n]
            self.npkts -= n

    def _compare(self, drop: list[PacketId]) -> Divergence | None:
        ps = self.p_segs
        ss = self.s_segs
        assert ps is not None and ss is not None and self.matched is not None
        m = self.matched
        while ps and ss:
            pst, pd = ps[0]
            sst, sd = ss[0]
            if pst > m or sst > m:
                break
            po = m - pst
            so = m - sst
            pl = len(pd) - po
            sl = len(sd) - so
            if po == 0 and so == 0 and pl == sl:
                if pd != sd:
                    self.matched = m
                    return Reason.PAYLOAD, m + _stream.first_difference(pd, sd)
                n = pl
            else:
                n = pl if pl < sl else sl
                a = pd[po : po + n]
                b = sd[so : so + n]
                if a != b:
                    self.matched = m
                    return Reason.PAYLOAD, m + _stream.first_difference(a, b)
            m += n
            if n == pl:
                ps.pop(0)
                self.nbytes -= len(pd)
            if n == sl:
                ss.pop(0)
                self.nbytes -= len(sd)
        self.matched = m
        if not ps:
            self.p_segs = None
        if not ss:
            self.s_segs = None
        ids = self.s_ids
        if ids:
            n = 0
            for sid, end in ids:
                if end > m:
                    break
                drop.append(sid)
                n += 1
            if n:
                if n == len(ids):
                    self.s_ids = None
                else:
                    del ids[:n]
                self.npkts -= n
        return None

    def _check_close(self) -> Divergence | None:
        """Closing behaviours that can never match: diverge now, not at the timeout.

        A side's FIN sits at one offset and no data follows it; after its RST a side sends
        no data and no FIN. So these pairs never match: FINs at different offsets, data
        past the other side's FIN or RST, and a FIN against an RST sent without one.
        Anything else may still match (an RST the other side has yet to send, an ACK a
        reset socket may still give in its next RST) and waits, up to the timeout.
        """
        pf = self.p_fin
        sf = self.s_fin
        pr = self.p_rst
        sr = self.s_rst
        if pf is None and sf is None and pr == NO_TOP and sr == NO_TOP:
            return None  # both open: the usual case
        if pf is not None:
            if sf is not None and sf != pf:
                return Reason.TCP_FLAGS, min(pf, sf)
            if self.s_top > pf:
                return Reason.TCP_FLAGS, pf
            if sf is None and sr != NO_TOP:
                return Reason.TCP_FLAGS, pf if pf < sr else sr
        if sf is not None:
            if self.p_top > sf:
                return Reason.TCP_FLAGS, sf
            if pf is None and pr != NO_TOP:
                return Reason.TCP_FLAGS, sf if sf < pr else pr
        if sr != NO_TOP and self.p_top > sr:
            return Reason.TCP_FLAGS, sr
        if pr != NO_TOP and self.s_top > pr:
            return Reason.TCP_FLAGS, pr
        return None

    def _trim_svm(self, m: int, drop: list[PacketId]) -> None:
        """The stream was anchored at ``m``: SVM bytes below it predate the comparison."""
        if self.s_segs is not None:
            self.nbytes -= _stream.trim_below(self.s_segs, m)
            if not self.s_segs:
                self.s_segs = None
        if self.s_ids:
            keep = [(sid, end) for sid, end in self.s_ids if end > m]
            for sid, end in self.s_ids:
                if end <= m:
                    drop.append(sid)
            self.npkts -= len(self.s_ids) - len(keep)
            self.s_ids = keep or None

    def oldest(self) -> float | None:
        return self.held[0][4] if self.held else None

    def is_closed(self) -> bool:
        return self.p_rst != NO_TOP or self.p_fin is not None

    def _forget_data(self) -> None:
        self.p_segs = None
        self.s_segs = None
        # Diverged or checkpointed: nothing is withdrawn again, and copies still on their
        # way are plain retransmissions of committed or held-for-checkpoint bytes.
        self.reseg = NO_TOP

    def _waiting_for_checkpoint(self, held: HeldTcp) -> HeldTcp:
        return (held[0], held[1], held[2], NEED_CHECKPOINT, held[4])

    def resync(self, epoch: int) -> None:
        super().resync(epoch)
        # Everything the PVM sent before the checkpoint is committed, and the SVM's TCP stack
        # is now the PVM's: same sequence space, and at least the PVM's SYN/FIN/RST/ACK
        # history. What the SVM showed beyond that is kept rather than forgotten: the
        # restored SVM holds the same inputs and will produce it again (and a replay of two
        # independent captures, where the SVM does not restart, needs it).
        if self.p_top != NO_TOP:
            self.matched = self.p_top if self.matched is None else max(self.matched, self.p_top)
        if self.p_base is not None:
            self.s_base = self.p_base
        if self.p_abase is not None:
            self.s_abase = self.p_abase
        self.s_syn = self.s_syn or self.p_syn
        if self.p_fin is not None:
            self.s_fin = self.p_fin
        # The SVM is restored to the PVM's state: reset only if the PVM reset, and then
        # with the PVM's closing history alone (an SVM FIN kept from before would count as
        # a FIN against the PVM's RST).
        if self.p_rst == NO_TOP:
            self.s_rst = NO_TOP
        else:
            self.s_fin = self.p_fin
            if self.s_rst == NO_TOP:
                self.s_rst = self.p_top
        self.s_top = self.p_top
        self.s_ack = max(self.s_ack, self.p_amax)
        self.reseg = NO_TOP


class DatagramFlow(FlowState):
    """UDP, ICMP, other protocols, fragments: whole datagrams matched in any order."""

    __slots__ = ()

    def primary(
        self,
        pid: PacketId,
        body: bytes,
        now: float,
        window: int,
        rel: list[PacketId],
        drop: list[PacketId],
    ) -> Divergence | None:
        st = self.state
        if st:
            if st == PASS:
                rel.append(pid)
            else:
                self._hold(pid, b"", now)
            return None
        sp = self.s_ids
        if sp:
            for i, (sid, body2) in enumerate(sp):
                if body2 == body:
                    del sp[i]
                    if not sp:
                        self.s_ids = None
                    drop.append(sid)
                    rel.append(pid)
                    self.npkts -= 1
                    self.nbytes -= len(body2)
                    return None
        self._hold(pid, body, now)
        self.nbytes += len(body)
        return self._window(window, drop)

    def secondary(
        self, sid: PacketId, body: bytes, window: int, rel: list[PacketId], drop: list[PacketId]
    ) -> Divergence | None:
        if self.state:
            drop.append(sid)
            return None
        held = self.held
        if held:
            for i, (pid, body2, _t) in enumerate(held):
                if body2 == body:
                    del held[i]
                    if not held:
                        self.held = None
                    rel.append(pid)
                    drop.append(sid)
                    self.npkts -= 1
                    self.nbytes -= len(body2)
                    return None
        if self.s_ids is None:
            self.s_ids = [(sid, body)]
        else:
            self.s_ids.append((sid, body))
        self.npkts += 1
        self.nbytes += len(body)
        return self._window(window, drop)

    def _hold(self, pid: PacketId, body: bytes, now: float) -> None:
        if self.held is None:
            self.held = [(pid, body, now)]
        else:
            self.held.append((pid, body, now))
        self.npkts += 1

    def _window(self, window: int, drop: list[PacketId]) -> Divergence | None:
        held, sp = self.held, self.s_ids
        if held and sp and (len(held) > window or len(sp) > window):
            div = self.mismatch()
            self.diverge(drop)
            return div
        return None

    def mismatch(self) -> Divergence:
        """Where the oldest unmatched datagrams of the two sides differ."""
        if self.held and self.s_ids:
            return Reason.DATAGRAM, _stream.first_difference(self.held[0][1], self.s_ids[0][1])
        return Reason.TIMEOUT, None

    def oldest(self) -> float | None:
        return self.held[0][2] if self.held else None

    def _waiting_for_checkpoint(self, held: HeldDatagram) -> HeldDatagram:
        return (held[0], b"", held[2])
