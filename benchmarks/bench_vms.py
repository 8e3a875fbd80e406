"""Each protection mode on the same lab VMs, side by side, as ratios to direct (a benchmark).

One run brings the lab up once per mode, with the same guest, QEMU and VM line, and
measures from the client namespace:

- direct: the PVM alone (no SVM, nothing compared);
- colo-proxy: COLO with colo-proxy and both orchestrators (what `colo-lab up --protected
  --proxy` runs);
- qemu-compare: COLO with QEMU's colo-compare and filters, no orchestrator
  (`colo-lab up --qemu-compare`, colo_lab.qemu_compare);
- remus: Remus-style buffering: colo-proxy with `--output buffer` and the orchestrators
  checkpointing every `--remus-interval` seconds; all output waits for the next one.

Measures: GET / on a new connection and on keep-alive (p50, p99), GET /random (the VMs
answer differently: a checkpoint each) back to back and one per 0.5 s, 1 MB downloads, a long download of 1 MB parts on
one connection, a mixed load of concurrent clients, checkpoints per second and the PVM's
pause per checkpoint. It prints progress on stderr and one table (colo_lab.bench_table)
on stdout; `--write-doc docs/BENCHMARKS.md` keeps it there with the date and commit.

    flock /work/tmp/vm.lock .venv/bin/python benchmarks/bench_vms.py [--modes ...]

Needs root and the lab's cached QEMU and guest (docs/LAB.md).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from colo_lab import pair, qemu_compare
from colo_lab.bench_table import (
    MODES,
    counts,
    median_figures,
    parse_args,
    pauses,
    percentile,
    render,
    replace_section,
    round_order,
)
from colo_lab.lab import Lab
from colo_lab.proxy_harness import unique_name

Figures = dict[str, float | None]
PACED_S = 0.5  # paced divergent requests: one started every this many seconds


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load(lab: Lab, kind: str, *args: str, timeout: float = 900) -> Any:
    out = subprocess.run(
        ["ip", "netns", "exec", lab.client_ns, sys.executable, "-m", "colo_lab.bench_load",
         kind, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench_load {kind} failed: {out.stderr.strip()[-300:]}")
    return json.loads(out.stdout)


class Checkpoints:
    """Checkpoints and PVM pauses of one mode, counted over the measurement."""

    def __init__(self, mode: str, lab: Lab) -> None:
        self.mode, self.lab = mode, lab
        self.events: list[tuple[str, float]] = []
        self.t0 = time.monotonic()
        self.orch = mode in ("colo-proxy", "remus")
        self.start = self._orch() if self.orch else (0.0, 0.0, 0.0)
        if mode == "qemu-compare":
            qemu_compare.drain_events(lab)  # forget COLO's entry and the warm-up's

    def _orch(self) -> tuple[float, float, float]:
        m = pair.metrics(self.lab, "primary")
        n = sum(v for k, v in m.items() if k.startswith("colo_checkpoints_total{"))
        return (n, m.get("colo_checkpoint_pvm_pause_seconds_sum", 0.0),
                m.get("colo_checkpoint_pvm_pause_seconds_count", 0.0))

    def _drain(self) -> None:
        self.events.extend(qemu_compare.drain_events(self.lab))

    def poll(self) -> None:
        """Read the PVM's events so far (QEMU keeps them in the socket until read)."""
        if self.mode == "qemu-compare":
            self._drain()

    def figures(self) -> Figures:
        took = time.monotonic() - self.t0
        if self.orch:
            n, psum, pcount = (b - a for a, b in zip(self.start, self._orch(), strict=True))
            return {"ckpt_rate": n / took,
                    "pause_ms": 1000 * psum / pcount if pcount else None}
        if self.mode == "qemu-compare":
            self._drain()
            p = pauses(self.events)
            return {"ckpt_rate": len(p) / took,
                    "pause_ms": 1000 * statistics.fmean(p) if p else None}
        return {"ckpt_rate": 0.0, "pause_ms": None}


def bring_up(mode: str, lab: Lab, a: Any) -> None:
    if mode == "direct":
        lab.up(secondary="none")
    elif mode == "colo-proxy":
        lab.up(secondary="incoming")
        pair.protect(lab, proxy=True)
    elif mode == "qemu-compare":
        lab.up(secondary="incoming", qemu_compare=True)
        took = qemu_compare.protect(lab)
        say(f"{mode}: COLO reached in {took:.1f} s")
    elif mode == "remus":
        lab.up(secondary="incoming")
        pair.protect(lab, proxy=True, output="buffer",
                     extra=f"[timing]\ncheckpoint_max_interval = {a.remus_interval}\n"
                     f"checkpoint_min_interval = {min(0.2, a.remus_interval)}\n")
    else:
        raise RuntimeError(f"mode {mode} is not built")
    lab.wait_http("/", b"colo lab service\n", 60)


def measure(mode: str, lab: Lab, a: Any, ck: Checkpoints) -> Figures:
    f: Figures = {}

    def step(line: str) -> None:
        ck.poll()
        say(f"{mode}: {line}")

    c = counts(mode, a.n, a.paced_n, a.remus_n)
    n = str(c.each)
    t = load(lab, "new", "--path", "/", "-n", n)
    f["new_p50"], f["new_p99"] = 1000 * percentile(t, 50), 1000 * percentile(t, 99)
    step(f"GET / new connection p50 {f['new_p50']:.1f} ms, p99 {f['new_p99']:.1f} ms")
    t = load(lab, "keep", "--path", "/", "-n", n)
    f["keep_p50"], f["keep_p99"] = 1000 * percentile(t, 50), 1000 * percentile(t, 99)
    step(f"GET / keep-alive p50 {f['keep_p50']:.1f} ms, p99 {f['keep_p99']:.1f} ms")
    t = load(lab, "new", "--path", "/random", "-n", n)
    f["random_p50"], f["random_p99"] = 1000 * percentile(t, 50), 1000 * percentile(t, 99)
    step(f"GET /random p50 {f['random_p50']:.0f} ms, p99 {f['random_p99']:.0f} ms")
    # Paced: each divergence finds the checkpoint budget full again (colo-proxy's storm
    # bound: checkpoint_burst, then one per refill interval, docs/ORCHESTRATOR.md); back
    # to back, above, would show that bound if it held requests.
    t = load(lab, "new", "--path", "/random", "-n", str(c.paced), "--every", str(PACED_S))
    f["random_paced_p50"] = 1000 * percentile(t, 50)
    f["random_paced_p99"] = 1000 * percentile(t, 99)
    step(f"GET /random one per {PACED_S:g} s p50 {f['random_paced_p50']:.0f} ms, "
         f"p99 {f['random_paced_p99']:.0f} ms")
    t = load(lab, "blob", "-n", str(a.downloads))
    f["mb1"] = 1 / statistics.median(t)
    step(f"1 MB downloads: median {1000 * statistics.median(t):.0f} ms "
         f"(max {1000 * max(t):.0f}), {f['mb1']:.1f} MB/s")
    if a.big_mb:
        took = load(lab, "big", "-n", str(a.big_mb))
        f["mb64"] = a.big_mb / took
        step(f"{a.big_mb} MB download: {took:.1f} s, {f['mb64']:.1f} MB/s")
    else:
        f["mb64"] = None
    mx = load(lab, "mixed", "--clients", str(a.clients), "--seconds", str(a.mixed_seconds))
    if mx["errors"]:
        raise RuntimeError(f"{mode}: mixed load errors: {mx['errors']}")
    f["mixed_rps"] = len(mx["times"]) / mx["seconds"]
    f["mixed_p99"] = 1000 * percentile(mx["times"], 99) if mx["times"] else None
    step(f"mixed load ({a.clients} clients): {f['mixed_rps']:.0f} req/s, "
         f"p99 {_ms(f['mixed_p99'])}")
    f.update(ck.figures())
    step(f"checkpoints {f['ckpt_rate'] or 0:.2f}/s, pause per checkpoint {_ms(f['pause_ms'])}")
    return f


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def run_mode(mode: str, a: Any) -> Figures:
    lab = Lab(unique_name("bvms"))
    lab.down()
    t0 = time.monotonic()
    say(f"{mode}: bringing the lab up")
    try:
        bring_up(mode, lab, a)
        say(f"{mode}: serving after {time.monotonic() - t0:.0f} s; warming up")
        load(lab, "new", "--path", "/", "-n", "5")
        load(lab, "new", "--path", "/random", "-n", "3")
        load(lab, "blob", "-n", "1")
        ck = Checkpoints(mode, lab)
        return measure(mode, lab, a, ck)
    finally:
        lab.down()


def commit() -> str:
    here = Path(__file__).parent
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False, cwd=here)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False, cwd=here)
    return (out.stdout.strip() or "unknown") + (" with uncommitted changes"
                                                 if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    # The commit the modes ran, taken before they start: a commit made during the run
    # must not be stamped on figures measured with the code before it.
    ran = commit()
    if a.write_doc and not Path(a.write_doc).parent.is_dir():
        raise SystemExit(f"bench_vms: --write-doc {a.write_doc}: no such directory")
    runs: dict[str, list[Figures]] = {m: [] for m in a.modes}
    for i, mode in enumerate(round_order(a.modes, a.rounds)):
        if a.rounds > 1 and i % len(a.modes) == 0:
            say(f"round {i // len(a.modes) + 1} of {a.rounds}")
        try:
            runs[mode].append(run_mode(mode, a))
        except Exception as exc:  # the other modes still run; this one shows as missing
            say(f"{mode}: FAILED, shown as missing: {exc!r}")
    results = {m: median_figures(r) for m, r in runs.items() if r}
    table = render(results, MODES)
    c, r = counts("direct", a.n, a.paced_n, a.remus_n), counts("remus", a.n, a.paced_n, a.remus_n)
    stamp = (f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {ran}, "
             f"`{' '.join(['bench_vms.py', *(argv if argv is not None else sys.argv[1:])])}`; "
             f"requests per latency row {c.each}, paced {c.paced} (Remus {r.each} and {r.paced})")
    print(stamp)
    print(table)
    if a.write_doc:
        doc = Path(a.write_doc)
        old = doc.read_text() if doc.exists() else ""
        doc.write_text(replace_section(old, stamp + "\n\n" + table))
        say(f"table written to {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
