"""The primary host's proxy: the adapter of the comparison engine.

`PrimaryProxy` feeds PVM packets (NFQUEUE) and SVM packets (packet socket) to
`Comparator`, interprets its commands (Release = accept verdict, Drop = forget the SVM
copy, RequestCheckpoint = tell the orchestrator, Wakeup = when to call `tick`) and owns
the clock. Its I/O objects are injected, so unit tests drive it with fakes;
`colo_proxy.service.run` builds the real ones and `colo_proxy.service.loop` polls them.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from colo_proxy.compare import (
    SEGMENT,
    SUPER,
    WHOLE,
    Comparator,
    Drop,
    Flow,
    Release,
    RequestCheckpoint,
    Resegment,
    Side,
    Wakeup,
)
from colo_proxy.fastpath import FastPath, GivenBack, SlowPvm, lending
from colo_proxy.service.metrics import HoldTimer
from colo_proxy.service.modes import (
    BARRIER,
    BUFFERED,
    BUFFERED_BARRIER,
    EVENTS,
    FENCED,
    PASSTHROUGH,
    PROTECTED,
    Event,
    Mode,
    initial,
)
from colo_proxy.service.permit import Permit
from colo_proxy.service.settings import ProxySettings
from colo_proxy.wire.control import ProtocolError

log = logging.getLogger("colo-proxy")

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IP_ETHERTYPES = (ETH_P_IP, ETH_P_IPV6)
# Lent flows are taken back from the C fast path this long before the release permit ends:
# C releases their packets without asking Python, so Python must hold them all by then.
LEND_GUARD_S = 0.1
# Packets of the segmenting queue are known to the comparator by their queue id plus this,
# so that the two queues' ids (each queue counts its own) never meet.
SEG_BASE = 1 << 32


class Queue(Protocol):
    def receive(self, limit: int = ...) -> list[Any]: ...
    def decide(self, accept: Any, drop: Any = ..., requeue: Any = ...) -> None: ...
    def accept_all(self) -> None: ...
    def drop_all(self) -> None: ...


class Source(Protocol):
    def receive(self, limit: int = ...) -> list[Any]: ...


class Datapath(Protocol):
    def set_mode(self, mode: int) -> None: ...
    def counters(self) -> dict[str, int]: ...
    def carried(self) -> int: ...


class CarryStats(Protocol):
    """The carried-flow exchange's counts (service.carry_link)."""

    def stats(self) -> dict[str, Any]: ...


def with_fast_path(compare: dict[str, int], fast: dict[str, int] | None) -> dict[str, int]:
    """The comparator's counts with the fast path's packets added, so that "compared" and
    "released" count every packet whichever path took it (the fast path only takes what
    the comparator lent it, on the comparator's rule)."""
    if not fast:
        return compare
    out = dict(compare)
    for name, add in (("primary_packets", "pvm_packets"), ("secondary_packets", "svm_packets"),
                      ("released_packets", "released"), ("dropped_packets", "svm_packets")):
        out[name] = out.get(name, 0) + fast.get(add, 0)
    return out


def flow_json(flow: Flow | None) -> dict[str, Any] | None:
    if flow is None:
        return None
    return {"proto": flow.proto, "src": flow.src, "sport": flow.sport, "dst": flow.dst,
            "dport": flow.dport, "name": str(flow)}


class PrimaryProxy:
    def __init__(
        self,
        settings: ProxySettings,
        queue: Queue,
        svm: Source,
        *,
        notify: Callable[[dict[str, Any]], Any],
        datapath: Datapath | None = None,
        carry: CarryStats | None = None,
        clock: Callable[[], float] = time.monotonic,
        fast: FastPath | None = None,
        segq: Queue | None = None,
    ) -> None:
        self.settings = settings
        # The segmenting queue (gso with resegment_after; docs/PROXY.md, "Bulk transfers"):
        # the comparator's Resegment sends held packets there, and the kernel hands them
        # back as segments, with ids of that queue (SEG_BASE + id here).
        self.segq = segq
        self._requeue: list[int] = []
        # The C fast path (colo_proxy/fastpath), when attached: it reads both sources and
        # sends every verdict (queue is then the fast path itself); flows in sync are lent
        # to it while PROTECTED and taken back before anything else touches them.
        self.fast = fast
        # How long C may hold a PVM packet before the comparator takes its flow back: half
        # the compare timeout, so the comparator's timeout fires on time (it counts from
        # the packet's arrival, kept in the given-back state).
        self.hold_limit = settings.compare.compare_timeout / 2
        self.carry = carry
        self.queue = queue
        self.svm = svm
        self.notify = notify
        self.datapath = datapath
        self.clock = clock
        self.cmp = Comparator(settings.compare)
        # Remus-style (output = "buffer"): no comparison; what the PVM sends waits in
        # _epoch for the checkpoint that copies the state which produced it, then goes out
        # all at once. _next holds what arrives during that checkpoint (BUFFERED_BARRIER):
        # it belongs to the state after the snapshot, so it waits for the checkpoint after.
        self.modes = initial(settings.fenced, buffer=settings.output == "buffer")
        self._epoch: list[int] = []
        self._next: list[int] = []
        self.wake: float | None = None
        self.svm_ids = 0
        self.checkpoint_requests: dict[str, int] = {}
        self.checkpoints = 0
        self.svm_non_ip = 0
        self.truncated = 0
        self.passed_uncompared = 0
        self.fenced_drops = 0  # PVM packets dropped while fenced (held ones included)
        self.compared_bytes = {"primary": 0, "secondary": 0}  # IP bytes given to the comparator
        self.started = clock()
        self._accept: list[int] = []
        self.hold = HoldTimer()  # per PVM packet: how long it was held (metrics)
        # In BARRIER (from a checkpoint's barrier, when the PVM is stopped and all it sent
        # is queued, to checkpoint_done) arrivals belong to the state after the snapshot.
        # They are kept here, out of the comparator, and compared afresh once the old epoch
        # is released. Empty in every other mode.
        self._post: list[tuple[Side, int, bytes, int]] = []  # with the copy (compare.SUPER..)
        self.trace = log.isEnabledFor(logging.DEBUG)  # one line per packet: debugging only
        # The release permit (service.permit); random first token: see Permit.
        self.permit = Permit(settings.release_permit, first_token=secrets.randbits(48) + 1)
        # PVM packets free to go (matched, checkpointed, passing through) that wait for a
        # permit: still held in the kernel, released in order when one comes, dropped by
        # a fence. Still in `hold` (they are not released yet).
        self._withheld: list[int] = []
        # Accept verdicts Python gave (the fast path counts its own): what really went out,
        # where the comparator's "released" counts what it let go, withheld or not.
        self.accepted = 0

    @property
    def mode(self) -> Mode:
        return self.modes.mode

    # Events ------------------------------------------------------------------
    def on_pvm_readable(self) -> None:
        self._feed_pvm(self.queue.receive(self.settings.batch))

    def on_seg_readable(self) -> None:
        """Segments of packets sent to the segmenting queue (Resegment)."""
        assert self.segq is not None
        self._feed_pvm(self.segq.receive(self.settings.batch), seg=True)

    def _feed_pvm(self, pkts: list[Any], seg: bool = False) -> None:
        if not pkts:
            return
        base = SEG_BASE if seg else 0
        mode = self.modes.mode
        if mode is PASSTHROUGH:
            self.passed_uncompared += len(pkts)
            now = self.clock()
            if not self.permit.allows(now):
                for p in pkts:
                    self.hold.queued(p.packet_id + base, now, len(p.payload))
                    self._withheld.append(p.packet_id + base)
                return
            self.accepted += len(pkts)
            self._accept_ids([p.packet_id + base for p in pkts])
            return
        if mode is FENCED:
            self.fenced_drops += len(pkts)
            q = self.segq if seg else self.queue
            assert q is not None
            q.decide((), [p.packet_id for p in pkts])
            return
        now = self.clock()
        if mode is BUFFERED or mode is BUFFERED_BARRIER:
            into = self._epoch if mode is BUFFERED else self._next
            for p in pkts:
                self.hold.queued(p.packet_id + base, now, len(p.payload))
                into.append(p.packet_id + base)
            return
        # A super-packet may be sent to be segmented only when there is where to send it.
        splits = self.segq is not None and not seg
        if mode is BARRIER:
            for p in pkts:
                self.hold.queued(p.packet_id + base, now, len(p.payload))
                self._post.append((Side.PRIMARY, p.packet_id + base, p.payload,
                                   SEGMENT if seg else SUPER if splits and p.gso else WHOLE))
            return
        cmp_packet = self.cmp.packet
        queued = self.hold.queued
        nbytes = 0
        for p in pkts:
            nbytes += len(p.payload)
            pid = p.packet_id + base
            queued(pid, now, len(p.payload))
            if p.truncated:
                # The copy lost its tail (a > 64 KiB GSO packet): the engine sees the
                # truncated bytes, finds them inconsistent and applies its policy.
                self.truncated += 1
            copy = SEGMENT if seg else SUPER if splits and p.gso else WHOLE
            cmds = cmp_packet(Side.PRIMARY, pid, p.payload, now, copy)
            if self.trace:
                self._trace("PVM", pid, p.payload, cmds)
            self._apply(cmds)
        self.compared_bytes["primary"] += nbytes
        self._flush()

    def on_svm_readable(self) -> None:
        self._feed_svm(self.svm.receive(self.settings.batch))

    def _feed_svm(self, frames: list[Any]) -> None:
        if not frames or self.modes.mode in (PASSTHROUGH, FENCED, BUFFERED, BUFFERED_BARRIER):
            return  # buffering: the SVM's output has no use (it is not compared)
        now = self.clock()
        cmp_packet = self.cmp.packet
        barrier = self.modes.mode is BARRIER
        for f in frames:
            if f.ethertype not in IP_ETHERTYPES:
                self.svm_non_ip += 1  # ARP and the like: the SVM's own, never compared
                continue
            self.svm_ids += 1
            if barrier:
                self._post.append((Side.SECONDARY, self.svm_ids, f.payload, WHOLE))
                continue
            self.compared_bytes["secondary"] += len(f.payload)
            cmds = cmp_packet(Side.SECONDARY, self.svm_ids, f.payload, now)
            if self.trace:
                self._trace("SVM", self.svm_ids, f.payload, cmds)
            self._apply(cmds)
        self._flush()

    def on_fast(self) -> None:
        """The fast path's records: slow packets in arrival order and flows it gave back."""
        assert self.fast is not None
        # Nothing is lent that C could release past the permit's end (LEND_GUARD_S).
        self._fast_records(self.fast.records(), lend=self.modes.mode is PROTECTED
                           and self.permit.allows(self.clock() + LEND_GUARD_S))

    def _fast_records(self, recs: list[Any], lend: bool) -> None:
        if not recs:
            return
        touched: set[bytes] = set()
        run: list[Any] = []
        for r in recs:
            if run and type(r) is not type(run[0]):
                self._fast_run(run, touched)
                run = []
            if isinstance(r, GivenBack):
                self._give_back(r)
            else:
                run.append(r)
        if run:
            self._fast_run(run, touched)
        if lend and touched:
            assert self.fast is not None
            # Held packets go with their flow; C times and releases them from now on.
            now = self.clock()
            self.hold.forget(lending.lend(self.cmp, self.fast, touched, now, self._next_svm_id,
                                          lambda pid: pid < SEG_BASE, now - self.hold_limit))

    def _fast_run(self, run: list[Any], touched: set[bytes]) -> None:
        for r in run:
            key = lending.tcp_key(r.payload)
            if key is not None:
                touched.add(key)
        if isinstance(run[0], SlowPvm):
            self._feed_pvm(run)
        else:
            self._feed_svm(run)

    def _give_back(self, r: GivenBack) -> None:
        for pid, _end, _aoff, t, _gso in r.held:
            self.hold.queued(pid, t, 0)
        if self.modes.mode is BARRIER or self.modes.mode is PROTECTED:
            self._apply(lending.give_back(self.cmp, r, self._next_svm_id, self.clock()))
            self._flush()
        # Any other mode lent nothing since it began: _passthrough and _fence decided
        # every outstanding packet, these included.

    def _next_svm_id(self) -> int:
        self.svm_ids += 1
        return self.svm_ids

    def _reclaim(self) -> None:
        """Take every lent flow back (before a checkpoint, a mode change, a new comparator)."""
        if self.fast is not None:
            self.fast.reclaim_all()
            self._fast_records(self.fast.records(), lend=False)

    def _drain_fast(self) -> None:
        """Read both sources until empty, into the comparator (the checkpoint's barrier)."""
        assert self.fast is not None
        while True:
            self.fast.read(self.hold_limit)
            recs = self.fast.records()
            if not recs:
                return
            self._fast_records(recs, lend=False)

    def on_timer(self) -> None:
        now = self.clock()
        self._check_permit(now)
        if (self.fast is not None and self.fast.lent_flows
                and not self.permit.allows(now + LEND_GUARD_S)):
            self._reclaim()  # what C holds comes back, to wait for a permit here
        if self.wake is not None and now >= self.wake:
            self.wake = None
            self._apply(self.cmp.tick(now))
            self._flush()

    def idle(self) -> bool:
        """Nothing held: the next packet is new PVM output, not an awaited SVM twin."""
        return (self.cmp.held_packets == 0 and not self._epoch and not self._next
                and not self._withheld
                and (self.fast is None or self.fast.held_packets == 0))

    def timeout(self, cap: float = 1.0) -> float:
        now = self.clock()
        at = [now + cap]
        if self.wake is not None:
            at.append(self.wake)
        if self.permit.armed and self.permit.allows(now):
            # Wake at the permit's end, and LEND_GUARD_S before it to take lent flows back.
            end = self.permit.deadline
            at.append(end - LEND_GUARD_S if self.fast is not None and self.fast.lent_flows
                      and now < end - LEND_GUARD_S else end)
        return max(0.0, min(at) - now)

    def _check_permit(self, now: float) -> None:
        change = self.permit.lapsed_now(now)
        if change is True:
            self._reclaim()
            if self.permit.revoked:
                log.warning("release permit revoked by the orchestrator: output held")
            else:
                log.warning("release permit lapsed (not renewed in time): holding output "
                            "until the orchestrator renews it or fences")
        elif change is False and self._withheld:
            log.info("release permit renewed: releasing %d held packets", len(self._withheld))
        if self._withheld and self.permit.allows(now):
            # Also when it lapsed and was renewed between two looks.
            self._release_withheld(now)

    def _release_withheld(self, now: float) -> None:
        ids, self._withheld = self._withheld, []
        if ids:
            self.hold.released(ids, now)
            self.accepted += len(ids)
            self._accept_ids(ids)

    def _accept_ids(self, ids: list[int]) -> None:
        """Accept verdicts, each to the queue that holds its packet (SEG_BASE and above:
        the segmenting queue)."""
        if self.segq is None:
            self.queue.decide(ids)
            return
        self.queue.decide([i for i in ids if i < SEG_BASE])
        seg = [i - SEG_BASE for i in ids if i >= SEG_BASE]
        if seg:
            self.segq.decide(seg)

    def on_control(self, msg: dict[str, Any]) -> dict[str, Any]:
        kind = msg["type"]
        if kind == "hello":
            return {"type": "hello", "role": "primary", "mode": self.mode.label,
                    "pid": os.getpid(), "instance": self.settings.instance,
                    "permits": True}
        if kind == "status":
            return self.status()
        if kind == "permit":
            now = self.clock()
            reply = self.permit.on_message(msg, now)
            self._check_permit(now)
            return reply
        if kind != "checkpoint_started":
            self._reclaim()  # every other message changes what the comparator must know
        if kind == "checkpoint_started":
            log.info("checkpoint started")
        elif kind == "checkpoint_barrier":
            # Sent while the PVM is stopped for the checkpoint: whatever it sent before is
            # in the queue now. Read all of it into the current epoch; what arrives after
            # this was produced from the state the SVM is about to receive.
            # Not allowed a second time, nor while passing through: ignored, as always.
            if self.modes.can(Event.CHECKPOINT_BARRIER):
                if self.fast is not None:
                    self._drain_fast()
                else:
                    while pkts := self.queue.receive(self.settings.batch):
                        self._feed_pvm(pkts)
                    while frames := self.svm.receive(self.settings.batch):
                        self._feed_svm(frames)
                if self.segq is not None:
                    while pkts := self.segq.receive(self.settings.batch):
                        self._feed_pvm(pkts, seg=True)
                self.modes.fire(Event.CHECKPOINT_BARRIER)
        elif kind == "checkpoint_done":
            self.modes.fire(Event.CHECKPOINT_DONE)
            self.checkpoints += 1
            if self.modes.home is BUFFERED:
                self._release_epoch()
                return {"type": "ok", "for": kind}
            held = self.cmp.held_packets
            now = self.clock()
            post, self._post = self._post, []
            self._apply(self.cmp.checkpoint_done(now))
            for side, pid, data, copy in post:
                self._apply(self.cmp.packet(side, pid, data, now, copy))
            self._flush()
            log.info("checkpoint done: released %d held packets, %d after the barrier "
                     "compared afresh", held, len(post))
        elif kind in ("failover", "pause"):
            self.modes.fire(EVENTS[kind])
            self._passthrough(kind)
        elif kind == "mirror":
            # Before a COLO migration: the SVM about to be loaded must get every client
            # packet the PVM reads after the migration's STOP. The orchestrator learns of
            # that STOP (and sends resume) only after it happened, and a stopped PVM reads
            # what queued meanwhile once it runs again, so mirroring starts now, while
            # output still passes. What reaches the SVM before its state is loaded waits
            # in its tap and is read as a duplicate, which its TCP drops.
            if self.modes.mode is PASSTHROUGH and self.datapath is not None:
                self.datapath.set_mode(0)
                log.info("mirror: client traffic mirrored again, output still passes")
        elif kind == "fence":
            self.modes.fire(Event.FENCE)
            self._fence()
        elif kind == "unfence":
            was = self.mode
            self.modes.fire(Event.UNFENCE)
            if was is FENCED:
                log.warning("unfenced: %s again%s", self.mode.label,
                            " (the orchestrator checkpoints first)" if self.mode is PROTECTED
                            else "")
        elif kind == "resume":
            self.modes.fire(Event.RESUME)
            if self.datapath is not None:
                self.datapath.set_mode(0)
            self.cmp = Comparator(self.settings.compare)
            post, self._post = self._post, []
            for side, pid, data, copy in post:
                self._apply(self.cmp.packet(side, pid, data, self.clock(), copy))
            self._flush()
            self.wake = None
            log.info("protection resumed: %s again (the orchestrator checkpoints first)",
                     "buffering" if self.mode is BUFFERED else "comparing")
        else:
            raise ProtocolError(f"unknown message type {kind!r}")
        return {"type": "ok", "for": kind}

    def _release_epoch(self) -> None:
        """Buffering, at checkpoint_done: the state behind everything in _epoch is on the
        secondary now, so all of it goes out; what came during the checkpoint waits on."""
        if self.mode is not BUFFERED:
            return  # fenced meanwhile: _fence dropped the buffers
        released, self._epoch, self._next = self._epoch, self._next, []
        self._accept.extend(released)
        self._flush()
        log.info("checkpoint done: released %d buffered packets, %d wait for the next",
                 len(released), len(self._epoch))

    def _passthrough(self, why: str) -> None:
        # The secondary is gone (failover) or protection is paused: what is held can only
        # go out now, and new output passes at once.
        self._post = []
        self._epoch, self._next = [], []  # its PVM packets are still outstanding: accept_all releases them
        if self.datapath is not None:
            self.datapath.set_mode(1)
        self._requeue = []
        now = self.clock()
        if self.permit.allows(now):
            self.accepted += len(self.hold.held_ids())
            self.queue.accept_all()
            if self.segq is not None:
                self.segq.accept_all()
            self.hold.release_all(now)
            self._withheld = []
        else:
            # Free to go, but not without a permit: everything outstanding waits for one.
            self._withheld = self.hold.held_ids()
        self.cmp = Comparator(self.settings.compare)
        self.wake = None
        log.warning("%s: output now passes uncompared, mirroring stopped", why)

    def _fence(self) -> None:
        # Fail closed: whatever is held, and whatever comes, is dropped. TCP retransmits
        # it to whichever host may serve; nothing of ours reaches a client meanwhile.
        dropped = self.cmp.held_packets + sum(1 for side, _, _, _ in self._post
                                              if side is Side.PRIMARY)
        dropped += len(self._epoch) + len(self._next) + len(self._withheld)
        self._withheld = []
        self._post = []
        self._epoch, self._next = [], []
        self.queue.drop_all()
        if self.segq is not None:
            self.segq.drop_all()
        self._requeue = []
        self.hold.forget_all()
        self.fenced_drops += dropped
        self.cmp = Comparator(self.settings.compare)
        self.wake = None
        log.warning("fenced: every PVM packet is dropped (%d held ones now) until unfence",
                    dropped)

    # Commands ----------------------------------------------------------------
    def _trace(self, side: str, pid: int, data: bytes, cmds: list[Any]) -> None:
        import struct
        if len(data) >= 40 and data[0] >> 4 == 4 and data[9] == 6:
            ihl = (data[0] & 15) * 4
            sp, dp, seq, ack, off, fl = struct.unpack_from("!HHIIBB", data, ihl)
            plen = len(data) - ihl - (off >> 4) * 4
            log.debug("%s %d %d>%d seq=%d ack=%d fl=%#x len=%d -> %s", side, pid, sp, dp,
                      seq, ack, fl, plen, cmds)
        else:
            log.debug("%s %d non-tcp %d bytes -> %s", side, pid, len(data), cmds)

    def _apply(self, commands: list[Any]) -> None:
        for c in commands:
            if isinstance(c, Release):
                self._accept.extend(c.packet_ids)
            elif isinstance(c, Drop):
                pass  # SVM copies: we own the bytes already, nothing to tell the kernel
            elif isinstance(c, Resegment):
                self._requeue.extend(c.packet_ids)
            elif isinstance(c, RequestCheckpoint):
                reason = str(c.reason)
                self.checkpoint_requests[reason] = self.checkpoint_requests.get(reason, 0) + 1
                # Monotonic marks for the orchestrator's step timing (same host, same
                # clock): what waits longest, and when the divergence was found.
                now = self.clock()
                oldest = self.hold.oldest()
                msg = {"type": "checkpoint_request", "reason": reason,
                       "flow": flow_json(c.flow), "offset": c.offset,
                       "held_since": now if oldest is None else oldest, "detected_at": now}
                sent = self.notify(msg)
                log.warning("checkpoint requested: %s on %s at offset %s%s", reason,
                            c.flow or "-", c.offset,
                            "" if sent else " (no orchestrator connected: output stays held)")
            elif isinstance(c, Wakeup):
                self.wake = c.at
            else:
                raise RuntimeError(f"Unexpected command: {c}")

    def _flush(self) -> None:
        if self._requeue:
            self._send_to_segment()
        if self._accept:
            now = self.clock()
            if not self.permit.allows(now):
                self._withheld.extend(self._accept)
                self._accept = []
                return
            self.hold.released(self._accept, now)
            self.accepted += len(self._accept)
            self._accept_ids(self._accept)
            self._accept = []

    def _send_to_segment(self) -> None:
        """Held packets the comparator let go of (Resegment) go to the segmenting queue:
        copies already from there first, as they were held first (each verdict queues the
        packet at that queue's tail, and its segments come back in that order)."""
        ids, self._requeue = self._requeue, []
        assert self.segq is not None
        self.hold.forget(ids)
        again = [i - SEG_BASE for i in ids if i >= SEG_BASE]
        if again:
            self.segq.decide((), (), again)
        first = [i for i in ids if i < SEG_BASE]
        if first:
            self.queue.decide((), (), first)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "status", "role": "primary", "mode": self.mode.label,
            "uptime_seconds": round(self.clock() - self.started, 3),
            "output": self.settings.output,
            "held_packets": self.cmp.held_packets + len(self._epoch) + len(self._next)
            + len(self._withheld)
            + (self.fast.held_packets if self.fast is not None else 0),
            "flows": self.cmp.flow_count,
            "checkpoint_pending": self.cmp.checkpoint_pending,
            "checkpoint_requests": dict(self.checkpoint_requests),
            "checkpoints_done": self.checkpoints,
            "compare": self.cmp.stats.as_dict(),  # with the fast path's: below
            "svm_non_ip": self.svm_non_ip, "truncated_copies": self.truncated,
            "passed_uncompared": self.passed_uncompared, "fenced_drops": self.fenced_drops,
            "compared_bytes": dict(self.compared_bytes),
            "permit": {**self.permit.status(self.clock()),
                       "withheld_packets": len(self._withheld)},
            # Accept verdicts given (the fast path's added below): packets that went out.
            "accepted_packets": self.accepted,
        }
        if self.fast is not None:
            out["fast_path"] = {**self.fast.stats(), "lent_flows": self.fast.lent_flows}
            out["compare"] = with_fast_path(out["compare"], out["fast_path"])
            out["accepted_packets"] += out["fast_path"].get("released", 0)
        if self.datapath is not None:
            out["datapath"] = self.datapath.counters()
            out["carried_flows"] = self.datapath.carried()
        if self.carry is not None:
            out["carry"] = self.carry.stats()
        read_drops = getattr(self.svm, "read_drops", None)
        if read_drops is not None:
            out["svm_socket_drops"] = read_drops()
        errors = getattr(self.svm, "errors", None)
        if errors is not None:
            out["svm_socket_errors"] = errors.total
        enobufs = getattr(self.queue, "enobufs", None)
        if enobufs is not None:
            out["queue_overflows"] = enobufs
        return out
