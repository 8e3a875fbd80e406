"""The proxy's modes: what it does with the VMs' output, and the one transition table.

Theory of operation
-------------------
A proxy is in exactly one `Mode`. Of the orchestrator's control messages, five change
it; `EVENTS` names their `Event`, and `Machine.fire(event)` moves to the mode the table
gives, or raises `IllegalTransition` and changes nothing. The proxies fire before they
act, so an event that is not allowed has no effect at all; the other messages (hello,
status, checkpoint_started) only read the mode.

    PROTECTED -checkpoint_barrier-> BARRIER -checkpoint_done-> PROTECTED    (primary)
    PROTECTED -checkpoint_done-> PROTECTED        (no barrier: the libxl bridge sends none)
    PROTECTED, BARRIER -failover, pause-> PASSTHROUGH -resume-> PROTECTED
    any mode -resume-> PROTECTED                   (a fresh comparator; a checkpoint follows)

The loops that stay put are listed because the message is accepted there and its action
still runs: a checkpoint_done is counted (and, on the secondary, resets the offsets), a
repeated failover releases whatever is queued again. Only the primary reaches BARRIER; it
ignores a barrier the table does not allow (a second one, or one while passing through),
as it always has. The secondary treats checkpoint_barrier as an unknown message.

Modes carry stable numbers; `Mode.label` is the name that the hello and status replies
and the `colo_proxy_mode` metric have always shown: during BARRIER the output is still
compared, so it reports "protected".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Mode(IntEnum):
    PROTECTED = 0  # primary: PVM output held until the SVM's matches; secondary: steered
    PASSTHROUGH = 1  # after failover (the other host is gone) or while paused
    BARRIER = 2  # primary: the PVM stopped for a checkpoint; later arrivals wait for its end

    @property
    def label(self) -> str:
        return LABELS[self]


LABELS = {Mode.PROTECTED: "protected", Mode.PASSTHROUGH: "passthrough",
          Mode.BARRIER: "protected"}
# The short names the proxies use, as `S, E` in colo_orch.core.state.
PROTECTED, PASSTHROUGH, BARRIER = Mode.PROTECTED, Mode.PASSTHROUGH, Mode.BARRIER


class Event(IntEnum):
    CHECKPOINT_BARRIER = 0
    CHECKPOINT_DONE = 1
    FAILOVER = 2
    PAUSE = 3
    RESUME = 4


# The control messages (colo_proxy.wire.control.REQUESTS) that change the mode.
EVENTS = {"checkpoint_barrier": Event.CHECKPOINT_BARRIER,
          "checkpoint_done": Event.CHECKPOINT_DONE, "failover": Event.FAILOVER,
          "pause": Event.PAUSE, "resume": Event.RESUME}

M, E = Mode, Event

# The whole table. A (mode, event) pair that is missing is illegal.
TRANSITIONS: dict[Mode, dict[Event, Mode]] = {
    M.PROTECTED: {
        E.CHECKPOINT_BARRIER: M.BARRIER,
        E.CHECKPOINT_DONE: M.PROTECTED,
        E.FAILOVER: M.PASSTHROUGH,
        E.PAUSE: M.PASSTHROUGH,
        E.RESUME: M.PROTECTED,
    },
    M.BARRIER: {
        E.CHECKPOINT_DONE: M.PROTECTED,
        E.FAILOVER: M.PASSTHROUGH,
        E.PAUSE: M.PASSTHROUGH,
        E.RESUME: M.PROTECTED,
    },
    M.PASSTHROUGH: {
        E.CHECKPOINT_DONE: M.PASSTHROUGH,
        E.FAILOVER: M.PASSTHROUGH,
        E.PAUSE: M.PASSTHROUGH,
        E.RESUME: M.PROTECTED,
    },
}


class IllegalTransition(Exception):
    def __init__(self, mode: Mode, event: Event) -> None:
        super().__init__(f"event {event.name} is not allowed in mode {mode.name}")
        self.mode = mode
        self.event = event


@dataclass
class Machine:
    """The current mode; `fire` is the only way to change it."""

    mode: Mode = Mode.PROTECTED

    def can(self, event: Event) -> bool:
        return event in TRANSITIONS[self.mode]

    def fire(self, event: Event) -> Mode:
        nxt = TRANSITIONS[self.mode].get(event)
        if nxt is None:
            raise IllegalTransition(self.mode, event)
        self.mode = nxt
        return nxt
