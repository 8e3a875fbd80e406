"""The release permit's core (colo_proxy.service.permit): a clock passed in, nothing else."""

from __future__ import annotations

import math

import pytest

from colo_proxy.service.permit import TOKENS_KEPT, Permit
from colo_proxy.wire.control import ProtocolError


def granted(at: float, token_at: float, seconds: float, enforce: str = "auto") -> Permit:
    p = Permit(enforce)
    tok = p.issue(token_at)
    p.grant(seconds, tok, at)
    return p


def test_the_permit_lapses_exactly_at_its_deadline() -> None:
    p = granted(at=10.0, token_at=10.0, seconds=1.5)
    assert p.deadline == 11.5
    assert p.allows(11.5 - 1e-9)
    assert not p.allows(11.5)
    assert p.remaining(11.0) == pytest.approx(0.5) and p.remaining(12.0) == 0.0


def test_the_deadline_is_measured_from_the_token_not_from_the_receipt() -> None:
    # Token issued at 10.0; the orchestrator computed D after reading it, but its permit
    # reached us only at 14.0 (it was stopped in between): the permit ended at 11.0.
    p = granted(at=14.0, token_at=10.0, seconds=1.0)
    assert p.deadline == 11.0 and not p.allows(14.0)


def test_renewal_moves_the_deadline_and_the_newest_word_wins() -> None:
    p = granted(at=10.0, token_at=10.0, seconds=1.0)
    p.grant(2.0, p.issue(10.5), 10.6)
    assert p.deadline == 12.5 and p.allows(12.0)
    p.grant(0.3, p.issue(11.0), 11.1)  # shorter: the orchestrator's hold ends sooner now
    assert p.deadline == pytest.approx(11.3)
    p.grant(0, p.issue(11.2), 11.2)  # 0: revoked
    assert not p.allows(11.2) and p.revoked


def test_an_unknown_or_stale_token_can_shorten_but_never_extend() -> None:
    p = granted(at=10.0, token_at=10.0, seconds=1.0)
    p.grant(5.0, 999_999, 10.2)  # not ours (a restarted proxy's predecessor's)
    assert p.deadline == 11.0
    p.grant(0.5, None, 10.2)
    assert p.deadline == pytest.approx(10.7)
    first = p.issue(10.3)
    for i in range(TOKENS_KEPT):
        p.issue(10.4 + i)
    p.grant(9.0, first, 10.5)  # forgotten: no extension
    assert p.deadline == pytest.approx(10.7)


def test_enforcement_auto_required_and_off() -> None:
    auto = Permit("auto")
    assert not auto.armed and auto.allows(0.0) and auto.remaining(0.0) == math.inf
    auto.grant(1.0, auto.issue(5.0), 5.0)
    assert auto.armed and auto.allows(5.9) and not auto.allows(6.0)
    required = Permit("required")
    assert required.armed and not required.allows(0.0)  # nothing before the first permit
    off = Permit("off")
    off.grant(0.0, off.issue(1.0), 1.0)
    assert not off.armed and off.allows(100.0)
    with pytest.raises(ValueError):
        Permit("sometimes")


def test_changes_are_reported_once_and_only_expiries_count_as_lapses() -> None:
    p = Permit("required")
    assert p.lapsed_now(0.0) is None  # held from the start: no change, no lapse
    p.grant(1.0, p.issue(0.0), 0.0)
    assert p.lapsed_now(0.5) is False  # valid now
    assert p.lapsed_now(0.6) is None
    assert p.lapsed_now(1.0) is True and p.lapses == 1
    assert p.lapsed_now(1.5) is None and p.lapses == 1
    p.grant(1.0, p.issue(2.0), 2.0)
    assert p.lapsed_now(2.0) is False
    p.grant(0.0, p.issue(2.5), 2.5)  # revoked by the orchestrator: not a lapse
    assert p.lapsed_now(2.5) is True and p.lapses == 1


def test_the_status_counts_a_lapse_before_the_adapter_has_looked() -> None:
    # The CI failure of stop 34: a status read between the deadline and the proxy's next
    # tick said "not allowed" with 0 lapses; the tick then counted it. Both agree now.
    p = Permit("auto")
    p.grant(1.0, p.issue(0.0), 0.0)
    assert p.lapsed_now(0.5) is False
    st = p.status(1.0)
    assert st["allows"] is False and st["lapses"] == 1
    assert p.lapsed_now(1.2) is True and p.status(1.2)["lapses"] == 1  # not twice
    p.grant(1.0, p.issue(2.0), 2.0)
    assert p.lapsed_now(2.1) is False and p.status(2.1)["lapses"] == 1
    p.grant(0.0, p.issue(2.5), 2.5)  # a revocation is not a lapse, looked at or not
    assert p.status(2.6)["lapses"] == 1
    assert p.lapsed_now(2.6) is True and p.status(2.6)["lapses"] == 1


def test_the_control_message_and_its_reply() -> None:
    p = Permit("auto", first_token=41)
    assert p.issue(1.0) == 41
    reply = p.on_message({"type": "permit", "seconds": 2.0, "token": 41}, 1.5)
    assert reply == {"type": "permit", "token": 42, "remaining_s": 1.5}  # from 1.0
    assert p.status(1.5) == {"enforce": "auto", "enforced": True, "allows": True,
                             "remaining_s": 1.5, "lapses": 0, "grants": 1}
    for bad in ({}, {"seconds": "2"}, {"seconds": True}, {"seconds": math.nan},
                {"seconds": math.inf}):
        with pytest.raises(ProtocolError):
            p.on_message({"type": "permit", **bad}, 2.0)
