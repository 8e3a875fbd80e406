"""The fleet view's publisher: this orchestrator's member record in etcd, once a period.

The key `{etcd_prefix}/{pair}/members/{host}` holds the record of
`colo_orch.core.fleet` and is bound to an etcd lease of its own (`ttl`, kept alive
every ttl/3), not the pair's leader lease: a dead host's record goes by itself after
`ttl`, and a record's lease has no say in who serves. `coloctl list` reads them.

A thread of its own, with its own `EtcdClient` (that client serves one caller at a
time): it reads `status()` (which takes the loop's lock only to copy fields) and never
makes the loop wait for etcd. A failing etcd is logged, at most once a minute with the
count of failures since, and tried again at the next period.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from colo_orch.core.fleet import encode, member_record
from colo_orch.daemon.etcd_arbiter import EtcdClient, EtcdError, EtcdSettings, _b64

log = logging.getLogger("colo_orch.fleet")

LOG_EVERY_S = 60.0


class FleetPublisher:
    def __init__(self, settings: EtcdSettings, pair: str, host: str,
                 status: Callable[[], Mapping[str, Any]], api: str, *, period: float = 1.0,
                 ttl: int = 10, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.key = f"{settings.prefix}/{pair}/members/{host}"
        self.status = status
        self.api = api
        self.period = period
        self.ttl = ttl
        self.clock = clock
        self.wall = wall
        # Each request within one period, over all endpoints: a hung etcd delays only
        # the next record.
        self.client = EtcdClient(settings, request_timeout=max(period, 0.5))
        self.seq = 0
        self._lease = 0
        self._next_keepalive = 0.0
        self._started = clock()
        self._failures = 0  # since the last logged failure
        self._logged_at: float | None = None  # when a failure was last logged
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> FleetPublisher:
        if self._thread is None:
            self._started = self.clock()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
            self._thread.start()
        return self

    def stop(self, revoke: bool = True) -> None:
        """Stop publishing; with `revoke`, delete the record now (a clean exit), else it
        lives until its lease expires (as after a crash)."""
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None:
            t.join(timeout=self.client.request_timeout * 4 + 1)
            if t.is_alive():
                return  # still in a request: the lease expires by itself
        if revoke and self._lease:
            try:
                self.client.call("lease/revoke", {"ID": str(self._lease)})
            except EtcdError as exc:
                log.warning("fleet record %s stays until its lease expires: %s", self.key, exc)
            self._lease = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            start = self.clock()
            try:
                self.publish()
            except Exception as exc:  # any failure, etcd's or a bug: log, try again
                self._failed(exc)
            else:
                self._succeeded()
            self._stop.wait(max(0.0, self.period - (self.clock() - start)))

    def publish(self) -> None:
        """One record: grant a lease if we have none, keep it alive when due, put."""
        now = self.clock()
        self.seq += 1
        rec = member_record(self.status(), api=self.api, published_at=self.wall(),
                            seq=self.seq, uptime_s=now - self._started,
                            period_s=self.period, ttl_s=float(self.ttl))
        if self._lease and now >= self._next_keepalive:
            got = self.client.call("lease/keepalive", {"ID": str(self._lease)})
            if int(got.get("result", {}).get("TTL", 0)) <= 0:
                self._lease = 0  # expired (etcd was away longer than ttl): a new one
            else:
                self._next_keepalive = now + self.ttl / 3
        if not self._lease:
            got = self.client.call("lease/grant", {"TTL": self.ttl})
            self._lease = int(got["ID"])
            self._next_keepalive = now + self.ttl / 3
        try:
            self.client.call("kv/put", {"key": _b64(self.key), "value": _b64(encode(rec)),
                                        "lease": str(self._lease)})
        except EtcdError as exc:
            if "lease not found" in str(exc):
                self._lease = 0  # revoked or expired between keep-alives: next period
            raise

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        now = self.clock()
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY_S:
            more = f" ({self._failures - 1} more failures since)" if self._failures > 1 else ""
            if isinstance(exc, EtcdError):
                log.warning("cannot publish the fleet record %s: %s%s", self.key, exc, more)
            else:
                log.exception("cannot publish the fleet record %s%s", self.key, more)
            self._logged_at = now
            self._failures = 0
        self._failing = True

    def _succeeded(self) -> None:
        if self._failing:
            log.info("publishing the fleet record %s again", self.key)
            self._failing = False
