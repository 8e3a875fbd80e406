"""The proxy's modes: what it does with the VMs' output, and the one transition table.

Theory of operation
-------------------
A proxy is in exactly one `Mode`. Of the orchestrator's control messages, seven change
it; `EVENTS` names their `Event`, and `Machine.fire(event)` moves to the mode the table
gives, or raises `IllegalTransition` and changes nothing. The proxies fire before they
act, so an event that is not allowed has no effect at all; the other messages (hello,
status, checkpoint_started) only read the mode.

    PROTECTED -checkpoint_barrier-> BARRIER -checkpoint_done-> PROTECTED    (primary)
    PROTECTED -checkpoint_done-> PROTECTED        (no barrier: the libxl bridge sends none)
    PROTECTED, BARRIER -failover, pause-> PASSTHROUGH -resume-> PROTECTED
    PROTECTED, BARRIER, PASSTHROUGH -resume-> PROTECTED  (a fresh comparator; a checkpoint follows)
    any mode -fence-> FENCED -unfence-> the mode it was fenced from (BARRIER: PROTECTED)

A proxy starts PROTECTED (holding: nothing passes uncompared), or FENCED when started with
`--fenced` (`initial`): its orchestrator holds the VM's output (HOLDING, or a restart while
it waits for the arbiter), and a proxy that is only fenced at its hello lets the packets
before it through. Unfenced, it goes to PROTECTED, as a fence from PROTECTED does.

Remus-style buffering (`output = "buffer"`, the primary only) has modes of its own in the
same table: the PVM's output is not compared but held until a checkpoint has copied the
state that produced it, then all of it is released. Such a proxy starts in BUFFERED (or
FENCED, unfenced to BUFFERED) and never enters PROTECTED or BARRIER; its `Machine.home` is BUFFERED, the mode a resume from
PASSTHROUGH and an unfence return to:

    BUFFERED -checkpoint_barrier-> BUFFERED_BARRIER -checkpoint_done-> BUFFERED
    BUFFERED -checkpoint_done-> BUFFERED          (no barrier: everything held is released)
    BUFFERED, BUFFERED_BARRIER -failover, pause-> PASSTHROUGH -resume-> BUFFERED (home)

FENCED fails closed: the orchestrator can no longer prove that it may serve (its lease
could not be renewed), so no output of this host's VM may reach a client. The primary
drops every PVM packet, the held ones included; the secondary steers the SVM's output
away from the LAN. Only `unfence` leaves it: a pause, failover or resume there would
release output, so they are illegal. Unfencing a BARRIER returns to PROTECTED, because
the fence dropped the epoch that the barrier had set aside.

The loops that stay put are listed because the message is accepted there and its action
still runs: a checkpoint_done is counted (and, on the secondary, resets the offsets), a
repeated failover releases whatever is queued again. Only the primary reaches BARRIER; it
ignores a barrier the table does not allow (a second one, or one while passing through),
as it always has. The secondary treats checkpoint_barrier as an unknown message.

Modes carry stable numbers; `Mode.label` is the name that the hello and status replies
and the `colo_proxy_mode` metric have always shown: during BARRIER the output is still
compared, so it reports "protected"; the buffering modes hold the output as well, and
report "protected" too (the orchestrators wait for that word before they call a pair
protected).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Mode(IntEnum):
    PROTECTED = 0  # primary: PVM output held until the SVM's matches; secondary: steered
    PASSTHROUGH = 1  # after failover (the other host is gone) or while paused
    BARRIER = 2  # primary: the PVM stopped for a checkpoint; later arrivals wait for its end
    FENCED = 3  # fail closed: no output of our VM reaches a client until unfence
    BUFFERED = 4  # Remus: PVM output held, uncompared, until the next checkpoint_done
    BUFFERED_BARRIER = 5  # Remus, PVM stopped: later output waits for the checkpoint after

    @property
    def label(self) -> str:
        return LABELS[self]


LABELS = {Mode.PROTECTED: "protected", Mode.PASSTHROUGH: "passthrough",
          Mode.BARRIER: "protected", Mode.FENCED: "fenced", Mode.BUFFERED: "protected",
          Mode.BUFFERED_BARRIER: "protected"}
# The short names the proxies use, as `S, E` in colo_orch.core.state.
PROTECTED, PASSTHROUGH, BARRIER, FENCED = (Mode.PROTECTED, Mode.PASSTHROUGH, Mode.BARRIER,
                                           Mode.FENCED)
BUFFERED, BUFFERED_BARRIER = Mode.BUFFERED, Mode.BUFFERED_BARRIER


class Event(IntEnum):
    CHECKPOINT_BARRIER = 0
    CHECKPOINT_DONE = 1
    FAILOVER = 2
    PAUSE = 3
    RESUME = 4
    FENCE = 5
    UNFENCE = 6


# The control messages (colo_proxy.wire.control.REQUESTS) that change the mode.
EVENTS = {"checkpoint_barrier": Event.CHECKPOINT_BARRIER,
          "checkpoint_done": Event.CHECKPOINT_DONE, "failover": Event.FAILOVER,
          "pause": Event.PAUSE, "resume": Event.RESUME, "fence": Event.FENCE,
          "unfence": Event.UNFENCE}

M, E = Mode, Event

# The whole table. A (mode, event) pair that is missing is illegal.
TRANSITIONS: dict[Mode, dict[Event, Mode]] = {
    M.PROTECTED: {
        E.CHECKPOINT_BARRIER: M.BARRIER,
        E.CHECKPOINT_DONE: M.PROTECTED,
        E.FAILOVER: M.PASSTHROUGH,
        E.PAUSE: M.PASSTHROUGH,
        E.RESUME: M.PROTECTED,
        E.FENCE: M.FENCED,
        E.UNFENCE: M.PROTECTED,
    },
    M.BARRIER: {
        E.CHECKPOINT_DONE: M.PROTECTED,
        E.FAILOVER: M.PASSTHROUGH,
        E.PAUSE: M.PASSTHROUGH,
        E.RESUME: M.PROTECTED,
        E.FENCE: M.FENCED,
        E.UNFENCE: M.BARRIER,
    },
    M.BUFFERED: {
        E.CHECKPOINT_BARRIER: M.BUFFERED_BARRIER,
        E.CHECKPOINT_DONE: M.BUFFERED,
        E.FAILOVER: M.PASSTHROUGH,
        E.PAUSE: M.PASSTHROUGH,
        E.RESUME: M.BUFFERED,
        E.FENCE: M.FENCED,
        E.UNFENCE: M.BUFFERED,
    },
    M.BUFFERED_BARRIER: {
        E.CHECKPOINT_DONE: M.BUFFERED,
        E.FAILOVER: M.PASSTHROUGH,
        E.PAUSE: M.PASSTHROUGH,
        E.RESUME: M.BUFFERED,
        E.FENCE: M.FENCED,
        E.UNFENCE: M.BUFFERED_BARRIER,
    },
    M.PASSTHROUGH: {
        E.CHECKPOINT_DONE: M.PASSTHROUGH,
        E.FAILOVER: M.PASSTHROUGH,
        E.PAUSE: M.PASSTHROUGH,
        # Or BUFFERED: the machine's home (Machine.home).
        E.RESUME: M.PROTECTED,
        E.FENCE: M.FENCED,
        E.UNFENCE: M.PASSTHROUGH,
    },
    M.FENCED: {
        # A checkpoint in flight when the fence came still ends: counted, nothing released.
        E.CHECKPOINT_DONE: M.FENCED,
        E.FENCE: M.FENCED,
        # Or PASSTHROUGH: the mode it was fenced from (Machine.fenced_from).
        E.UNFENCE: M.PROTECTED,
    },
}
# Where an unfence returns to, by the mode the fence came in.
UNFENCE_TO = {M.PROTECTED: M.PROTECTED, M.BARRIER: M.PROTECTED, M.PASSTHROUGH: M.PASSTHROUGH,
              M.BUFFERED: M.BUFFERED, M.BUFFERED_BARRIER: M.BUFFERED}


class IllegalTransition(Exception):
    def __init__(self, mode: Mode, event: Event) -> None:
        super().__init__(f"event {event.name} is not allowed in mode {mode.name}")
        self.mode = mode
        self.event = event


@dataclass
class Machine:
    """The current mode; `fire` is the only way to change it.

    `fenced_from` is the one piece of history the table needs: where unfence goes.
    `home` is what protects this proxy's output, PROTECTED (compare) or BUFFERED (Remus):
    where a resume from PASSTHROUGH goes. `Machine.buffering()` makes a Remus machine.
    """

    mode: Mode = Mode.PROTECTED
    fenced_from: Mode = Mode.PROTECTED
    home: Mode = Mode.PROTECTED

    @classmethod
    def buffering(cls) -> Machine:
        return cls(M.BUFFERED, fenced_from=M.BUFFERED, home=M.BUFFERED)

    def can(self, event: Event) -> bool:
        return event in TRANSITIONS[self.mode]

    def fire(self, event: Event) -> Mode:
        nxt = TRANSITIONS[self.mode].get(event)
        if nxt is None:
            raise IllegalTransition(self.mode, event)
        if self.mode is M.FENCED and event is E.UNFENCE:
            nxt = self.fenced_from
        elif self.mode is M.PASSTHROUGH and event is E.RESUME:
            nxt = self.home
        elif nxt is M.FENCED and self.mode is not M.FENCED:
            self.fenced_from = UNFENCE_TO[self.mode]
        self.mode = nxt
        return nxt


def initial(fenced: bool = False, buffer: bool = False) -> Machine:
    """A new proxy's modes: FENCED from the first packet when `fenced`, else its home:
    PROTECTED, or BUFFERED when it buffers (`buffer`, Remus-style); unfence goes home."""
    home = M.BUFFERED if buffer else M.PROTECTED
    return Machine(M.FENCED if fenced else home, fenced_from=home, home=home)
