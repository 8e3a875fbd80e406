"""Split-brain guard: only the holder of the arbiter's lease may serve as primary.

The lease works like an etcd lease with compare-and-set (Patroni's leader key):
the primary renews it every loop; a secondary may take over only when nobody
else holds a live lease. A primary that loses its VM releases it at once, so
the takeover does not wait for the lease to expire; a primary host that dies
entirely stops renewing, and the lease expires after `ttl`. A network split
leaves the lease with the primary, so the secondary does not take over.

`LocalLeaseArbiter` is the single-host arbiter (both orchestrators on one
machine, as in the lab, or two hosts sharing a lock file on shared storage).
A cluster store plugs in by implementing `Arbiter` with the same semantics:
`acquire` must be an atomic compare-and-set on (holder, expiry).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path


class Arbiter(ABC):
    @abstractmethod
    def acquire(self, who: str) -> bool:
        """Take or renew the lease for `who`; False if another holder's lease is live.

        Atomic with respect to every other caller. Must return within a second.
        """

    @abstractmethod
    def release(self, who: str) -> None:
        """Give the lease up if `who` holds it (no-op otherwise)."""

    @abstractmethod
    def holder(self) -> str | None:
        """The holder of a live lease, or None."""


class LocalLeaseArbiter(Arbiter):
    def __init__(self, path: str | Path, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.ttl = ttl
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _locked(self) -> int:
        fd = os.open(str(self.path) + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _read(self) -> tuple[str | None, float]:
        try:
            data = json.loads(self.path.read_text())
            return (str(data["holder"]) if data.get("holder") else None, float(data["expires"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None, 0.0

    def _write(self, holder: str | None, expires: float) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"holder": holder, "expires": expires}))
        os.replace(tmp, self.path)

    def acquire(self, who: str) -> bool:
        fd = self._locked()
        try:
            holder, expires = self._read()
            now = self.clock()
            if holder not in (None, who) and expires > now:
                return False
            self._write(who, now + self.ttl)
            return True
        finally:
            os.close(fd)

    def release(self, who: str) -> None:
        fd = self._locked()
        try:
            holder, _ = self._read()
            if holder == who:
                self._write(None, 0.0)
        finally:
            os.close(fd)

    def holder(self) -> str | None:
        fd = self._locked()
        try:
            holder, expires = self._read()
            return holder if holder is not None and expires > self.clock() else None
        finally:
            os.close(fd)
