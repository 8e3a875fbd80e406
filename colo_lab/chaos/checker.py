"""The invariants of a fault campaign, checked over its history (pure: no clock, no I/O).

Each check takes a parsed `History` and returns the `Violation`s it finds; `check` runs
them all. The invariants (docs/RELIABILITY.md says why each):

- kv: an acknowledged PUT stays readable (a GET invoked after the PUT's acknowledgement
  that answers "no such key", or another value, lost it); no GET returns a value that no
  PUT of that key had been invoked with before the GET completed.
- stream: every response of the stream equals the service's deterministic content (its
  sha256, given by `stream_digest`), and the stream's connection survives (no error, no
  second connection).
- udp: every datagram the client received is the echo of a request it sent, with that
  request's sequence number (a request may go unanswered during a fault: UDP promises
  no delivery, and a failover may lose what was in flight).
- at most one host serves: no LAN sample sees the VM's MAC from two hosts' ports, and no
  state sample has both hosts ALONE as primary.
- every fault is followed by re-protection (both hosts PROTECTED) within the bound after
  the fault ended.
- no `timeout` checkpoint while no fault is active: deterministic traffic on a healthy,
  settled pair never makes a PVM packet wait `compare_timeout` for its SVM twin.
- with the replicated disk (the campaign's `disk` flag): after every re-protection,
  `coloctl disk verify` finds the primary's and the secondary's images equal.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from colo_lab.chaos.history import Fault, History, Op

INVARIANTS = ("kv-lost-write", "kv-phantom-read", "stream-corrupt", "stream-broken",
              "udp-wrong-answer", "two-serving", "not-reprotected", "reprotect-slow",
              "timeout-checkpoint", "disk-differs")
# docs/RELIABILITY.md: after a fault ends, PROTECTED again within this. A re-protection
# that swaps the roles restarts both colo-proxies in their new roles, each compiling its
# BPF programs: measured 29 s in all on the 2-core machine with other VMs running.
REPROTECT_BOUND_S = 60.0
SETTLE_S = 5.0  # after re-protection, the pair counts as settled (no fault active) this late
# A timeout checkpoint is asked for compare_timeout after its packet was held (the lab's
# TCG value, colo_lab.lab.TCG_COMPARE_TIMEOUT): its cause is that long before the count.
COMPARE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str  # one of INVARIANTS
    t: float
    detail: str


def check(h: History, stream_digest: Callable[[int], str], *,
          reprotect_bound_s: float = REPROTECT_BOUND_S, settle_s: float = SETTLE_S,
          compare_timeout_s: float = COMPARE_TIMEOUT_S) -> list[Violation]:
    out = [*check_kv(h), *check_stream(h, stream_digest), *check_udp(h), *check_serving(h),
           *check_reprotection(h, reprotect_bound_s),
           *check_timeouts(h, settle_s, compare_timeout_s), *check_disks(h)]
    return sorted(out, key=lambda v: v.t)


def check_kv(h: History) -> list[Violation]:
    puts: dict[str, list[Op]] = {}
    for o in h.ops:
        if o.f == "put":
            puts.setdefault(o.key, []).append(o)
    out = []
    for o in h.ops:
        if o.f != "get" or o.outcome != "ok" or o.t1 is None:
            continue
        writes = puts.get(o.key, [])
        if o.value is not None:
            if not any(w.value == o.value and w.t0 <= o.t1 for w in writes):
                out.append(Violation("kv-phantom-read", o.t1,
                                     f"{o.proc} op {o.op}: GET {o.key} read {o.value[:40]!r}, "
                                     "which no PUT of that key wrote"))
            continue
        acked = [w for w in writes if w.outcome == "ok" and w.t1 is not None and w.t1 <= o.t0]
        if acked:
            w = acked[-1]
            out.append(Violation("kv-lost-write", o.t1,
                                 f"{o.proc} op {o.op}: GET {o.key} found no such key, but "
                                 f"{w.proc} op {w.op} PUT it, acknowledged at {w.t1:.3f}"))
    # A GET that read another value than an acknowledged PUT wrote before it began lost
    # that write too (one PUT per key in our clients: any other value is a phantom above).
    return out


def check_stream(h: History, digest: Callable[[int], str]) -> list[Violation]:
    out = []
    by_proc: dict[str, list[Op]] = {}
    for o in h.ops:
        if o.f == "stream":
            by_proc.setdefault(o.proc, []).append(o)
    for proc, ops in by_proc.items():
        conns = set()
        failing = 0  # failed requests in a row: one outage is one violation
        for o in ops:
            t = o.t1 if o.t1 is not None else o.t0
            if o.outcome == "ok":
                conns.add(o.conn)
                failing = 0
                if o.sha != digest(o.n):
                    out.append(Violation("stream-corrupt", t,
                                         f"{proc} op {o.op}: {o.n} bytes differ from the "
                                         "service's stream"))
            elif o.outcome in ("info", "fail"):
                failing += 1
                if failing == 1:
                    out.append(Violation("stream-broken", t,
                                         f"{proc} op {o.op}: the stream's connection "
                                         f"failed: {o.error}"))
        if len(conns) > 1:
            first = min(o.t1 or o.t0 for o in ops if o.outcome == "ok" and o.conn != min(conns))
            out.append(Violation("stream-broken", first,
                                 f"{proc}: the stream needed {len(conns)} connections"))
    return out


def check_udp(h: History) -> list[Violation]:
    out = []
    for o in h.ops:
        if o.f != "udp" or o.value is None:
            continue
        t = o.t1 if o.t1 is not None else o.t0
        if o.outcome == "ok" and o.value != "echo " + o.key:
            out.append(Violation("udp-wrong-answer", t,
                                 f"{o.proc} op {o.op}: request {o.key[:40]!r} answered "
                                 f"{o.value[:40]!r}"))
        elif o.outcome == "info":
            out.append(Violation("udp-wrong-answer", t,
                                 f"{o.proc} op {o.op}: while {o.key[:40]!r} waited, a "
                                 f"datagram that answers no request sent: {o.value[:40]!r}"))
    return out


def check_serving(h: History) -> list[Violation]:
    out = []
    for m in h.macs:
        if sum(1 for n in m.ports.values() if n > 0) > 1:
            out.append(Violation("two-serving", m.t,
                                 f"frames from the VM's MAC on {sorted(m.ports)} in one "
                                 "interval"))
    for s in h.states:
        alone = [host for host, x in s.hosts.items()
                 if x is not None and x.state == "ALONE" and x.role == "primary"]
        if len(alone) > 1:
            out.append(Violation("two-serving", s.t, f"both hosts ALONE as primary: {alone}"))
    return out


def check_reprotection(h: History, bound_s: float) -> list[Violation]:
    out = []
    for f in h.faults:
        if f.end is None:
            continue  # the campaign stopped within the fault (interrupted)
        if not f.recovered_ok or f.recovered is None:
            out.append(Violation("not-reprotected", f.end,
                                 f"fault {f.id} ({f.kind} {f.target}): the pair was not "
                                 "PROTECTED again"))
        elif f.recovered - f.end > bound_s:
            out.append(Violation("reprotect-slow", f.recovered,
                                 f"fault {f.id} ({f.kind} {f.target}): PROTECTED again "
                                 f"{f.recovered - f.end:.1f} s after it ended (bound "
                                 f"{bound_s:.0f} s)"))
    return out


def busy_windows(h: History, settle_s: float) -> list[tuple[float, float]]:
    """When the pair is not settled: before it was first PROTECTED, and from each fault's
    start until `settle_s` after its re-protection (or the history's end)."""
    first = h.protected_at if h.protected_at is not None else h.end
    wins = [(float("-inf"), first + settle_s)]
    for f in h.faults:
        until = f.recovered if f.recovered is not None else h.end
        wins.append((f.start, until + settle_s))
    return wins


def check_timeouts(h: History, settle_s: float,
                   compare_timeout_s: float = COMPARE_TIMEOUT_S) -> list[Violation]:
    wins = busy_windows(h, settle_s)
    out = []
    last: dict[str, tuple[float, int]] = {}
    for s in h.states:
        for host, x in s.hosts.items():
            if x is None:
                continue
            prev = last.get(host)
            last[host] = (s.t, x.timeout_checkpoints)
            if prev is None or x.timeout_checkpoints <= prev[1]:
                continue  # a restarted orchestrator counts from 0 again
            # The packet that timed out was held from compare_timeout before the count
            # grew: it counts against a quiet pair only if it was held while quiet.
            t0, t1 = prev[0], s.t
            if not any(a < t1 and t0 - compare_timeout_s < b for a, b in wins):
                out.append(Violation("timeout-checkpoint", t1,
                                     f"{host}: {x.timeout_checkpoints - prev[1]} timeout "
                                     f"checkpoint(s) between {t0:.2f} and {t1:.2f} s, no "
                                     "fault active"))
    return out


def check_disks(h: History) -> list[Violation]:
    """With the replicated disk, each re-protection must leave the two images equal: a
    difference, a verify that could not answer, or a re-protection never verified."""
    out = [Violation("disk-differs", d.t, f"after fault {d.id}: " + (
        d.message if d.equal is False else f"coloctl disk verify failed: {d.message}"))
        for d in h.disks if d.equal is not True]
    if h.header.get("disk"):
        seen = {d.id for d in h.disks}
        out += [Violation("disk-differs", f.recovered, f"after fault {f.id} ({f.kind} "
                          f"{f.target}): the disks were not verified")
                for f in h.faults if f.recovered is not None and f.id not in seen]
    return out


# The summary table -------------------------------------------------------------------------
TIMED = {"checkpoint": "(any, during a checkpoint)", "reprotect": "(any, during re-protection)"}


@dataclass(frozen=True, slots=True)
class Row:
    kind: str
    count: int
    recovered: int
    pause_p50: float | None
    pause_max: float | None
    reprotect_p50: float | None
    reprotect_max: float | None
    violations: int


def client_pause(h: History, f: Fault) -> float | None:
    """The longest gap between successive acknowledged client operations from the last one
    before the fault to its re-protection (or the history's end): what a client waited."""
    until = f.recovered if f.recovered is not None else h.end
    done = sorted(o.t1 for o in h.ops if o.outcome == "ok" and o.t1 is not None
                  and o.f in ("put", "get"))
    if not done:
        done = sorted(o.t1 for o in h.ops if o.outcome == "ok" and o.t1 is not None)
    before = [t for t in done if t < f.start][-1:]
    inside = [t for t in done if f.start <= t <= until]
    points = before + inside
    if not points:
        return None
    # A client still waiting at the end waited until then.
    gaps = [b - a for a, b in itertools.pairwise([*points, until])]
    return max(gaps) if gaps else None


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def owner(h: History, t: float) -> Fault | None:
    """The fault a moment belongs to: the last one started at or before it."""
    found: Fault | None = None
    for f in h.faults:
        if f.start <= t:
            found = f
    return found


def table(h: History, violations: list[Violation]) -> list[Row]:
    by_kind: dict[str, list[Fault]] = {}
    for f in h.faults:
        by_kind.setdefault(f.kind, []).append(f)
    blamed: dict[int, int] = {}
    for v in violations:
        who = owner(h, v.t)
        if who is not None:
            blamed[who.id] = blamed.get(who.id, 0) + 1
    # The timed faults again, whatever their kind: the issue's "a fault injected during a
    # checkpoint" and "during re-protection and disk resync".
    for when, label in TIMED.items():
        timed = [f for f in h.faults if f.params.get("when") == when]
        if timed:
            by_kind[label] = timed
    rows = []
    for kind in sorted(by_kind, key=lambda k: (k.startswith("("), k)):
        fs = by_kind[kind]
        pauses = [p for f in fs if (p := client_pause(h, f)) is not None]
        rep = [f.recovered - f.end for f in fs if f.recovered is not None and f.end is not None]
        rows.append(Row(kind, len(fs), sum(1 for f in fs if f.recovered_ok),
                        _pct(pauses, 0.5), max(pauses, default=None),
                        _pct(rep, 0.5), max(rep, default=None),
                        sum(blamed.get(f.id, 0) for f in fs)))
    return rows


def render(rows: list[Row], violations: list[Violation]) -> str:
    """The table as Markdown (the terminal and docs/RELIABILITY.md show the same)."""

    def s(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    lines = ["| fault | count | recovered | client pause p50 / max (s) | "
             "re-protection p50 / max (s) | violations |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.kind} | {r.count} | {r.recovered} | {s(r.pause_p50)} / "
                     f"{s(r.pause_max)} | {s(r.reprotect_p50)} / {s(r.reprotect_max)} | "
                     f"{r.violations} |")
    kinds = [r for r in rows if not r.kind.startswith("(")]
    total = sum(r.count for r in kinds)
    lines.append(f"| all | {total} | {sum(r.recovered for r in kinds)} | | | "
                 f"{len(violations)} |")
    return "\n".join(lines)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prefix_digest(stream: bytes) -> Callable[[int], str]:
    """stream_digest for a service whose stream responses are `stream[:n]`."""
    cache: dict[int, str] = {}

    def digest(n: int) -> str:
        if n not in cache:
            cache[n] = sha256_hex(stream[:n])
        return cache[n]

    return digest
