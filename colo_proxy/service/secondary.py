"""The secondary host's proxy: the datapath's controls (rewrite, steer) and the handover.

Nothing is compared here: the SVM's output goes over the forward link to the primary's
comparator while protected, and to the bridge after a failover.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from colo_proxy.service.handover_file import discard as discard_handover
from colo_proxy.service.handover_file import write as write_handover
from colo_proxy.service.modes import EVENTS, Event, Mode, initial
from colo_proxy.service.output_record import OutputRecord
from colo_proxy.service.permit import Permit
from colo_proxy.wire.control import ProtocolError
from colo_proxy.wire.tcp_shift import shift_frame, shifts_of

log = logging.getLogger("colo-proxy")


class SecondaryProxy:
    """The secondary host's side: only the datapath (rewrite, steer) and its controls."""

    def __init__(self, datapath: Any, clock: Callable[[], float] = time.monotonic, *,
                 handover: Path | None = None, instance: str = "", carry: Any = None,
                 fenced: bool = False, release_permit: str = "auto",
                 recorder: Any = None) -> None:
        self.datapath = datapath
        # kernel.packet_socket.TapRecorder: the SVM's output kept during a switchover and
        # replayed at the take-over (service.output_record); None: never recorded.
        self.recorder = recorder
        self.record = OutputRecord()
        self._replay_wanted = False  # `replay` came; done once the output reaches the LAN
        self.failed_over = False  # this proxy's SVM took over: it is a primary's VM now
        self.carry = carry  # service.carry_link.Listener: announcements taken and refused
        self.instance = instance
        self.handover = handover  # where the offsets go at failover (service.handover_file)
        # Fenced or not, the datapath starts steering the SVM's output off the LAN (run.py
        # sets mode 0); fenced, pause, failover and resume are refused until unfence.
        self.modes = initial(fenced)
        self.clock = clock
        self.started = clock()
        self.checkpoints = 0
        # After a failover the SVM's output reaches the LAN only under an unexpired release
        # permit (service.permit); without one it is steered off the LAN, as while
        # protected. There is no queue here to hold it in: the guest's TCP retransmits.
        self.permit = Permit(release_permit, first_token=secrets.randbits(48) + 1)

    @property
    def mode(self) -> Mode:
        return self.modes.mode

    def timeout(self, cap: float = 1.0) -> float:
        now = self.clock()
        if self.permit.armed and self.permit.allows(now):
            return max(0.0, min(cap, self.permit.deadline - now))
        return cap

    def on_timer(self) -> None:
        now = self.clock()
        if self.record.expired(now):
            self._stop_recording()
            log.info("no take-over within %.0f s of the request to record: recording ended",
                     now - self.record.armed_at)
        change = self.permit.lapsed_now(now)
        if change is None or self.mode is not Mode.PASSTHROUGH:
            return
        self._steer()
        if change:
            log.warning("release permit %s: SVM output kept off the LAN until it is renewed",
                        "revoked" if self.permit.revoked else "lapsed (not renewed in time)")
        else:
            log.info("release permit renewed: SVM output to the bridge again")

    def _steer(self) -> None:
        """To the bridge only while passing through under a permit; else off the LAN."""
        out = self.mode is Mode.PASSTHROUGH and self.permit.allows(self.clock())
        self.datapath.set_mode(1 if out else 0)
        if out and self._replay_wanted:
            self._replay()

    def on_record_readable(self) -> None:
        assert self.recorder is not None
        self.record.add(self.recorder.read())

    def _stop_recording(self) -> None:
        self._replay_wanted = False
        self.record.reset()
        if self.recorder is not None:
            self.recorder.stop()

    def _replay(self) -> None:
        """The SVM's output since the final checkpoint, to the clients now that it reaches
        them (the frames steered to the primary's comparator meanwhile were dropped)."""
        self._replay_wanted = False
        if self.recorder is None or not self.record.wants_frames:
            return
        self.record.add(self.recorder.read(1 << 20))
        frames = self.record.take()
        self.recorder.stop()
        shifts = shifts_of(self.datapath.offsets() + self.datapath.carried_offsets())
        sent = skipped = failed = 0
        for f in frames:
            out = shift_frame(f, shifts)
            if out is None:
                skipped += 1
                log.debug("not replayed: %s", f[12:40].hex())
            elif self.recorder.send(out):
                sent += 1
                log.debug("replayed: %s", out[12:60].hex())
            else:
                failed += 1
        self.record.replayed += sent
        log.info("replayed %d SVM frame(s) sent since the final checkpoint (%d not TCP, "
                 "%d refused, %d past the bounds): no client waits for a retransmission",
                 sent, skipped, failed, self.record.overflowed)

    def idle(self) -> bool:
        return True

    def on_control(self, msg: dict[str, Any]) -> dict[str, Any]:
        kind = msg["type"]
        if kind == "hello":
            return {"type": "hello", "role": "secondary", "mode": self.mode.label,
                    "pid": os.getpid(), "instance": self.instance,
                    "permits": True}
        if kind == "status" and msg.get("offsets"):
            return {"type": "offsets", "offsets": [
                {"vm": o.vm, "peer": o.peer,  # [fd99::10]:80 for IPv6
                 "pvm_isn": o.pvm_isn, "svm_isn": o.svm_isn, "offset": o.offset,
                 "complete": o.complete, "ts_offset": o.ts_offset}
                for o in self.datapath.offsets()]}
        if kind == "status":
            out = {"type": "status", "role": "secondary", "mode": self.mode.label,
                   "uptime_seconds": round(self.clock() - self.started, 3),
                   "checkpoints_done": self.checkpoints,
                   "offsets": len(offs := self.datapath.offsets()),
                   "offsets_nonzero": sum(1 for o in offs if o.complete and o.offset),
                   "carried_flows": self.datapath.carried(),
                   "datapath": self.datapath.counters(),
                   "permit": self.permit.status(self.clock()),
                   "record": self.record.status()}
            if self.carry is not None:
                out["carry"] = self.carry.stats()
            return out
        if kind == "permit":
            reply = self.permit.on_message(msg, self.clock())
            self.on_timer()
            return reply
        if kind == "checkpoint_started":
            pass
        elif kind == "replay":
            # The take-over is complete (its hook, which may connect this host to the
            # clients, has run): replay once the SVM's output reaches them.
            self._replay_wanted = self.record.wants_frames
            self._steer()
        elif kind == "record":
            if self.recorder is None:
                raise ProtocolError("this proxy has no recorder (started without a tap?)")
            if self.mode is not Mode.PROTECTED:
                raise ProtocolError(f"record applies while protected, not {self.mode.label}")
            self.record.arm(self.clock())
            self.recorder.start()
            log.info("recording the SVM's output from the next checkpoint on, for a "
                     "switchover's take-over")
        elif kind == "checkpoint_done" and self.failed_over:
            # After a failover no checkpoint comes: the take-over's own resume of the SVM,
            # reported as one, would reset the offsets the flows need from now on.
            log.warning("checkpoint_done after the failover: ignored (offsets kept)")
        elif kind == "checkpoint_done":
            if self.recorder is not None and self.record.wants_frames:
                # What is queued is sorted by its arrival against the SVM's resume.
                self.record.add(self.recorder.read(1 << 20))
                self.record.checkpoint_done(_stamp(msg.get("resumed_at")))
            self.modes.fire(Event.CHECKPOINT_DONE)
            self.checkpoints += 1
            n = self.datapath.reset_offsets()
            self._void_handover()
            log.info("checkpoint done: %d sequence offsets reset", n)
        elif kind in ("failover", "pause"):
            self.modes.fire(EVENTS[kind])
            self.failed_over = self.failed_over or kind == "failover"
            self._steer()
            log.warning("%s: SVM output goes to the bridge%s; old connections still rewritten",
                        kind, "" if self.permit.allows(self.clock())
                        else " once the orchestrator's release permit comes")
            if kind == "failover" and self.handover is not None:
                # From now on no flow is learned: these are all the flows in the VM's own
                # spaces, for the primary-role proxy after the role swap.
                # With the flows an earlier role swap carried, which go on as they are.
                n = write_handover(self.handover, self.datapath.offsets()
                                   + self.datapath.carried_offsets())
                log.info("%d connection offset(s) written to %s for the role swap", n,
                         self.handover)
        elif kind == "fence":
            self.modes.fire(Event.FENCE)
            self._stop_recording()
            # Steered to the forward link, the SVM's output reaches no client.
            self.datapath.set_mode(0)
            log.warning("fenced: SVM output kept off the LAN until unfence")
        elif kind == "unfence":
            was = self.mode
            self.modes.fire(Event.UNFENCE)
            if was is Mode.FENCED:
                self._steer()
                log.warning("unfenced: %s again", self.mode.label)
        elif kind == "resume":
            self.modes.fire(Event.RESUME)
            self.failed_over = False
            self._stop_recording()
            self.datapath.set_mode(0)
            self._void_handover()
            log.info("protection resumed")
        else:
            raise ProtocolError(f"unknown message type {kind!r}")
        return {"type": "ok", "for": kind}

    def _void_handover(self) -> None:
        if self.handover is not None:
            discard_handover(self.handover)


def _stamp(value: object) -> float | None:
    """A finite number of seconds, or None (absent or not a number: no stamp)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
