"""colo_orch.core.permit: the release permit ends with our right to serve, never later."""

from __future__ import annotations

import pytest

from colo_orch.core.permit import permit_seconds

HB = 1.0  # heartbeat_timeout


def seconds(now: float = 10.0, **kw: object) -> float:
    args: dict[str, object] = {"fenced": False, "lease_held": False, "safe_until": 0.0,
                               "failsafe": False, "echo_sent_at": None,
                               "heartbeat_timeout": HB}
    args.update(kw)
    return permit_seconds(now, **args)  # type: ignore[arg-type]


def test_a_lease_holder_gets_until_its_safe_until() -> None:
    assert seconds(lease_held=True, safe_until=11.7) == pytest.approx(1.7)
    assert seconds(lease_held=True, safe_until=9.0) == 0.0  # past it: revoked, not negative


def test_no_lease_or_a_fence_revokes() -> None:
    assert seconds(safe_until=11.7) == 0.0
    assert seconds(fenced=True, lease_held=True, safe_until=11.7) == 0.0
    assert seconds(fenced=True, failsafe=True, echo_sent_at=9.9) == 0.0


def test_on_the_failsafe_until_the_loop_itself_would_stop() -> None:
    # F2: the peer cannot declare us lost before echo + heartbeat_timeout; we stop at half.
    assert seconds(failsafe=True, echo_sent_at=9.8) == pytest.approx(0.3)
    assert seconds(failsafe=True, echo_sent_at=9.0) == 0.0
    assert seconds(failsafe=True, echo_sent_at=None) == 0.0
    # Both: the later end.
    assert seconds(failsafe=True, echo_sent_at=9.8, lease_held=True,
                   safe_until=10.1) == pytest.approx(0.3)
