"""The proxy services of the two hosts: the loops that join the kernel datapath, the
comparator and the control channel.

`PrimaryProxy` is the adapter of the comparison engine: it feeds PVM packets (NFQUEUE) and
SVM packets (packet socket) to `Comparator`, interprets its commands (Release = accept
verdict, Drop = forget the SVM copy, RequestCheckpoint = tell the orchestrator, Wakeup =
when to call `tick`) and owns the clock. Its I/O objects are injected, so unit tests
drive it with fakes; `run_primary`/`run_secondary` build the real ones.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from colo_proxy.compare import (
    Comparator,
    Drop,
    Flow,
    Release,
    RequestCheckpoint,
    Side,
    Wakeup,
)
from colo_proxy.service.control_socket import ControlServer
from colo_proxy.service.handover_file import discard as discard_handover
from colo_proxy.service.handover_file import write as write_handover
from colo_proxy.service.metrics import HoldTimer
from colo_proxy.service.modes import (
    BARRIER,
    EVENTS,
    PASSTHROUGH,
    Event,
    IllegalTransition,
    Machine,
    Mode,
)
from colo_proxy.service.settings import ProxySettings
from colo_proxy.wire.control import ProtocolError

log = logging.getLogger("colo-proxy")

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IP_ETHERTYPES = (ETH_P_IP, ETH_P_IPV6)


class Queue(Protocol):
    def receive(self, limit: int = ...) -> list[Any]: ...
    def decide(self, accept: Any, drop: Any = ...) -> None: ...
    def accept_all(self) -> None: ...


class Source(Protocol):
    def receive(self, limit: int = ...) -> list[Any]: ...


class Datapath(Protocol):
    def set_mode(self, mode: int) -> None: ...
    def counters(self) -> dict[str, int]: ...
    def carried(self) -> int: ...


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.svm = svm
        self.notify = notify
        self.datapath = datapath
        self.clock = clock
        self.cmp = Comparator(settings.compare)
        self.modes = Machine()
        self.wake: float | None = None
        self.svm_ids = 0
        self.checkpoint_requests: dict[str, int] = {}
        self.checkpoints = 0
        self.svm_non_ip = 0
        self.truncated = 0
        self.passed_uncompared = 0
        self.compared_bytes = {"primary": 0, "secondary": 0}  # IP bytes given to the comparator
        self.started = clock()
        self._accept: list[int] = []
        self.hold = HoldTimer()  # per PVM packet: how long it was held (metrics)
        # In BARRIER (from a checkpoint's barrier, when the PVM is stopped and all it sent
        # is queued, to checkpoint_done) arrivals belong to the state after the snapshot.
        # They are kept here, out of the comparator, and compared afresh once the old epoch
        # is released. Empty in every other mode.
        self._post: list[tuple[Side, int, bytes]] = []
        self.trace = log.isEnabledFor(logging.DEBUG)  # one line per packet: debugging only

    @property
    def mode(self) -> Mode:
        return self.modes.mode

    # Events ------------------------------------------------------------------
    def on_pvm_readable(self) -> None:
        self._feed_pvm(self.queue.receive(self.settings.batch))

    def _feed_pvm(self, pkts: list[Any]) -> None:
        if not pkts:
            return
        mode = self.modes.mode
        if mode is PASSTHROUGH:
            self.passed_uncompared += len(pkts)
            self.queue.decide([p.packet_id for p in pkts])
            return
        now = self.clock()
        if mode is BARRIER:
            for p in pkts:
                self.hold.queued(p.packet_id, now, len(p.payload))
                self._post.append((Side.PRIMARY, p.packet_id, p.payload))
            return
        cmp_packet = self.cmp.packet
        queued = self.hold.queued
        nbytes = 0
        for p in pkts:
            nbytes += len(p.payload)
            queued(p.packet_id, now, len(p.payload))
            if p.truncated:
                # The copy lost its tail (a > 64 KiB GSO packet): the engine sees the
                # truncated bytes, finds them inconsistent and applies its policy.
                self.truncated += 1
            cmds = cmp_packet(Side.PRIMARY, p.packet_id, p.payload, now)
            if self.trace:
                self._trace("PVM", p.packet_id, p.payload, cmds)
            self._apply(cmds)
        self.compared_bytes["primary"] += nbytes
        self._flush()

    def on_svm_readable(self) -> None:
        self._feed_svm(self.svm.receive(self.settings.batch))

    def _feed_svm(self, frames: list[Any]) -> None:
        if not frames or self.modes.mode is PASSTHROUGH:
            return
        now = self.clock()
        cmp_packet = self.cmp.packet
        barrier = self.modes.mode is BARRIER
        for f in frames:
            if f.ethertype not in IP_ETHERTYPES:
                self.svm_non_ip += 1  # ARP and the like: the SVM's own, never compared
                continue
            self.svm_ids += 1
            if barrier:
                self._post.append((Side.SECONDARY, self.svm_ids, f.payload))
                continue
            self.compared_bytes["secondary"] += len(f.payload)
            cmds = cmp_packet(Side.SECONDARY, self.svm_ids, f.payload, now)
            if self.trace:
                self._trace("SVM", self.svm_ids, f.payload, cmds)
            self._apply(cmds)
        self._flush()

    def on_timer(self) -> None:
        now = self.clock()
        if self.wake is not None and now >= self.wake:
            self.wake = None
            self._apply(self.cmp.tick(now))
            self._flush()

    def idle(self) -> bool:
        """Nothing held: the next packet is new PVM output, not an awaited SVM twin."""
        return self.cmp.held_packets == 0

    def timeout(self, cap: float = 1.0) -> float:
        if self.wake is None:
            return cap
        return max(0.0, min(cap, self.wake - self.clock()))

    def on_control(self, msg: dict[str, Any]) -> dict[str, Any]:
        kind = msg["type"]
        if kind == "hello":
            return {"type": "hello", "role": "primary", "mode": self.mode.label}
        if kind == "status":
            return self.status()
        if kind == "checkpoint_started":
            log.info("checkpoint started")
        elif kind == "checkpoint_barrier":
            # Sent while the PVM is stopped for the checkpoint: whatever it sent before is
            # in the queue now. Read all of it into the current epoch; what arrives after
            # this was produced from the state the SVM is about to receive.
            # Not allowed a second time, nor while passing through: ignored, as always.
            if self.modes.can(Event.CHECKPOINT_BARRIER):
                while pkts := self.queue.receive(self.settings.batch):
                    self._feed_pvm(pkts)
                while frames := self.svm.receive(self.settings.batch):
                    self._feed_svm(frames)
                self.modes.fire(Event.CHECKPOINT_BARRIER)
        elif kind == "checkpoint_done":
            self.modes.fire(Event.CHECKPOINT_DONE)
            self.checkpoints += 1
            held = self.cmp.held_packets
            now = self.clock()
            post, self._post = self._post, []
            self._apply(self.cmp.checkpoint_done(now))
            for side, pid, data in post:
                self._apply(self.cmp.packet(side, pid, data, now))
            self._flush()
            log.info("checkpoint done: released %d held packets, %d after the barrier "
                     "compared afresh", held, len(post))
        elif kind in ("failover", "pause"):
            self.modes.fire(EVENTS[kind])
            self._passthrough(kind)
        elif kind == "resume":
            self.modes.fire(Event.RESUME)
            if self.datapath is not None:
                self.datapath.set_mode(0)
            self.cmp = Comparator(self.settings.compare)
            post, self._post = self._post, []
            for side, pid, data in post:
                self._apply(self.cmp.packet(side, pid, data, self.clock()))
            self._flush()
            self.wake = None
            log.info("protection resumed: comparing again (the orchestrator checkpoints first)")
        else:
            raise ProtocolError(f"unknown message type {kind!r}")
        return {"type": "ok", "for": kind}

    def _passthrough(self, why: str) -> None:
        # The secondary is gone (failover) or protection is paused: what is held can only
        # go out now, and new output passes at once.
        self._post = []  # its PVM packets are still outstanding: accept_all releases them
        if self.datapath is not None:
            self.datapath.set_mode(1)
        self.queue.accept_all()
        self.hold.release_all(self.clock())
        self.cmp = Comparator(self.settings.compare)
        self.wake = None
        log.warning("%s: output now passes uncompared, mirroring stopped", why)

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
            elif isinstance(c, RequestCheckpoint):
                reason = str(c.reason)
                self.checkpoint_requests[reason] = self.checkpoint_requests.get(reason, 0) + 1
                msg = {"type": "checkpoint_request", "reason": reason,
                       "flow": flow_json(c.flow), "offset": c.offset}
                sent = self.notify(msg)
                log.warning("checkpoint requested: %s on %s at offset %s%s", reason,
                            c.flow or "-", c.offset,
                            "" if sent else " (no orchestrator connected: output stays held)")
            elif isinstance(c, Wakeup):
                self.wake = c.at
            else:
                raise RuntimeError(f"Unexpected command: {c}")

    def _flush(self) -> None:
        if self._accept:
            self.hold.released(self._accept, self.clock())
            self.queue.decide(self._accept)
            self._accept = []

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "status", "role": "primary", "mode": self.mode.label,
            "uptime_seconds": round(self.clock() - self.started, 3),
            "held_packets": self.cmp.held_packets, "flows": self.cmp.flow_count,
            "checkpoint_pending": self.cmp.checkpoint_pending,
            "checkpoint_requests": dict(self.checkpoint_requests),
            "checkpoints_done": self.checkpoints,
            "compare": self.cmp.stats.as_dict(),
            "svm_non_ip": self.svm_non_ip, "truncated_copies": self.truncated,
            "passed_uncompared": self.passed_uncompared,
            "compared_bytes": dict(self.compared_bytes),
        }
        if self.datapath is not None:
            out["datapath"] = self.datapath.counters()
            out["carried_flows"] = self.datapath.carried()
        read_drops = getattr(self.svm, "read_drops", None)
        if read_drops is not None:
            out["svm_socket_drops"] = read_drops()
        enobufs = getattr(self.queue, "enobufs", None)
        if enobufs is not None:
            out["queue_overflows"] = enobufs
        return out


class SecondaryProxy:
    """The secondary host's side: only the datapath (rewrite, steer) and its controls."""

    def __init__(self, datapath: Any, clock: Callable[[], float] = time.monotonic, *,
                 handover: Path | None = None) -> None:
        self.datapath = datapath
        self.handover = handover  # where the offsets go at failover (service.handover_file)
        self.modes = Machine()
        self.clock = clock
        self.started = clock()
        self.checkpoints = 0

    @property
    def mode(self) -> Mode:
        return self.modes.mode

    def timeout(self, cap: float = 1.0) -> float:
        return cap

    def idle(self) -> bool:
        return True

    def on_control(self, msg: dict[str, Any]) -> dict[str, Any]:
        kind = msg["type"]
        if kind == "hello":
            return {"type": "hello", "role": "secondary", "mode": self.mode.label}
        if kind == "status" and msg.get("offsets"):
            return {"type": "offsets", "offsets": [
                {"vm": o.vm, "peer": o.peer,  # [fd99::10]:80 for IPv6
                 "pvm_isn": o.pvm_isn, "svm_isn": o.svm_isn, "offset": o.offset,
                 "complete": o.complete, "ts_offset": o.ts_offset}
                for o in self.datapath.offsets()]}
        if kind == "status":
            return {"type": "status", "role": "secondary", "mode": self.mode.label,
                    "uptime_seconds": round(self.clock() - self.started, 3),
                    "checkpoints_done": self.checkpoints,
                    "offsets": len(offs := self.datapath.offsets()),
                    "offsets_nonzero": sum(1 for o in offs if o.complete and o.offset),
                    "carried_flows": self.datapath.carried(),
                    "datapath": self.datapath.counters()}
        if kind == "checkpoint_started":
            pass
        elif kind == "checkpoint_done":
            self.modes.fire(Event.CHECKPOINT_DONE)
            self.checkpoints += 1
            n = self.datapath.reset_offsets()
            self._void_handover()
            log.info("checkpoint done: %d sequence offsets reset", n)
        elif kind in ("failover", "pause"):
            self.modes.fire(EVENTS[kind])
            self.datapath.set_mode(1)
            log.warning("%s: SVM output goes to the bridge; old connections still rewritten",
                        kind)
            if kind == "failover" and self.handover is not None:
                # From now on no flow is learned: these are all the flows in the VM's own
                # spaces, for the primary-role proxy after the role swap.
                # With the flows an earlier role swap carried, which go on as they are.
                n = write_handover(self.handover, self.datapath.offsets()
                                   + self.datapath.carried_offsets())
                log.info("%d connection offset(s) written to %s for the role swap", n,
                         self.handover)
        elif kind == "resume":
            self.modes.fire(Event.RESUME)
            self.datapath.set_mode(0)
            self._void_handover()
            log.info("protection resumed")
        else:
            raise ProtocolError(f"unknown message type {kind!r}")
        return {"type": "ok", "for": kind}

    def _void_handover(self) -> None:
        if self.handover is not None:
            discard_handover(self.handover)


# The loop ------------------------------------------------------------------------
class _Stop(Exception):
    pass


def serve(proxy: PrimaryProxy | SecondaryProxy, control: ControlServer,
          sources: dict[str, Any], ready: Callable[[], None] | None = None, *,
          busy_poll_us: int = 0, busy_poll_held: bool = False) -> None:
    """Poll the sources and the control socket until SIGTERM/SIGINT.

    One epoll set; each ready descriptor maps straight to its handler (no selector
    objects on the per-packet path: a request/response exchange wakes this loop twice).

    With `busy_poll_us`, each packet from a source opens a window of that many
    microseconds in which the loop polls without sleeping (epoll with a zero timeout,
    yielding the CPU after each empty poll), so the next packet of a request/response
    exchange finds the proxy awake; once the window passes with nothing read, the loop
    blocks in epoll again. Idle cost: at most one window of polling per burst. Unless
    `busy_poll_held`, the loop polls only while no PVM packet waits for its SVM twin:
    the SVM needs the CPU to produce it, and a spinning proxy on shared CPUs delays it.
    """
    ep = select.epoll()
    handlers: dict[int, Callable[[], None]] = {}
    data_fds: set[int] = set()

    def watch(fd: int, handler: Callable[[], None]) -> None:
        ep.register(fd, select.EPOLLIN)
        handlers[fd] = handler

    def forget(fd: int) -> None:
        if handlers.pop(fd, None) is not None:
            try:
                ep.unregister(fd)
            except OSError:
                pass  # already closed (ControlServer.read drops a client that went away)

    def on_accept() -> None:
        c = control.accept()
        if c is not None:
            fd = c.fileno()
            watch(fd, lambda: _control_readable(proxy, control, c, lambda: forget(fd)))

    watch(control.fileno(), on_accept)
    for name, src in sources.items():
        assert isinstance(proxy, PrimaryProxy)
        watch(src.fileno(), proxy.on_pvm_readable if name == "pvm" else proxy.on_svm_readable)
        data_fds.add(src.fileno())
    primary = proxy if isinstance(proxy, PrimaryProxy) else None
    stop = False
    busy = busy_poll_us / 1e6
    busy_until = 0.0
    clock = time.monotonic

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    if ready is not None:
        ready()
    try:
        while not stop:
            polling = busy and clock() < busy_until and (busy_poll_held or proxy.idle())
            events = ep.poll(0.0 if polling else proxy.timeout())
            data = False
            for fd, _ev in events:
                handler = handlers.get(fd)
                if handler is not None:
                    handler()
                    if fd in data_fds:
                        data = True
            if data and busy:
                busy_until = clock() + busy
            elif polling and not events:
                os.sched_yield()  # let the VMs (or anyone) run: 2 shared CPUs
            if primary is not None:
                primary.on_timer()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        ep.close()


def _control_readable(proxy: PrimaryProxy | SecondaryProxy, control: ControlServer,
                      client: Any, forget: Callable[[], None]) -> None:
    msgs = control.read(client)
    if msgs is None:
        forget()
        return
    for m in msgs:
        if isinstance(m, ProtocolError):
            client.send({"type": "error", "error": str(m)})
            continue
        try:
            reply = proxy.on_control(m)
        except (ProtocolError, IllegalTransition) as exc:
            reply = {"type": "error", "error": str(exc)}
        client.send(reply)
