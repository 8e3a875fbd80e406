"""A campaign's history: one JSON object per line, each with a `type` and a time `t`.

Times are seconds on CLOCK_MONOTONIC since the campaign began (the clients and the runner
run on one machine: network namespaces share that clock).

| type | fields | written by |
|---|---|---|
| `campaign` | seed, faults, workloads, reprotect_bound_s, settle_s | the runner, first |
| `protected` | the pair PROTECTED before the first fault | the runner |
| `invoke` | proc, op, f, and for f=put/get/udp key (put: value; udp: the request) | a client, before a request |
| `ok` | proc, op, f, conn; get: value or absent; stream: n, sha; udp: value (the answer) | a client, on a checked answer |
| `fail` | proc, op, f, error | a client: the request certainly had no effect (never sent) |
| `info` | proc, op, f, error, conn; udp: value (a stray datagram) | a client: the outcome is unknown (timeout, reset, bad answer) |
| `fault` | phase start: id, kind, target, host, params; phase end: id | the runner |
| `recovered` | id, ok, waited_s | the runner: both hosts PROTECTED again after fault `id` (or not, by the deadline) |
| `state` | hosts: {host: {state, role, timeout_checkpoints} or null} | the runner's sampler |
| `mac` | n: {LAN port: frames from the VM's MAC in one 50 ms interval} | the LAN sampler |
| `disk` | id (the fault after whose re-protection), equal (true, false, or null: no answer), message | the runner, with `--disk`: `coloctl disk verify` of the primary's image against the secondary's |
| `end` | the campaign's last record | the runner |

`proc` names one client process; `op` numbers its operations; `conn` numbers the
connections it opened (1 for the first). f: `put`, `get` (kv), `stream` (one response of
the stream), `random`, `udp` (one datagram request and its answer).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Record = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation: its invocation and completion paired."""

    proc: str
    op: int
    f: str
    t0: float  # invoked
    t1: float | None  # completed (None: the history ended first)
    outcome: str  # ok, fail, info, or pending
    key: str = ""
    # put: what was written; get: what was read (None: absent); udp: the datagram received
    value: str | None = None
    conn: int = 0
    n: int = 0  # stream: bytes of the response
    sha: str = ""  # stream: sha256 of what was received
    error: str = ""


@dataclass(frozen=True, slots=True)
class Fault:
    id: int
    kind: str
    target: str
    host: str
    start: float
    end: float | None
    recovered: float | None  # both hosts PROTECTED again
    recovered_ok: bool
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HostSample:
    state: str
    role: str
    timeout_checkpoints: int


@dataclass(frozen=True, slots=True)
class StateSample:
    t: float
    hosts: dict[str, HostSample | None]


@dataclass(frozen=True, slots=True)
class MacSample:
    t: float
    ports: dict[str, int]


@dataclass(frozen=True, slots=True)
class DiskCheck:
    """One `coloctl disk verify` after a re-protection."""

    t: float
    id: int  # the fault it follows
    equal: bool | None  # None: verify itself failed (exit 2), so nothing shows them equal
    message: str


@dataclass(frozen=True, slots=True)
class History:
    header: Record
    protected_at: float | None
    ops: list[Op]
    faults: list[Fault]
    states: list[StateSample]
    macs: list[MacSample]
    end: float
    disks: list[DiskCheck] = field(default_factory=list)


def parse(records: Iterable[Record]) -> History:
    """The history's parts, operations paired with their completions. Unknown types are
    skipped (a newer writer's records)."""
    header: Record = {}
    protected_at: float | None = None
    invokes: dict[tuple[str, int], Record] = {}
    done: dict[tuple[str, int], Record] = {}
    starts: dict[int, Record] = {}
    ends: dict[int, float] = {}
    recs: dict[int, Record] = {}
    states: list[StateSample] = []
    macs: list[MacSample] = []
    disks: list[DiskCheck] = []
    last = 0.0
    for r in records:
        t = float(r.get("t", 0.0))
        last = max(last, t)
        kind = r.get("type")
        if kind == "campaign":
            header = r
        elif kind == "protected":
            protected_at = t
        elif kind == "invoke":
            invokes[(str(r["proc"]), int(r["op"]))] = r
        elif kind in ("ok", "fail", "info"):
            done[(str(r["proc"]), int(r["op"]))] = r
        elif kind == "fault" and r.get("phase") == "start":
            starts[int(r["id"])] = r
        elif kind == "fault" and r.get("phase") == "end":
            ends[int(r["id"])] = t
        elif kind == "recovered":
            recs[int(r["id"])] = r
        elif kind == "state":
            hosts: dict[str, HostSample | None] = {}
            for h, s in dict(r.get("hosts", {})).items():
                hosts[str(h)] = None if not s else HostSample(
                    str(s.get("state")), str(s.get("role")),
                    int(s.get("timeout_checkpoints", 0)))
            states.append(StateSample(t, hosts))
        elif kind == "mac":
            macs.append(MacSample(t, {str(k): int(v) for k, v in dict(r["n"]).items()}))
        elif kind == "disk":
            eq = r.get("equal")
            disks.append(DiskCheck(t, int(r["id"]), None if eq is None else bool(eq),
                                   str(r.get("message", ""))))
    ops = [_op(inv, done.get(k)) for k, inv in invokes.items()]
    ops.sort(key=lambda o: o.t0)
    faults = []
    for i, s in sorted(starts.items()):
        rec = recs.get(i)
        faults.append(Fault(
            id=i, kind=str(s["kind"]), target=str(s.get("target", "")),
            host=str(s.get("host", "")), start=float(s["t"]), end=ends.get(i),
            recovered=float(rec["t"]) if rec is not None and rec.get("ok") else None,
            recovered_ok=bool(rec is not None and rec.get("ok")),
            params=dict(s.get("params", {}))))
    states.sort(key=lambda s: s.t)
    macs.sort(key=lambda m: m.t)
    return History(header, protected_at, ops, faults, states, macs, last, disks)


def _op(inv: Record, end: Record | None) -> Op:
    outcome = "pending" if end is None else str(end["type"])
    e = end or {}
    value: str | None
    if str(inv["f"]) == "put":
        value = str(inv.get("value", ""))
    else:
        value = None if e.get("absent") or "value" not in e else str(e["value"])
    return Op(proc=str(inv["proc"]), op=int(inv["op"]), f=str(inv["f"]), t0=float(inv["t"]),
              t1=float(e["t"]) if end is not None else None, outcome=outcome,
              key=str(inv.get("key", "")), value=value, conn=int(e.get("conn", 0)),
              n=int(e.get("n", 0)), sha=str(e.get("sha", "")), error=str(e.get("error", "")))


def dumps(rec: Record) -> str:
    return json.dumps(rec, separators=(",", ":"), sort_keys=True)


def read(path: Path) -> Iterator[Record]:
    """The records of a history file; a torn last line (a killed writer) is skipped."""
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec
