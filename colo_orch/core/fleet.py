"""The fleet view's records: what each orchestrator publishes in etcd, and how a reader
groups them by pair. Pure: no I/O, no clock (times are passed in).

Keys, under the arbiter's `etcd_prefix`:
- `{prefix}/{pair}/leader`: the pair's lease holder (the arbiter's key, the truth);
- `{prefix}/{pair}/members/{host}`: one orchestrator's member record (JSON, below),
  bound to an etcd lease of its own, so a dead host's record goes by itself.

Every time in a record is an age the publisher measured on its own monotonic clock
when it published, so a reader never compares two hosts' clocks. `published_at` (the
publisher's wall clock) is for people only. A record is at most about `period_s` old
while its publisher lives, and gone `ttl_s` after it died.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT = 1


@dataclass(frozen=True)
class Member:
    """One orchestrator's record, as it published it."""

    pair: str
    host: str
    role: str
    state: str
    lease_holder: str | None  # as this host's arbiter last saw it (an opinion)
    checkpoint_age_s: float | None  # since this host's last checkpoint; None: none yet
    heartbeat_age_s: float | None  # since this host last heard its peer; None: never
    proxy: str | None  # "connected" / "disconnected"; None: no proxy configured
    api: str  # this host's API address (HOST:PORT)
    published_at: float  # the publisher's wall clock: informational, never compared
    seq: int  # the publisher's count of records published since it started
    uptime_s: float  # how long the publisher has run
    period_s: float  # how often it publishes
    ttl_s: float  # its record's lease TTL
    format: int = FORMAT


@dataclass(frozen=True)
class BadMember:
    """A member key whose value is not a record: shown as such, never dropped."""

    pair: str
    host: str
    error: str
    raw: str  # the start of the value, for the person reading


@dataclass
class Pair:
    name: str
    leader: str | None = None  # the leader key's value: who holds the lease
    members: list[Member | BadMember] = field(default_factory=list)


def member_record(status: Mapping[str, Any], *, api: str, published_at: float, seq: int,
                  uptime_s: float, period_s: float, ttl_s: float) -> Member:
    """The record of an orchestrator from its `Orchestrator.status()`."""
    proxy = status.get("proxy_connected")
    return Member(
        pair=str(status["name"]), host=str(status["host"]), role=str(status["role"]),
        state=str(status["state"]), lease_holder=_opt_str(status.get("lease_holder")),
        checkpoint_age_s=_opt_num(status.get("last_checkpoint_age_s")),
        heartbeat_age_s=_opt_num(status.get("peer_seen_s_ago")),
        proxy=None if proxy is None else ("connected" if proxy else "disconnected"),
        api=api, published_at=round(published_at, 3), seq=seq, uptime_s=round(uptime_s, 3),
        period_s=period_s, ttl_s=ttl_s)


def encode(m: Member) -> str:
    return json.dumps(asdict(m), sort_keys=True, separators=(",", ":"))


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def _opt_num(v: Any) -> float | None:
    return None if v is None else round(float(v), 3)


# Field: (accepted types, may be null). bool is an int to Python: refused separately.
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "pair": ((str,), False), "host": ((str,), False), "role": ((str,), False),
    "state": ((str,), False), "lease_holder": ((str,), True),
    "checkpoint_age_s": ((int, float), True), "heartbeat_age_s": ((int, float), True),
    "proxy": ((str,), True), "api": ((str,), False), "published_at": ((int, float), False),
    "seq": ((int,), False), "uptime_s": ((int, float), False),
    "period_s": ((int, float), False), "ttl_s": ((int, float), False),
}


def parse_member(pair: str, host: str, raw: str) -> Member | BadMember:
    """The record in a member key's value, or a BadMember saying what is wrong with it.

    Any value gives one or the other: a reader must never stop at a bad record."""
    def bad(why: str) -> BadMember:
        return BadMember(pair, host, why, raw[:80])

    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return bad(f"not JSON ({exc.__class__.__name__})")
    if not isinstance(doc, dict):
        return bad(f"a JSON {type(doc).__name__}, not an object")
    if doc.get("format") != FORMAT:
        return bad(f"format {doc.get('format')!r}, this coloctl reads format {FORMAT}")
    args: dict[str, Any] = {}
    for name, (types, nullable) in _FIELDS.items():
        if name not in doc:
            return bad(f"no field {name!r}")
        v = doc[name]
        if v is None and nullable:
            args[name] = None
            continue
        if isinstance(v, bool) or not isinstance(v, types):
            return bad(f"field {name!r} is {v!r}")
        args[name] = v
    if args["pair"] != pair or args["host"] != host:
        return bad(f"says it is {args['pair']}/{args['host']}: published under another key")
    return Member(**args)


_MEMBERS = "members/"


def group(prefix: str, kvs: list[tuple[str, str]]) -> list[Pair]:
    """The pairs under `prefix`, sorted by name, their members by host, from the
    (key, value) pairs of a range read of `prefix/`. Other keys are passed over."""
    pairs: dict[str, Pair] = {}
    base = prefix.rstrip("/") + "/"
    for key, value in kvs:
        if not key.startswith(base):
            continue
        rest = key[len(base):]
        name, sep, tail = rest.partition("/")
        if not name or not sep:
            continue
        if tail == "leader":
            pairs.setdefault(name, Pair(name)).leader = value
        elif tail.startswith(_MEMBERS) and tail[len(_MEMBERS):].count("/") == 0:
            host = tail[len(_MEMBERS):]
            if not host:
                continue
            pairs.setdefault(name, Pair(name)).members.append(parse_member(name, host, value))
    for p in pairs.values():
        p.members.sort(key=lambda m: m.host)
    return [pairs[n] for n in sorted(pairs)]
