"""Operator commands without I/O: whether one applies now, and what became of it.

A command the loop would never act on used to be accepted (202) and kept pending,
unlogged: a `pause` sent to a secondary fired much later, once that host had become a
protected primary. Now the API refuses a command that does not apply in the host's state
and role (409, with the reason), and the loop drops a pending one that stops applying
before it acts (the state moved on), so a command either happens soon or visibly not at
all. What applies where follows `colo_orch.core.decide`, which consumes each command:

| command | applies in | does |
|---|---|---|
| checkpoint | a primary, PROTECTED or CHECKPOINTING | one more checkpoint (rate-limited) |
| pause | a primary, PROTECTED or CHECKPOINTING | output released uncompared |
| resume | PAUSED | a checkpoint, then PROTECTED |
| failover | PROTECTED or CHECKPOINTING; a secondary only once the primary is lost | primary: continue alone; secondary: take over |
| reprotect | STOPPED, ALONE or FENCED | start a new secondary (or wait for one) |

`Ledger` keeps the accepted commands: pending ones, and the outcome of the last few
(`done`, `dropped`, `superseded`) for `GET /state` and `coloctl --wait`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from colo_orch.core.state import State


class CommandRefused(Exception):
    """The command does not apply now: str() says why (the API answers 409 with it)."""


COMMANDS = ("checkpoint", "failover", "pause", "resume", "reprotect")
_RUNNING = (State.PROTECTED, State.CHECKPOINTING)
RECENT = 16  # outcomes kept for GET /state


def refusal(command: str, state: State, role: str, peer_gone: bool) -> str | None:
    """Why `command` cannot apply to a host in `state` with `role` (its peer lost or not),
    or None when it applies."""
    where = f"this host is the {role or 'unassigned'} in {state.name}"
    if command not in COMMANDS:
        return f"unknown command {command!r}; one of {', '.join(COMMANDS)}"
    if command in ("checkpoint", "pause"):
        if state is State.PAUSED and command == "pause":
            return "already paused; `resume` ends the pause"
        if role != "primary" or state not in _RUNNING:
            return f"{command} applies to a protected primary; {where}"
        return None
    if command == "resume":
        return None if state is State.PAUSED else f"resume applies while paused; {where}"
    if command == "failover":
        if state not in _RUNNING:
            return f"failover applies to a protected pair; {where}"
        if role == "secondary" and not peer_gone:
            # decide(), F2: a primary cut off from the arbiter may still serve on the
            # failsafe; taking over beside it would split the brain.
            return ("the primary is heard and may serve: a secondary takes over only once "
                    "the primary is lost; run failover on the primary (it continues alone) "
                    "or stop it")
        return None
    if state not in (State.STOPPED, State.ALONE, State.FENCED):
        return f"reprotect applies to a host serving alone, fenced or stopped; {where}"
    return None


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    command: str
    accepted_at: float  # the caller's clock
    outcome: str = ""  # "" while pending; done, dropped, superseded
    detail: str = ""
    ended_at: float | None = None

    def view(self, now: float) -> dict[str, object]:
        out: dict[str, object] = {"id": self.id, "command": self.command,
                                  "age_s": round(now - self.accepted_at, 3)}
        if self.outcome:
            out.update(outcome=self.outcome, detail=self.detail)
        return out


class Ledger:
    """Accepted commands by id. Not thread-safe: the runner holds its lock around it."""

    def __init__(self) -> None:
        self._next = 1
        self.pending: list[Entry] = []
        self.recent: deque[Entry] = deque(maxlen=RECENT)

    def accept(self, command: str, now: float) -> Entry:
        """Record `command` as pending. An operator command (anything but checkpoint)
        replaces one still pending: the loop keeps one."""
        if command != "checkpoint":
            for e in [e for e in self.pending if e.command != "checkpoint"]:
                self._end(e, "superseded", f"replaced by {command} (id {self._next})", now)
        entry = Entry(self._next, command, now)
        self._next += 1
        self.pending.append(entry)
        return entry

    def _end(self, e: Entry, outcome: str, detail: str, now: float) -> None:
        self.pending.remove(e)
        self.recent.append(Entry(e.id, e.command, e.accepted_at, outcome, detail, now))

    def decided(self, *, operator: bool, checkpoints: bool, sentence: str,
                now: float) -> None:
        """The loop acted on the pending operator command, or on the checkpoint requests."""
        for e in list(self.pending):
            if checkpoints if e.command == "checkpoint" else operator:
                self._end(e, "done", sentence, now)

    def recheck(self, state: State, role: str, peer_gone: bool, now: float) -> list[Entry]:
        """Drop the pending commands that no longer apply; return them (to be logged)."""
        dropped = []
        for e in list(self.pending):
            why = refusal(e.command, state, role, peer_gone)
            if why is not None:
                self._end(e, "dropped", f"no longer applies: {why}", now)
                dropped.append(self.recent[-1])
        return dropped

    def outcome(self, id_: int) -> Entry | None:
        for e in self.recent:
            if e.id == id_:
                return e
        return None

    def view(self, now: float) -> dict[str, object]:
        return {"pending": [e.view(now) for e in self.pending],
                "recent": [e.view(now) for e in reversed(self.recent)]}
