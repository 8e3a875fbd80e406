"""What the SVM sent since the switchover's final checkpoint, for its take-over to replay.

A switchover hands over in four steps (docs/ORCHESTRATOR.md, Switchover): a final
checkpoint, the primary fences and stops its VM, the secondary takes the lease, and its
proxy lets the SVM's output reach the clients. Between the checkpoint's end and that last
step (about 50 ms here) the SVM runs on, and what it sends goes over the forward link to
a comparator that is fenced: dropped. The client then waits for the guest's TCP to send
it again (its retransmission timeout, 200 ms at least on Linux): measured, a switchover's
longest client wait was 340-360 ms against 150 ms between answers.

So the secondary's proxy records the SVM's frames from the final checkpoint on, and at the
take-over sends them to the clients itself (shifted into the clients' sequence spaces,
wire.tcp_shift). Only from a checkpoint on: everything the SVM sent before it is replaced
by the PVM's state, and a frame of it could carry bytes that the PVM never sent. Frames
the primary had already released reach the client twice, which TCP takes as a duplicate.

Which frames came after the checkpoint is told by time, not by when the message saying so
arrives: the SVM sends within milliseconds of resuming, before its orchestrator has seen
the resume (measured: its answer to a request in flight at the final checkpoint left
before the proxy heard of the checkpoint, was dropped as old, and the client waited
280 ms for the guest's retransmission). The hypervisor stamps the
resume before the vCPUs run again; the socket stamps each frame as it arrives; both on
this host's wall clock.

Recording is asked for (`arm`) only when a switchover is coming, and ends at the
take-over (`take`) or after `ARMED_FOR` seconds without one: copying every SVM frame into
the proxy would cost the host a core under bulk traffic. Bounded by `MAX_FRAMES` and
`MAX_BYTES`; past either, the rest is left to the guest's retransmission.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

ARMED_FOR = 10.0
MAX_FRAMES = 4096
MAX_BYTES = 16 * 1024 * 1024


class Phase(Enum):
    IDLE = "idle"
    ARMED = "armed"  # asked for; recording starts at the next checkpoint's end
    RECORDING = "recording"


@dataclass
class OutputRecord:
    """Frames as (receive time on this host's wall clock, bytes)."""

    phase: Phase = Phase.IDLE
    armed_at: float = 0.0
    since: float = float("-inf")  # frames received before this are not kept
    frames: list[tuple[float, bytes]] = field(default_factory=list)
    size: int = 0
    overflowed: int = 0  # frames not kept past the bounds (this recording)
    replayed: int = 0  # frames the take-overs sent to the clients, over the proxy's life
    recordings: int = 0

    @property
    def wants_frames(self) -> bool:
        """Whether the recorder's socket must keep frames: from arming on, so that the
        checkpoint's end can tell old frames (dropped there) from new ones."""
        return self.phase is not Phase.IDLE

    def arm(self, now: float) -> None:
        if self.phase is Phase.IDLE:
            self.phase = Phase.ARMED
            self.recordings += 1
            self.since = float("-inf")
        self.armed_at = now

    def checkpoint_done(self, resumed_at: float | None) -> None:
        """The SVM resumed from a checkpoint at `resumed_at` (this host's wall clock, as
        the hypervisor stamped its resume): what it sent before is not its output any
        more. The caller has read the socket's queue into `add` first, so frames sent
        after the resume and read before this message are kept. Without a stamp,
        everything read so far is dropped, which may drop the first few new frames."""
        if self.phase is Phase.IDLE:
            return
        self.phase = Phase.RECORDING
        self.since = resumed_at if resumed_at is not None else float("-inf")
        self.frames = ([(t, f) for t, f in self.frames if t >= resumed_at]
                       if resumed_at is not None else [])
        self.size = sum(len(f) for _, f in self.frames)
        self.overflowed = 0

    def add(self, frames: list[tuple[float, bytes]]) -> None:
        if self.phase is Phase.IDLE:
            return
        for t, f in frames:
            if t < self.since:
                continue  # sent before the checkpoint the SVM last resumed from
            if len(self.frames) >= MAX_FRAMES or self.size + len(f) > MAX_BYTES:
                self.overflowed += 1
                continue
            self.frames.append((t, f))
            self.size += len(f)

    def expired(self, now: float) -> bool:
        """Armed or recording for longer than ARMED_FOR: the switchover did not come (it
        was refused or failed before its hand-over); the recording ends."""
        if self.phase is not Phase.IDLE and now - self.armed_at > ARMED_FOR:
            self.reset()
            return True
        return False

    def take(self) -> list[bytes]:
        """The frames to replay (none unless recording since a checkpoint); recording ends."""
        out = [f for _, f in self.frames] if self.phase is Phase.RECORDING else []
        self.reset()
        return out

    def reset(self) -> None:
        self.phase = Phase.IDLE
        self.frames, self.size = [], 0

    def status(self) -> dict[str, object]:
        return {"phase": self.phase.value, "frames": len(self.frames), "bytes": self.size,
                "overflowed": self.overflowed, "replayed": self.replayed,
                "recordings": self.recordings}
