"""Divergence to release on the lab VMs: where a divergent request's time goes (a benchmark).

Brings up the two-VM lab, protects it with colo-proxy and the orchestrators, then sends,
from the client namespace, one new connection per request:

- `GET /` (deterministic: both VMs answer the same), the baseline;
- `GET /random` (answers differ: one checkpoint each), ISOLATED: paced so that the
  checkpoint budget is full again before each (not a synchronisation, a load shape);
- `GET /random` back to back, a storm that spends the budget;
- `GET /` paced the same way, each right after a `GET /random` (so after a checkpoint):
  what a checkpoint costs the next request, where the SVM runs from a fresh state.

With `--trace DIR` it captures every request's packets (tcpdump) at the client, on the
PVM's and the SVM's taps and on the forward link, joins them with the orchestrator's
checkpoint marks and prints, per kind, the median time of each step after the client's
SYN (colo_lab.packet_trace).

For each divergent request it reads the primary orchestrator's `last_checkpoint_steps_ms`
(colo_orch.core.timeline): detection, proxy request, orchestrator wake-up, checkpoint
trigger, STOP to RESUME, release. It prints medians, and the added latency of a divergent
request (median /random minus median /) as a ratio to one checkpoint's duration (STOP to
RESUME plus its trigger), all from the same run. Target (issue 14): at most 1.5.

    flock /work/tmp/vm.lock .venv/bin/python benchmarks/bench_divergence.py [-n 10]

Needs root and the lab's cached QEMU and guest (docs/LAB.md). Runs against whichever
colo_orch the interpreter imports: an orchestrator without step timing shows latencies only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from colo_lab import capture, packet_trace, pair, qemu_compare
from colo_lab.bench_table import pauses
from colo_lab.lab import VM_IP, Lab
from colo_lab.proxy_harness import unique_name
from colo_lab.wait import wait_until

STEP_NAMES = ("detection", "proxy_request", "orchestrator_wakeup", "checkpoint_trigger",
              "trigger_command", "qemu_command_to_stop", "stop_event_seen",
              "stop_to_resume", "release", "total")


def timed_get(lab: Lab, path: str) -> float:
    """Seconds from connect to the last byte of one request on a new connection (curl's
    own timer: the namespace and process start are not in it)."""
    out = subprocess.run(
        ["ip", "netns", "exec", lab.client_ns, "curl", "-sS", "-m", "20", "-o", "/dev/null",
         "-w", "%{http_code} %{time_total}", f"http://{VM_IP}{path}"],
        capture_output=True, text=True, timeout=30, check=True).stdout.split()
    if out[0] != "200":
        raise SystemExit(f"GET {path} answered {out[0]}")
    return float(out[1])


def checkpoints(lab: Lab) -> int:
    return sum(v for k, v in pair.state(lab, "primary").get("checkpoints", {}).items()
               if k != "periodic")


# Every divergent request's checkpoint marks, wall-clock seconds (the captures' clock).
MARKS: list[dict[str, float]] = []


def divergent(lab: Lab, n: int, gap: float) -> tuple[list[float], list[dict[str, float]]]:
    """n divergent requests through colo-proxy, each with its checkpoint's steps."""
    lat, steps = [], []
    offset = time.time() - time.monotonic()  # the orchestrator's marks are monotonic
    for _ in range(n):
        before = checkpoints(lab)
        lat.append(timed_get(lab, "/random"))
        st = pair.state(lab, "primary")
        if checkpoints(lab) > before and st.get("last_checkpoint_steps_ms"):
            steps.append(st["last_checkpoint_steps_ms"])
            MARKS.append({k: v + offset
                          for k, v in (st.get("last_checkpoint_marks") or {}).items()})
        if gap:
            time.sleep(gap)  # pacing: the budget refills (a load shape, not a wait for state)
    return lat, steps


def divergent_qemu(lab: Lab, n: int, gap: float) -> tuple[list[float], list[dict[str, float]]]:
    """n divergent requests through QEMU's colo-compare: its checkpoint is the PVM's STOP
    and RESUME, stamped by QEMU (no orchestrator, no other steps)."""
    lat, steps = [], []
    for _ in range(n):
        qemu_compare.drain_events(lab)  # what came before this request is not its own
        lat.append(timed_get(lab, "/random"))
        # colo-compare may release the reply before the PVM resumes: wait for RESUME.
        seen: list[tuple[str, float]] = []

        def resumed(seen: list[tuple[str, float]] = seen) -> bool:
            seen.extend(qemu_compare.drain_events(lab))
            return bool(pauses(seen))
        wait_until(resumed, 10, "the PVM's RESUME after a divergent request")
        stop = next(t for e, t in seen if e == "STOP")
        MARKS.append({"stopped": stop, "resumed": stop + pauses(seen)[0]})
        steps.append({"stop_to_resume": 1000 * pauses(seen)[0]})
        if gap:
            time.sleep(gap)  # pacing, as above
    return lat, steps


def after_checkpoint(lab: Lab, n: int, gap: float) -> list[float]:
    """`GET /` right after a divergent request's checkpoint (paced as the isolated ones)."""
    lat = []
    for _ in range(n):
        timed_get(lab, "/random")
        time.sleep(gap)  # pacing, as above: the checkpoint is long done
        lat.append(timed_get(lab, "/"))
    return lat


def trace_table(out: Path, kinds: dict[str, list[int]]) -> None:
    """Per kind, the median of each step (colo_lab.packet_trace.STEPS) over its requests;
    every request's events go to events.json in `out`."""
    points = {name: packet_trace.parse((out / f"{name}.txt").read_text().splitlines())
              for name in capture.NAMES}
    events = packet_trace.request_events(points, VM_IP)
    (out / "marks.json").write_text(json.dumps(MARKS, indent=1))
    for wall in MARKS:  # each checkpoint to the request it happened in: the last one opened
        t = wall.get("detected_at", wall.get("stopped"))
        owners = [ev for ev in events.values() if t is not None
                  and ev.get("client.in.syn", t + 1) <= t]
        if owners:
            mine = max(owners, key=lambda ev: ev["client.in.syn"])
            mine.update({f"orch.{k}": v for k, v in wall.items()})
            mine.update({f"ckpt.{k}": wall[k] for k in ("stopped", "resumed") if k in wall})
    ordered = [ev for _, ev in sorted(events.items(),
                                      key=lambda kv: kv[1].get("client.in.syn", 0))]
    (out / "events.json").write_text(json.dumps(ordered, indent=1))
    cols = {kind: [packet_trace.steps(ordered[i]) for i in idx if i < len(ordered)]
            for kind, idx in kinds.items()}
    print("\n| step, median ms | " + " | ".join(f"{k} ({len(v)})" for k, v in cols.items())
          + " |")
    print("|---" * (1 + len(cols)) + "|")
    for name, _, _ in packet_trace.STEPS:
        cells = []
        for rows in cols.values():
            vals = [r[name] for r in rows if name in r]
            cells.append(f"{statistics.median(vals):.0f}" if vals else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")


def ms(x: float) -> str:
    return f"{1000 * x:.0f}"


def report(name: str, lat: list[float], steps: list[dict[str, float]], base: float) -> None:
    med = statistics.median(lat)
    line = f"| {name} | {len(lat)} | {ms(med)} | {ms(max(lat))} | {ms(med - base)} |"
    cols = []
    for s in STEP_NAMES:
        vals = [d[s] for d in steps if s in d]
        cols.append(f"{statistics.median(vals):.0f}" if vals else "-")
    ck = [d["checkpoint_trigger"] + d["stop_to_resume"] for d in steps
          if "checkpoint_trigger" in d and "stop_to_resume" in d]
    ratio = f"{(med - base) * 1000 / statistics.median(ck):.2f}" if ck else "-"
    print(line + " " + " | ".join(cols) + f" | {ratio} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("colo-proxy", "qemu-compare"), default="colo-proxy",
                    help="what protects the pair: colo-proxy and the orchestrators, or "
                    "QEMU's colo-compare (colo_lab.qemu_compare; no orchestrator steps)")
    ap.add_argument("-n", type=int, default=10, help="requests per kind (default 10)")
    ap.add_argument("--gap", type=float, default=0.7,
                    help="seconds between isolated divergent requests (default 0.7)")
    ap.add_argument("--extra", default="", help="more orchestrator config lines ([timing] ...)")
    ap.add_argument("--trace", type=Path, help="capture packets into this folder and print "
                    "each step's median time (needs tcpdump)")
    a = ap.parse_args(argv)
    lab = Lab(unique_name("bdiv"))
    lab.down()
    try:
        qemu = a.mode == "qemu-compare"
        if qemu:
            lab.up(secondary="incoming", qemu_compare=True)
            qemu_compare.protect(lab)
        else:
            lab.up(secondary="incoming")
            pair.protect(lab, proxy=True, extra=a.extra)
        lab.wait_http("/", lab.http("/")[1], 30)
        for _ in range(3):  # warm the guest's page cache and the flows' code paths
            timed_get(lab, "/")
            timed_get(lab, "/random")
        time.sleep(a.gap)
        div = divergent_qemu if qemu else divergent
        with capture.tcpdump(lab, a.trace) if a.trace else contextlib.nullcontext():
            base = [timed_get(lab, "/") for _ in range(a.n)]
            iso = div(lab, a.n, a.gap)
            storm = div(lab, a.n, 0.0)
            after = after_checkpoint(lab, a.n, a.gap)
        st: dict[str, Any] = {} if qemu else pair.state(lab, "primary")
    finally:
        lab.down()
    b = statistics.median(base)
    print(f"GET / (deterministic, new connection): median {ms(b)} ms, max {ms(max(base))} ms "
          f"({a.n} requests)")
    print("| GET /random | n | median ms | max ms | added ms | "
          + " | ".join(STEP_NAMES) + " | added / checkpoint |")
    print("|---" * (6 + len(STEP_NAMES)) + "|")
    report(f"isolated ({a.gap} s apart)", *iso, b)
    report("back to back", *storm, b)
    print(f"GET / right after a checkpoint: median {ms(statistics.median(after))} ms, "
          f"max {ms(max(after))} ms (added over GET /: {ms(statistics.median(after) - b)})")
    print(f"checkpoints by reason: {st.get('checkpoints')}")
    if a.trace:
        n = a.n
        # Request order: n GET /, n isolated /random, n back to back, then n pairs of
        # (/random, GET /).
        trace_table(a.trace, {"GET /": list(range(n)),
                              "GET /random, isolated": list(range(n, 2 * n)),
                              "GET /random, back to back": list(range(2 * n, 3 * n)),
                              "GET / after a checkpoint": [3 * n + 2 * i + 1 for i in range(n)],
                              })
    return 0


if __name__ == "__main__":
    sys.exit(main())
