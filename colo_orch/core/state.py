"""The orchestrator's state machine: states, events and the one transition table.

Theory of operation
-------------------
Each host's orchestrator is in exactly one `State`. The reconciliation loop
(`colo_orch.core.decide`) looks at a snapshot of the world and names at most
one `Event`; `Machine.fire(event)` moves to the state the table gives, or raises
`IllegalTransition` and changes nothing. States carry stable numbers: they are
exported as a metric and drawn on dashboards, so a number is never reused.

Lifecycle of a pair (P = primary host, S = secondary host):

    P: STOPPED -start-> STARTING -vm_running-> WAITING -sync-> SYNCING -colo_entered-> PROTECTED
    P: WAITING -serve_alone-> ALONE  (Xen: a primary created paused that no secondary joined
        in time is unpaused to serve; libxl's COLO can no longer take it)
    S: STOPPED -start-> STARTING -vm_running-> WAITING -colo_entered-> PROTECTED
    STOPPED -adopt-> PROTECTED      (a restarted orchestrator finds its VM in COLO)
    STOPPED -sync-> SYNCING         (... or the primary's initial COLO migration under way)
    P: PROTECTED -checkpoint-> CHECKPOINTING -checkpoint_done-> PROTECTED
    S: PROTECTED -peer_lost-> FAILING_OVER -took_over-> ALONE      (S becomes the primary)
    P: PROTECTED -peer_lost-> FAILING_OVER -took_over-> ALONE      (P continues unprotected)
    ALONE -reprotect-> WAITING -sync-> SYNCING -colo_entered-> PROTECTED  (again a primary)
    P: PROTECTED -pause-> PAUSED -resume-> CHECKPOINTING (resync) -> PROTECTED
    any running state -vm_lost-> FENCED (our VM is gone; the peer may take over)
    a serving primary -lease_lost-> HOLDING (output fenced: neither the arbiter's lease nor
        the failsafe lets it serve); HOLDING -lease_regained-> ALONE, -resume-> CHECKPOINTING
        (the secondary still follows), -peer_lost-> FAILING_OVER (leave COLO, serve alone),
        -vm_lost-> FENCED (the peer serves, or the arbiter says it served alone: our
        VM is stale)
    FENCED -reprotect-> STARTING (we come back as a new secondary)
    most states -error-> DEGRADED; a primary whose VM answers again leaves it by
        -peer_lost-> FAILING_OVER (a take-over: serving alone needs `alone` recorded, COLO
        left and the proxy passing)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class State(IntEnum):
    STOPPED = 0  # no VM of ours
    STARTING = 1  # our VM is being started
    WAITING = 2  # primary: VM serves, no secondary yet; secondary: VM waits for migration
    SYNCING = 3  # primary: initial COLO migration to the secondary in progress
    PROTECTED = 4  # COLO running: output compared, checkpoints on demand
    CHECKPOINTING = 5  # primary: a checkpoint is in flight
    FAILING_OVER = 6  # leaving COLO to run alone (peer lost)
    # Serving without a partner (after a failover, or on Xen a primary created paused that no
    # secondary joined in time); re-protection pending (Xen: not without a domain restart)
    ALONE = 7
    PAUSED = 8  # protection paused by the operator: output released uncompared
    DEGRADED = 9  # an error needs attention; the reason is kept; service may continue
    FENCED = 10  # our VM is gone or must not run: the peer is (or may become) the primary
    HOLDING = 11  # primary without the lease (or the failsafe): output fenced, VM kept


class Event(IntEnum):
    START = 0
    VM_RUNNING = 1
    SYNC = 2
    COLO_ENTERED = 3
    CHECKPOINT = 4
    CHECKPOINT_DONE = 5
    PEER_LOST = 6
    TOOK_OVER = 7
    VM_LOST = 8
    REPROTECT = 9
    PAUSE = 10
    RESUME = 11
    ERROR = 12
    RECOVERED = 13  # unused since DEGRADED leaves by a take-over; kept for its number
    STOP = 14
    LEASE_LOST = 15
    LEASE_REGAINED = 16
    ADOPT = 17
    SERVE_ALONE = 18


S, E = State, Event

# The whole table. A (state, event) pair that is missing is illegal.
TRANSITIONS: dict[State, dict[Event, State]] = {
    # SYNC: a restarted primary finds the initial COLO migration under way (adopts it).
    S.STOPPED: {E.START: S.STARTING, E.REPROTECT: S.STARTING, E.ADOPT: S.PROTECTED,
                E.SYNC: S.SYNCING},
    S.STARTING: {
        E.VM_RUNNING: S.WAITING,
        E.VM_LOST: S.FENCED,
        E.ERROR: S.DEGRADED,
        E.STOP: S.STOPPED,
    },
    S.WAITING: {
        E.SYNC: S.SYNCING,
        E.COLO_ENTERED: S.PROTECTED,  # secondary: the primary's migration arrived
        E.VM_LOST: S.FENCED,
        E.PEER_LOST: S.WAITING,
        E.ERROR: S.DEGRADED,
        E.STOP: S.STOPPED,
        E.LEASE_LOST: S.HOLDING,
        E.SERVE_ALONE: S.ALONE,  # Xen: the primary created paused is unpaused alone
    },
    S.SYNCING: {
        E.COLO_ENTERED: S.PROTECTED,
        E.PEER_LOST: S.FAILING_OVER,
        E.VM_LOST: S.FENCED,
        E.ERROR: S.DEGRADED,
        E.STOP: S.STOPPED,
        E.LEASE_LOST: S.HOLDING,
    },
    S.PROTECTED: {
        E.CHECKPOINT: S.CHECKPOINTING,
        E.PEER_LOST: S.FAILING_OVER,
        E.VM_LOST: S.FENCED,
        E.PAUSE: S.PAUSED,
        E.ERROR: S.DEGRADED,
        E.STOP: S.STOPPED,
        E.LEASE_LOST: S.HOLDING,
    },
    S.CHECKPOINTING: {
        E.CHECKPOINT_DONE: S.PROTECTED,
        E.PEER_LOST: S.FAILING_OVER,
        E.VM_LOST: S.FENCED,
        E.ERROR: S.DEGRADED,
        E.STOP: S.STOPPED,
        E.LEASE_LOST: S.HOLDING,
    },
    S.FAILING_OVER: {
        E.TOOK_OVER: S.ALONE,
        E.VM_LOST: S.FENCED,
        E.ERROR: S.DEGRADED,
        E.STOP: S.STOPPED,
        E.LEASE_LOST: S.HOLDING,
    },
    S.ALONE: {
        E.REPROTECT: S.WAITING,
        E.VM_LOST: S.FENCED,
        E.PEER_LOST: S.ALONE,
        E.ERROR: S.DEGRADED,
        E.STOP: S.STOPPED,
        E.LEASE_LOST: S.HOLDING,
    },
    S.PAUSED: {
        E.RESUME: S.CHECKPOINTING,
        E.PEER_LOST: S.FAILING_OVER,
        E.VM_LOST: S.FENCED,
        E.ERROR: S.DEGRADED,
        E.STOP: S.STOPPED,
        E.LEASE_LOST: S.HOLDING,
    },
    S.DEGRADED: {
        E.PEER_LOST: S.FAILING_OVER,
        E.VM_LOST: S.FENCED,
        E.REPROTECT: S.STARTING,
        E.STOP: S.STOPPED,
        E.LEASE_LOST: S.HOLDING,
    },
    S.FENCED: {E.REPROTECT: S.STARTING, E.STOP: S.STOPPED},
    S.HOLDING: {
        E.LEASE_REGAINED: S.ALONE,
        E.RESUME: S.CHECKPOINTING,
        E.PEER_LOST: S.FAILING_OVER,
        E.VM_LOST: S.FENCED,
        E.STOP: S.STOPPED,
    },
}

# States in which our VM runs and serves (or stands by) as part of the pair.
RUNNING_STATES = frozenset(
    {S.WAITING, S.SYNCING, S.PROTECTED, S.CHECKPOINTING, S.FAILING_OVER, S.ALONE, S.PAUSED,
     S.HOLDING}
)
# States in which a primary's VM may release output to clients: each needs the lease
# (or the failsafe), and leaves by LEASE_LOST to HOLDING when it has neither.
SERVING_STATES = frozenset(
    {S.WAITING, S.SYNCING, S.PROTECTED, S.CHECKPOINTING, S.FAILING_OVER, S.ALONE, S.PAUSED,
     S.DEGRADED}
)


class IllegalTransition(Exception):
    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"event {event.name} is not allowed in state {state.name}")
        self.state = state
        self.event = event


@dataclass
class Machine:
    """The current state; `fire` is the only way to change it."""

    state: State = State.STOPPED

    def can(self, event: Event) -> bool:
        return event in TRANSITIONS[self.state]

    def fire(self, event: Event) -> State:
        nxt = TRANSITIONS[self.state].get(event)
        if nxt is None:
            raise IllegalTransition(self.state, event)
        self.state = nxt
        return nxt
