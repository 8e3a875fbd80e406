"""Where one HTTP request's time goes, from packet captures at several points of the lab.

Pure: lines of `tcpdump -n -tt -S` (one capture per point: the client's port, the PVM's
tap, the SVM's tap, ...) in, the time of each step of each request out, keyed by the
client's source port (the mirror and the rewrite never change ports). Times are the
capture clock (CLOCK_REALTIME of the one machine the lab runs on), so points join
without any clock alignment. The capturing is the caller's (benchmarks/bench_divergence.py).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# "1733150000.123456 IP 10.99.0.2.41234 > 10.99.0.10.80: Flags [P.], seq 1:77, ack 5, ...,
# length 76". Anything else (ARP, IPv6, a truncated line) is skipped, not an error: a
# capture holds more than the requests under study.
_LINE = re.compile(
    r"^(?P<t>\d+\.\d+) IP (?P<src>[\d.]+)\.(?P<sport>\d+) > (?P<dst>[\d.]+)\.(?P<dport>\d+): "
    r"Flags \[(?P<flags>[^\]]*)\].*?length (?P<len>\d+)")


@dataclass(frozen=True, slots=True)
class Segment:
    t: float
    src: str
    sport: int
    dst: str
    dport: int
    flags: str  # tcpdump's letters: S, F, R, P, "." for ACK
    length: int  # TCP payload bytes


def parse(lines: Iterable[str]) -> list[Segment]:
    out = []
    for line in lines:
        m = _LINE.match(line)
        if m:
            out.append(Segment(float(m["t"]), m["src"], int(m["sport"]), m["dst"],
                               int(m["dport"]), m["flags"], int(m["len"])))
    return out


def _first(segs: list[Segment], pred: object) -> float | None:
    for s in segs:
        if pred(s):  # type: ignore[operator]
            return s.t
    return None


def request_events(points: Mapping[str, list[Segment]], server: str,
                   port: int = 80) -> dict[int, dict[str, float]]:
    """For each client port seen at the point named "client": when each step happened.

    Event names are `POINT.what`; for every point, `in.*` is toward the server and
    `out.*` from it:
    - `syn`, `request` (first payload), `ack_of_data` (first pure ACK after the server's
      first payload: the client's ACK of the headers), `fin`;
    - `synack`, `data1` (first payload: the headers), `data2` (the first payload segment
      after `data1` starting at a new sequence: the body), `last_data`, `fin`.
    A step missing at a point (no body, no FIN yet) is left out.
    """
    clients = {s.sport for s in points.get("client", []) if s.dst == server and s.dport == port
               and s.flags == "S"}
    result: dict[int, dict[str, float]] = {c: {} for c in clients}
    for name, segs in points.items():
        by_port: dict[int, tuple[list[Segment], list[Segment]]] = {}
        for s in segs:
            if s.dst == server and s.dport == port and s.sport in clients:
                by_port.setdefault(s.sport, ([], []))[0].append(s)
            elif s.src == server and s.sport == port and s.dport in clients:
                by_port.setdefault(s.dport, ([], []))[1].append(s)
        for cport, (inb, outb) in by_port.items():
            ev = result[cport]
            _put(ev, f"{name}.in.syn", _first(inb, lambda s: s.flags == "S"))
            _put(ev, f"{name}.in.request", _first(inb, lambda s: s.length > 0))
            _put(ev, f"{name}.in.fin", _first(inb, lambda s: "F" in s.flags))
            _put(ev, f"{name}.out.synack", _first(outb, lambda s: "S" in s.flags))
            data = [s for s in outb if s.length > 0]
            if data:
                _put(ev, f"{name}.out.data1", data[0].t)
                _put(ev, f"{name}.out.last_data", data[-1].t)
                if len(data) > 1:
                    _put(ev, f"{name}.out.data2", data[1].t)
                _put(ev, f"{name}.in.ack_of_data", _first(
                    inb, lambda s, d=data[0]: s.t >= d.t and s.length == 0
                    and "F" not in s.flags and "S" not in s.flags))
            _put(ev, f"{name}.out.fin", _first(outb, lambda s: "F" in s.flags))
    return result


def _put(ev: dict[str, float], key: str, t: float | None) -> None:
    if t is not None:
        ev[key] = t


# One request's path, in the order it happens, as (step, from event, to event). "first of"
# a pair (a tuple) is whichever came later: a held PVM segment leaves once both twins exist.
STEPS: tuple[tuple[str, str | tuple[str, str], str], ...] = (
    ("handshake (client SYN to SYN-ACK)", "client.in.syn", "client.out.synack"),
    ("request to the VMs", "client.in.request", "pvm.in.request"),
    ("PVM: request to headers", "pvm.in.request", "pvm.out.data1"),
    ("SVM's headers after the PVM's", "pvm.out.data1", "fwd.out.data1"),
    ("headers released (later twin to client)", ("pvm.out.data1", "fwd.out.data1"),
     "client.out.data1"),
    ("client ACK to PVM body (Nagle)", "client.out.data1", "pvm.out.data2"),
    ("SVM's body after the PVM's", "pvm.out.data2", "fwd.out.data2"),
    ("divergence found (SVM body to request)", "fwd.out.data2", "orch.detected_at"),
    ("proxy request, orchestrator wake-up", "orch.detected_at", "orch.decided"),
    ("checkpoint trigger", "orch.decided", "ckpt.stopped"),
    ("STOP to RESUME", "ckpt.stopped", "ckpt.resumed"),
    ("release", "ckpt.resumed", "orch.released"),
    ("released to the client's last byte", "orch.released", "client.out.last_data"),
    ("body released (later twin to client)", ("pvm.out.data2", "fwd.out.data2"),
     "client.out.data2"),
    # The same checkpoint seen from outside either proxy: the PVM's STOP and RESUME (the
    # orchestrator's, or QEMU's own event stamps where no orchestrator runs).
    ("request at the client to STOP", "client.in.request", "ckpt.stopped"),
    ("RESUME to the body at the client", "ckpt.resumed", "client.out.data2"),
    ("whole request (SYN to last byte)", "client.in.syn", "client.out.last_data"),
)


def steps(events: Mapping[str, float]) -> dict[str, float]:
    """Each step of STEPS whose events were seen, in ms (negative: the second came first)."""
    out = {}
    for name, a, b in STEPS:
        start = _later(events, a)
        if start is not None and b in events:
            out[name] = round(1000 * (events[b] - start), 1)
    return out


def _later(events: Mapping[str, float], of: str | tuple[str, str]) -> float | None:
    names = of if isinstance(of, tuple) else (of,)
    return max(events[n] for n in names) if all(n in events for n in names) else None


def relative(events: dict[str, float], origin: str = "client.in.syn") -> dict[str, float]:
    """Each event in ms after `origin` (the client's SYN), or {} when it was not seen."""
    if origin not in events:
        return {}
    t0 = events[origin]
    return {k: round(1000 * (t - t0), 1) for k, t in events.items()}


def medians(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The median of each event over the requests that have it, in time order."""
    cols: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r.items():
            cols.setdefault(k, []).append(v)
    med = {k: statistics.median(v) for k, v in cols.items()}
    return dict(sorted(med.items(), key=lambda kv: kv[1]))
