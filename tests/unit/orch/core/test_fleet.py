"""Member records: what a status publishes, read back; any other value is a BadMember."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from colo_orch.core.fleet import BadMember, Member, encode, group, member_record, parse_member

STATUS: dict[str, Any] = {
    "name": "web", "host": "h1", "state": "PROTECTED", "role": "primary",
    "lease_holder": "h1", "last_checkpoint_age_s": 0.4321, "peer_seen_s_ago": 0.05,
    "proxy_connected": True,
}


def record(**status: Any) -> Member:
    return member_record({**STATUS, **status}, api="10.0.0.1:7411", published_at=1e9 + 0.5,
                         seq=7, uptime_s=12.0, period_s=1.0, ttl_s=10.0)


def test_a_record_reads_back_as_published() -> None:
    m = record()
    assert m.checkpoint_age_s == 0.432 and m.heartbeat_age_s == 0.05
    assert m.proxy == "connected" and m.lease_holder == "h1"
    assert parse_member("web", "h1", encode(m)) == m


def test_nulls_say_none_yet_and_no_proxy() -> None:
    m = record(last_checkpoint_age_s=None, peer_seen_s_ago=None, proxy_connected=None,
               lease_holder=None)
    assert (m.checkpoint_age_s, m.heartbeat_age_s, m.proxy, m.lease_holder) == (None,) * 4
    assert parse_member("web", "h1", encode(m)) == m
    assert record(proxy_connected=False).proxy == "disconnected"


def _doc(**change: Any) -> str:
    d = json.loads(encode(record()))
    d.update(change)
    return json.dumps(d)


@pytest.mark.parametrize(("raw", "why"), [
    ("", "not JSON"),
    ("{", "not JSON"),
    ("[]", "a JSON list, not an object"),
    ("null", "a JSON NoneType"),
    ("7", "a JSON int"),
    ("[" * 100_000, "not JSON"),
    ('{"format": 2}', "format 2, this coloctl reads format 1"),
    ('{"format": 1}', "no field 'pair'"),
    (_doc(seq="7"), "field 'seq' is '7'"),
    (_doc(seq=True), "field 'seq' is True"),
    (_doc(state=None), "field 'state' is None"),
    (_doc(checkpoint_age_s="soon"), "field 'checkpoint_age_s' is 'soon'"),
    (_doc(host="h2"), "says it is web/h2: published under another key"),
])
def test_a_bad_value_is_named_not_raised(raw: str, why: str) -> None:
    got = parse_member("web", "h1", raw)
    assert isinstance(got, BadMember), got
    assert why in got.error, got.error
    assert got.raw == raw[:80]


def test_group_sorts_pairs_and_hosts_and_passes_over_other_keys() -> None:
    b = replace(record(), pair="db", host="b2")
    kvs = [
        ("/colo/web/leader", "h1"),
        ("/colo/web/members/h2", encode(replace(record(), host="h2"))),
        ("/colo/web/members/h1", encode(record())),
        ("/colo/db/members/b2", encode(b)),
        ("/colo/db/members/b1", "garbage"),
        ("/colo/web/members/", "x"), ("/colo/web/members/a/b", "x"), ("/colo/web", "x"),
        ("/colo/web/other", "x"), ("/colox/web/leader", "h9"), ("/colo//leader", "h9"),
    ]
    pairs = group("/colo", kvs)
    assert [p.name for p in pairs] == ["db", "web"]
    db, web = pairs
    assert db.leader is None and [m.host for m in db.members] == ["b1", "b2"]
    assert isinstance(db.members[0], BadMember) and db.members[1] == b
    assert web.leader == "h1" and [m.host for m in web.members] == ["h1", "h2"]
    assert group("/colo", [("/colo/web/leader", "h1")])[0].members == []
