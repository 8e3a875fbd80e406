"""1 MiB downloads on new connections through one lab mode, with the proxy's own counters
and, optionally, packet captures (a benchmark: bench_vms.py's "1 MB download" row alone).

    flock /work/tmp/vm.lock .venv/bin/python benchmarks/bench_download.py \
        --mode colo-proxy -n 10 [--trace DIR] [--extra '...']

Prints each download's seconds, the median MB/s, and (colo-proxy) the primary proxy's
status counters that moved during the downloads. Needs root and the lab's cached build.
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
from colo_lab.lab import Lab
from colo_lab.proxy_harness import unique_name


def load(lab: Lab, kind: str, *args: str) -> Any:
    out = subprocess.run(
        ["ip", "netns", "exec", lab.client_ns, sys.executable, "-m", "colo_lab.bench_load",
         kind, *args], capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench_load {kind} failed: {out.stderr.strip()[-300:]}")
    return json.loads(out.stdout)


def flat(d: Any, prefix: str = "") -> dict[str, float]:
    """Numbers of a nested status, keyed by their dotted path."""
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}."))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix[:-1]] = float(d)
    return out


def phases(capture: Path) -> None:
    """Per 1 MiB download at the client: ms from SYN to the first byte of the answer, from
    there to the last, and the data segments the client got (resegmented: more)."""
    segs = packet_trace.parse(capture.read_text().splitlines())
    rows = []
    for port in sorted({s.sport for s in segs if s.flags == "S" and s.dport == 80}):
        mine = [s for s in segs if port in (s.sport, s.dport)]
        data = [s for s in mine if s.sport == 80 and s.length]
        if sum(s.length for s in data) < 1 << 20:
            continue
        rows.append((1000 * (data[0].t - mine[0].t), 1000 * (data[-1].t - data[0].t),
                     len(data)))
    if rows:
        print("per download (first byte ms, transfer ms, segments): "
              + ", ".join(f"{a:.0f}/{b:.0f}/{n}" for a, b, n in rows))
        first, rest, n = (statistics.median(r[i] for r in rows) for i in range(3))
        print(f"medians: first byte {first:.0f} ms, transfer {rest:.0f} ms, segments {n:.0f}")


def cpu_ticks() -> dict[str, int]:
    """utime + stime of every process, keyed by pid and a short command line."""
    out: dict[str, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")[:90].decode(errors="replace")
        except OSError:
            continue
        f = stat.rsplit(")", 1)[1].split()
        out[f"{d.name} {cmd or stat.split('(')[1].split(')')[0]}"] = int(f[11]) + int(f[12])
    return out


def cpu_report(before: dict[str, int], after: dict[str, int], took: float) -> None:
    hz = 100
    used = sorted(((after[k] - before.get(k, 0), k) for k in after), reverse=True)
    total = sum(u for u, _ in used)
    print(f"CPU over {took:.1f} s: {total / hz / took:.2f} cores in all; top:")
    for u, k in used[:12]:
        if u:
            print(f"  {u / hz / took:5.2f}  {k}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("direct", "colo-proxy", "qemu-compare"),
                    default="colo-proxy")
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1, help="batches of -n, status between")
    ap.add_argument("--extra", default="", help="more orchestrator config lines")
    ap.add_argument("--trace", type=Path, help="capture into this folder; print each "
                    "download's time to first byte and transfer time")
    ap.add_argument("--points", default="client,pvm,fwd,svm", help="capture points")
    a = ap.parse_args(argv)
    lab = Lab(unique_name("bdl"))
    lab.down()
    try:
        if a.mode == "direct":
            lab.up(secondary="none")
        elif a.mode == "qemu-compare":
            lab.up(secondary="incoming", qemu_compare=True)
            qemu_compare.protect(lab)
        else:
            lab.up(secondary="incoming")
            pair.protect(lab, proxy=True, extra=a.extra)
        lab.wait_http("/", b"colo lab service\n", 60)
        load(lab, "new", "--path", "/", "-n", "5")
        load(lab, "new", "--path", "/random", "-n", "3")
        load(lab, "blob", "-n", "1")
        for r in range(a.rounds):
            proxy = a.mode == "colo-proxy"
            before = flat(pair.proxy_status(lab, "primary")) if proxy else {}
            ck0 = pair.state(lab, "primary").get("checkpoints") if proxy else None
            c0, w0 = cpu_ticks(), time.monotonic()
            traced = (capture.tcpdump(lab, a.trace / str(r), a.points.split(","))
                      if a.trace else contextlib.nullcontext())
            with traced:
                t = load(lab, "blob", "-n", str(a.n))
            cpu_report(c0, cpu_ticks(), time.monotonic() - w0)
            med = statistics.median(t)
            print(f"round {r}: {a.mode} 1 MiB x{a.n}: median {1000 * med:.0f} ms "
                  f"({1 / med:.2f} MB/s), min {1000 * min(t):.0f}, max {1000 * max(t):.0f}; "
                  f"each {[round(1000 * x) for x in t]}", flush=True)
            if a.trace:
                phases(a.trace / str(r) / "client.txt")
            if proxy:
                after = flat(pair.proxy_status(lab, "primary"))
                moved = {k: after[k] - before.get(k, 0.0) for k in sorted(after)
                         if after[k] != before.get(k, 0.0)}
                print(f"checkpoints {ck0} -> {pair.state(lab, 'primary').get('checkpoints')}")
                print(json.dumps(moved, indent=0, sort_keys=True))
    finally:
        lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
