"""The pure parts of `benchmarks/bench_vms.py`: its arguments, statistics and table.

Each protection mode's figures are a flat dict of measure -> number (None: not measured).
The table shows each figure beside its ratio to the direct mode's from the same run,
because single values on this shared TCG machine vary run to run while ratios taken in one
run hold. A mode that was not run, or is not built, is shown as "missing", never guessed.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MODES = ("direct", "colo-proxy", "qemu-compare", "remus")
MODE_TITLES = {"direct": "direct (PVM alone)", "colo-proxy": "COLO + colo-proxy",
               "qemu-compare": "COLO + QEMU colo-compare",
               "remus": "Remus-style buffering"}
# Modes the benchmark runs by default (all of them).
BUILT = MODES


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    unit: str  # "ms", "MB/s", "req/s", "/s"
    ratio: bool = True  # shown as a ratio to direct (direct has no checkpoints)


MEASURES = (
    Measure("new_p50", "GET /, new connection, p50", "ms"),
    Measure("new_p99", "GET /, new connection, p99", "ms"),
    Measure("keep_p50", "GET /, keep-alive, p50", "ms"),
    Measure("keep_p99", "GET /, keep-alive, p99", "ms"),
    Measure("random_p50", "GET /random (divergent), new connection, p50", "ms"),
    Measure("random_p99", "GET /random (divergent), new connection, p99", "ms"),
    Measure("random_paced_p50", "GET /random (divergent), one per 0.5 s, p50", "ms"),
    Measure("random_paced_p99", "GET /random (divergent), one per 0.5 s, p99", "ms"),
    Measure("mb1", "1 MB download (new connection, median)", "MB/s"),
    Measure("mb64", "64 MB download (64 x 1 MB, keep-alive)", "MB/s"),
    Measure("mixed_rps", "mixed load, concurrent clients", "req/s"),
    Measure("mixed_p99", "mixed load, request p99", "ms"),
    Measure("ckpt_rate", "checkpoints per second (whole run)", "/s", ratio=False),
    Measure("pause_ms", "PVM pause per checkpoint (mean)", "ms", ratio=False),
)
KEYS = tuple(m.key for m in MEASURES)


def round_order(modes: Sequence[str], rounds: int) -> list[str]:
    """The modes of every round: in order, then in reverse, and so on."""
    out: list[str] = []
    for r in range(rounds):
        out.extend(modes if r % 2 == 0 else list(reversed(modes)))
    return out


def median_figures(runs: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    """Each figure's median over the runs that have it (None when none has)."""
    keys = {k for r in runs for k in r}
    out: dict[str, float | None] = {}
    for k in sorted(keys):
        vals = [v for r in runs if (v := r.get(k)) is not None]
        out[k] = statistics.median(vals) if vals else None
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench_vms.py",
        description="Each protection mode on the same lab VMs, as ratios to direct "
        "(flock /work/tmp/vm.lock; root; the lab's build).")
    ap.add_argument("--modes", default=",".join(BUILT), type=_modes,
                    help=f"comma-separated, in order (default {','.join(BUILT)}; "
                    f"of {', '.join(MODES)})")
    ap.add_argument("-n", type=int, default=150,
                    help="requests per back-to-back latency measure (150: the p99 is the "
                    "second slowest, not the slowest)")
    ap.add_argument("--paced-n", type=int, default=100,
                    help="paced divergent requests, one per 0.5 s (100)")
    ap.add_argument("--remus-n", type=int, default=30,
                    help="remus: requests per latency measure, at most (30; each waits for "
                    "an epoch, so 150 would take minutes and show the epoch again)")
    ap.add_argument("--downloads", type=int, default=5, help="1 MB downloads (5)")
    ap.add_argument("--big-mb", type=int, default=64,
                    help="MB of the long download, 1 MB GETs on one connection (64; 0: skip)")
    ap.add_argument("--clients", type=int, default=4, help="mixed-load clients (4)")
    ap.add_argument("--mixed-seconds", type=float, default=10.0,
                    help="mixed-load duration (10 s)")
    ap.add_argument("--remus-interval", type=float, default=0.2,
                    help="remus: seconds between the periodic checkpoints that release the "
                    "output (the orchestrators' checkpoint_max_interval; 0.2)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every mode this many times, in order then in reverse (ABBA, "
                    "so that a machine getting busier or quieter favours no mode); each "
                    "figure is the median of its rounds (1)")
    ap.add_argument("--write-doc", default="",
                    help="replace the table in this markdown file (docs/BENCHMARKS.md)")
    a = ap.parse_args(argv)
    for name in ("n", "paced_n", "remus_n", "downloads", "clients", "rounds"):
        if getattr(a, name) < 1:
            flag = "-n" if name == "n" else "--" + name.replace("_", "-")
            ap.error(f"{flag} must be at least 1")
    if a.big_mb < 0 or a.mixed_seconds <= 0 or a.remus_interval <= 0:
        ap.error("--big-mb must be >= 0, --mixed-seconds and --remus-interval > 0")
    if "direct" not in a.modes:
        ap.error("--modes needs direct: every figure is a ratio to it")
    return a


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"unknown mode {', '.join(bad) or '(none)'}; "
                                         f"use {', '.join(MODES)}")
    if len(set(modes)) != len(modes):
        raise argparse.ArgumentTypeError("a mode is named twice")
    return modes


def rank(count: int, p: float) -> int:
    """The 1-based rank of the nearest-rank percentile p (0..100) of `count` values: for
    p99 it is `count` itself (the slowest) up to 100 values, below it from 101."""
    return max(1, math.ceil(p / 100 * count))


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): a value that was measured, never between two."""
    if not values:
        raise ValueError("no values")
    return sorted(values)[rank(len(values), p) - 1]


@dataclass(frozen=True)
class Counts:
    """Requests per latency measure of one mode."""

    each: int  # GET / new and keep-alive, GET /random back to back
    paced: int  # GET /random, one per 0.5 s


def counts(mode: str, n: int, paced_n: int, remus_n: int) -> Counts:
    """How many requests each latency row of `mode` makes. Remus-style buffering holds
    every reply for an epoch, so its rows are capped at `remus_n` (half of it paced): at
    0.5 s a request, 150 would add minutes per round and measure the epoch again."""
    if mode == "remus":
        return Counts(min(n, remus_n), max(1, min(paced_n, remus_n // 2)))
    return Counts(n, paced_n)


def pauses(events: Sequence[tuple[str, float]]) -> list[float]:
    """Seconds from each STOP to the next RESUME, in a VM's (event, timestamp) list; a STOP
    without its RESUME yet is left out."""
    out, stopped = [], None
    for name, at in events:
        if name == "STOP":
            stopped = at
        elif name == "RESUME" and stopped is not None:
            out.append(at - stopped)
            stopped = None
    return out


def ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "-"
    return f"{value / base:.2f}"


def _num(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 10 else f"{value:.0f}"


def cell(m: Measure, value: float | None, base: float | None, mode: str) -> str:
    if value is None:
        return "-"
    if not m.ratio or mode == "direct":
        return _num(value)
    return f"{_num(value)} ({ratio(value, base)}x)"


def render(results: dict[str, dict[str, float | None]], modes: Sequence[str]) -> str:
    """The markdown table: a row per measure, a column per mode (all of MODES; a mode
    not in results is "missing"). Ratios are to direct from the same run."""
    base = results.get("direct", {})
    head = "| measure | unit | " + " | ".join(MODE_TITLES[m] for m in modes) + " |"
    lines = [head, "|---|---|" + "---|" * len(modes)]
    for m in MEASURES:
        cells = []
        for mode in modes:
            if mode not in results:
                cells.append("missing")
                continue
            cells.append(cell(m, results[mode].get(m.key), base.get(m.key), mode))
        lines.append(f"| {m.label} | {m.unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


BEGIN = "<!-- bench_vms: begin (benchmarks/bench_vms.py --write-doc rewrites this) -->"
END = "<!-- bench_vms: end -->"


def replace_section(doc: str, section: str) -> str:
    """doc with the text between BEGIN and END replaced by section (appended, with its
    markers, when the doc has none)."""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    start, end = doc.find(BEGIN), doc.find(END)
    if start == -1 or end == -1 or end < start:
        return doc.rstrip() + "\n\n" + block + "\n"
    return doc[:start] + block + doc[end + len(END):]
