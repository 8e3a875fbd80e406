"""The fleet publisher: its record from a real Orchestrator.status(); with no etcd to
answer it goes on trying and logs once a minute at most, and a failing status callback
does not end it either."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from colo_lab.etcd import free_port
from colo_lab.wait import wait_until
from colo_orch.core.config import Config
from colo_orch.core.fleet import encode, member_record, parse_member
from colo_orch.daemon.arbiter import LocalLeaseArbiter
from colo_orch.daemon.etcd_arbiter import EtcdSettings
from colo_orch.daemon.fleet import FleetPublisher
from colo_orch.daemon.runner import Orchestrator

STATUS: dict[str, Any] = {"name": "web", "host": "h1", "state": "PROTECTED",
                          "role": "primary"}


class _Silent:
    """A heartbeat that never heard its peer."""

    sent = received = rejected = replayed = 0

    def last(self) -> None:
        return None


class _IdleBackend:
    """status() asks the backend only whether a first copy is under way."""

    def progress(self) -> None:
        return None


def test_the_record_of_an_orchestrators_status(tmp_path: Path) -> None:
    cfg = Config(name="web", role="primary", qmp="/q", qmp_events="/e",
                 heartbeat_listen="127.0.0.1:1", peer_heartbeat="127.0.0.1:2",
                 incoming_uri="tcp:10.99.1.1:4444", peer_incoming_uri="tcp:10.99.1.2:4444",
                 arbiter_path=str(tmp_path / "lease"))
    orch = Orchestrator(cfg, backend=_IdleBackend(),  # type: ignore[arg-type]
                        arbiter=LocalLeaseArbiter(cfg.arbiter_path, "h1", 3.0),
                        heartbeat=_Silent(), proxy=None, host_id="h1")  # type: ignore[arg-type]

    def record() -> Any:
        m = member_record(orch.status(), api="10.0.0.1:7411", published_at=time.time(),
                          seq=1, uptime_s=0.0, period_s=1.0, ttl_s=10.0)
        assert parse_member("web", "h1", encode(m)) == m
        return m

    first = record()
    assert (first.pair, first.host, first.role, first.state) == ("web", "h1", "primary",
                                                                 "STOPPED")
    assert first.checkpoint_age_s is None and first.heartbeat_age_s is None
    assert first.proxy is None and first.lease_holder is None
    # A COLO entry with no checkpoint since (a switchover's new primary) dates the sync.
    orch.colo_entered = True
    orch.last_checkpoint_at = time.monotonic() - 3.0
    assert 3.0 <= record().checkpoint_age_s < 4.0
    orch.checkpoints["timer"] += 1
    orch.last_checkpoint_at = time.monotonic() - 5.0
    assert 5.0 <= record().checkpoint_age_s < 6.0


def _publisher(status: Any) -> FleetPublisher:
    settings = EtcdSettings(endpoints=(f"http://127.0.0.1:{free_port()}",))
    return FleetPublisher(settings, "web", "h1", status, "127.0.0.1:7411", period=0.02, ttl=3)


def test_an_unreachable_etcd_is_logged_once_and_retried(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="colo_orch.fleet")
    p = _publisher(lambda: STATUS).start()
    try:
        wait_until(lambda: p.seq >= 10, 10, "ten attempts to publish")
    finally:
        start = time.monotonic()
        p.stop()
        assert time.monotonic() - start < 2.0
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    msg = warned[0].getMessage()
    assert "cannot publish the fleet record /colo/web/members/h1" in msg
    assert "connection refused" in msg, msg


def test_a_failing_status_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    def status() -> dict[str, Any]:
        raise KeyError("name")

    p = _publisher(status).start()
    try:
        wait_until(lambda: p.seq >= 5, 10, "five attempts to publish")
    finally:
        p.stop()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
