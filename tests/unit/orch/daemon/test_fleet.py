"""The fleet publisher with no etcd to answer: it goes on trying, logs once a minute at
most, and a failing status callback does not end it either."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from colo_lab.etcd import free_port
from colo_lab.wait import wait_until
from colo_orch.daemon.etcd_arbiter import EtcdSettings
from colo_orch.daemon.fleet import FleetPublisher

STATUS: dict[str, Any] = {"name": "web", "host": "h1", "state": "PROTECTED",
                          "role": "primary"}


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
