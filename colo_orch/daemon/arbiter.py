"""Split-brain guard: only the holder of the pair's lease may serve as primary.

The lease is Patroni's leader key: a key per pair, bound to a lease with a TTL in a
store that decides expiry itself. The primary's loop says every cycle whether it
wants the lease (`want`); a keeper renews it in the background, so a slow store
never stalls the loop, and the loop reads the keeper's last answers (`view`)
without waiting. A secondary takes over only after `acquire_now` succeeded.

The sync key (docs/ORCHESTRATOR.md, S6) says whether the secondary's copy is current:
the loop says every cycle what it should say (`want_sync`), the holder writes it, and
a secondary's acquisition refuses while it names another host as serving alone.

`safe_until` is the holder's own, conservative end of its hold, on its own
monotonic clock: the time the grant or keep-alive request was sent, plus the TTL
the store granted, less `timing.lease_margin`. The store starts the TTL no earlier
than it received the request, so the holder's hold ends (and it fences) before the
store can let anyone else acquire, whatever the two hosts' clocks say.

Implementations:
- `colo_orch.daemon.etcd_arbiter.EtcdArbiter`: etcd (two or more machines).
- `LocalLeaseArbiter` (here): a lock file and this machine's monotonic clock, for
  ONE MACHINE ONLY (both orchestrators on one host). Two hosts each with their own
  file would each hold "the" lease: `colo-orch check` refuses that configuration.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LeaseView:
    """The store's last answers, as the keeper saw them (all times: local monotonic)."""

    held: bool  # the store's last answer says we hold the pair's leader key
    holder: str | None  # the holder per that answer (None: the key is absent)
    # Our hold is certain until then; 0.0 when not held. The send time of the grant or
    # keep-alive request + the TTL the store granted - timing.lease_margin.
    safe_until: float
    reachable: bool  # the store's last request succeeded
    checked_at: float  # when the last answer came
    error: str = ""  # why the last request failed, or why we lost the lease; "" otherwise
    # When we sent the grant or keep-alive that the store last answered for our lease (0.0
    # when not held): the store knew us alive at or after that moment.
    renewed_at: float = 0.0
    # The sync key (S6) names us as serving alone: our peer's copy is stale.
    alone_recorded: bool = False
    # The sync key said, when we last tried to acquire, that the other host served alone
    # after our last checkpoint: our copy is stale (error says so).
    stale: bool = False


STALE = "the other host served alone after our last checkpoint: our copy is stale"


def sync_refuses(sync: str, who: str) -> bool:
    """Whether a sync key's value forbids `who` to take over (S6): another host served
    alone after our last checkpoint. Absent ("") or "protected": our copy is current."""
    return sync.startswith("alone:") and sync != f"alone:{who}"


NOT_CHECKED = LeaseView(held=False, holder=None, safe_until=0.0, reachable=False,
                        checked_at=0.0, error="not checked yet")


class Arbiter(ABC):
    """The pair's lease, held for one host (`who`, given to the constructor).

    Only `acquire_now` and `release` wait for the store, each for a bounded time;
    `want` and `view` return at once.
    """

    # Called (on the keeper's thread) when the view's hold, holder, `alone_recorded` or
    # `stale` changes: the runner wakes its loop, so that a take-over waits for no
    # loop_wait between the key acquired, `alone` recorded and the take-over.
    on_change: Callable[[], object] = staticmethod(lambda: None)

    @abstractmethod
    def start(self) -> None:
        """Start the keeper (idempotent)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the keeper. Does NOT release: a stopped holder's lease expires by itself."""

    @abstractmethod
    def want(self, hold: bool, now: float) -> None:
        """Called by the loop every cycle. True: acquire (create if absent) and keep alive.

        False: do not renew; revoke the lease if we hold it. A True not repeated for more
        than ttl/3 counts as False: a loop that stopped deciding must lose the lease.
        """

    @abstractmethod
    def want_sync(self, record: str) -> None:
        """Called by the loop every cycle, before `want`: what the pair's sync key should
        say (S6), written only while we hold the leader key.

        record "alone": we are about to serve alone (a primary leaving COLO, or a secondary
        taking over); the view says `alone_recorded` once the store has it. "protected":
        our secondary's copy is current again. "": leave the key as it is. Every
        acquisition (`want`, `acquire_now`) refuses while the key says another host served
        alone, whatever our role.
        """

    @abstractmethod
    def view(self) -> LeaseView:
        """The keeper's last answers. Never waits for the store."""

    @abstractmethod
    def acquire_now(self, timeout: float) -> bool:
        """Create the key if absent, now (the take-over path); True if we hold it after.

        Returns within `timeout` seconds. Counts as a `want(True)` at the time of the call.
        """

    @abstractmethod
    def release(self) -> None:
        """Revoke the lease now if we hold it (bounded, best effort)."""


class LocalLeaseArbiter(Arbiter):
    """A lease in a lock-protected file, timed by this machine's monotonic clock.

    For ONE MACHINE ONLY: the lease file and `time.monotonic()` mean nothing to another
    host, so two hosts each with their own file both hold "the" lease. There is no
    keeper thread: the file is local, so `want` renews it synchronously.
    """

    def __init__(self, path: str | Path, who: str, ttl: float, margin: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.who = who
        self.ttl = ttl
        self.margin = margin
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._mu = threading.Lock()
        self._error = ""
        self._stale = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def _locked(self) -> int:
        fd = os.open(str(self.path) + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _read(self) -> tuple[str | None, float, str]:
        try:
            data = json.loads(self.path.read_text())
            return (str(data["holder"]) if data.get("holder") else None, float(data["expires"]),
                    str(data.get("sync", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None, 0.0, ""

    def _write(self, holder: str | None, expires: float, sync: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"holder": holder, "expires": expires, "sync": sync}))
        os.replace(tmp, self.path)

    def _take(self) -> bool:
        with self._mu:
            fd = self._locked()
            try:
                holder, expires, sync = self._read()
                now = self.clock()
                if holder not in (None, self.who) and expires > now:
                    return False
                self._stale = sync_refuses(sync, self.who)
                if self._stale:
                    return False
                self._write(self.who, now + self.ttl, sync)
                return True
            finally:
                os.close(fd)

    def want(self, hold: bool, now: float) -> None:
        if hold:
            self._take()
        else:
            self._stale = False
            self.release()

    def acquire_now(self, timeout: float) -> bool:
        return self._take()

    def want_sync(self, record: str) -> None:
        with self._mu:
            if not record:
                return
            value = f"alone:{self.who}" if record == "alone" else record
            fd = self._locked()
            try:
                holder, expires, sync = self._read()
                if holder == self.who and expires > self.clock() and sync != value:
                    self._write(holder, expires, value)
            finally:
                os.close(fd)

    def release(self) -> None:
        with self._mu:
            fd = self._locked()
            try:
                holder, _, sync = self._read()
                if holder == self.who:
                    self._write(None, 0.0, sync)
            finally:
                os.close(fd)

    def view(self) -> LeaseView:
        with self._mu:
            fd = self._locked()
            try:
                holder, expires, sync = self._read()
                now = self.clock()
                stale = self._stale
            finally:
                os.close(fd)
        if holder is not None and expires <= now:
            holder = None
        held = holder == self.who
        return LeaseView(held=held, holder=holder,
                         safe_until=expires - self.margin if held else 0.0,
                         reachable=True, checked_at=now,
                         renewed_at=expires - self.ttl if held else 0.0,
                         alone_recorded=sync == f"alone:{self.who}", stale=stale,
                         error=STALE if stale else "")
