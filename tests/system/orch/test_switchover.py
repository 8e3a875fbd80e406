"""`coloctl switchover` on the lab's protected pair, under a client on one persistent
connection: the roles swap, the pair is protected again, the client sees no error, and
its longest wait for an answer (the client pause) is measured and printed."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from colo_lab import capture, pair
from colo_lab.client import Watch
from colo_lab.lab import VM_IP, Lab

# A warm-up of the new SVM after the re-protection's COLO entry (Timing.colo_warmup): under
# TCG its first answers lag, and the switchover should cost a client one checkpoint.
pytestmark = pytest.mark.lab(proxy=True, extra="[timing]\ncolo_warmup = 1.0\n")


def results_between(results: list[dict[str, Any]], lo: int, hi: int) -> list[tuple[float, float]]:
    """(gap, wall-clock time of the answer that ended it) for answers lo..hi."""
    part = results[max(0, lo):hi]
    return [(b["t"] - a["t"], b["at"]) for a, b in itertools.pairwise(part)]


def _logged_at(log: Path, text: str) -> float | None:
    """The time (seconds since the epoch) of the first line of an orchestrator's log that
    holds `text` (its logging format starts with the local time, milliseconds after a
    comma)."""
    for line in log.read_text(errors="replace").splitlines():
        if text in line:
            try:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            except ValueError:
                continue
            return stamp.timestamp()
    return None


def _gaps(results: list[dict[str, Any]]) -> list[float]:
    """Seconds between consecutive answers (each record: one PUT and one GET answered)."""
    return [b["t"] - a["t"] for a, b in itertools.pairwise(results)]


@pytest.mark.timeout(300)  # about 60 s here, with the boot
def test_switchover_swaps_the_roles_under_a_persistent_connection(lab: Lab) -> None:
    pair.wait_state(lab, "primary", "PROTECTED", 60)
    pair.wait_state(lab, "secondary", "PROTECTED", 30)
    # Where it does not apply: refused with the reason, exit 1, nothing happens.
    ref = pair.coloctl(lab, "secondary", "switchover", "--force")
    assert ref.returncode == 1 and "run it on the primary" in ref.stderr, ref
    # Without --force it asks; no answer (stdin closed) is no.
    ref = pair.coloctl(lab, "primary", "switchover")
    assert ref.returncode == 1 and "Are you sure? [y/N]" in ref.stdout, ref
    assert "not confirmed" in ref.stderr
    client = Watch(lab.client_ns, "--host", VM_IP, "--duration", "900", "--timeout", "10")
    # COLO_SWITCHOVER_CAPTURE=DIR: tcpdump at the client, both taps and the forward link
    # while it runs, to tell which packet a long wait waited for (colo_lab.packet_trace).
    trace = os.environ.get("COLO_SWITCHOVER_CAPTURE")
    with contextlib.ExitStack() as stack:
        if trace:
            stack.enter_context(capture.tcpdump(lab, Path(trace)))
        try:
            client.wait_more(20)
            # One checkpoint first, to measure in the same run what a checkpoint costs
            # this client (issue 17: a switchover should cost no more).
            ref = pair.coloctl(lab, "primary", "checkpoint", "--wait", "--timeout", "30",
                               timeout=60)
            assert ref.returncode == 0, ref
            client.wait_more(10)
            first = client.count()
            res = pair.coloctl(lab, "primary", "switchover", "--force", "--wait", "--timeout",
                               "150", timeout=180)
            last = client.count()
            client.wait_more(20)
        finally:
            summary = client.finish()
    print(res.stdout)
    assert res.returncode == 0 and "switchover done: roles swapped" in res.stdout, (
        res.stdout, res.stderr)
    pri, sec = pair.state(lab, "primary"), pair.state(lab, "secondary")
    assert (pri["role"], pri["state"]) == ("secondary", "PROTECTED"), pri
    assert (sec["role"], sec["state"]) == ("primary", "PROTECTED"), sec
    assert sec["lease_holder"] == "sec" and sec["failovers"] == 1
    assert client.errors() == []
    assert summary["errors"] == 0 and summary["connections"] == 1, summary
    before = _gaps(client.results[:first])
    during = _gaps(client.results[max(0, first - 1):last + 1])
    pause, usual = max(during), statistics.median(before)
    # Where the longest waits fell (wall clock of the answer that ended each), to read
    # beside the hosts' logs; and the longest wait before the switchover.
    window = results_between(client.results, first - 1, last + 1)
    for gap, at in sorted(window, reverse=True)[:3]:
        print(f"  wait of {1000 * gap:.0f} ms ended at {time.strftime('%H:%M:%S', time.gmtime(at))}"
              f".{int(1000 * (at % 1)):03d} UTC")
    print(f"longest wait before the switchover: {1000 * max(before):.0f} ms")
    # The wait that spans each step, by the step's line in the orchestrators' logs (the
    # lab's hosts share this machine's clock; two real hosts would not).
    window = results_between(client.results, 0, last + 1)
    for what, role, line in (("checkpoint before it", "primary", "checkpoint for manual"),
                             ("hand-over", "primary", "PROTECTED -> FENCED: switchover"),
                             ("re-protection's end (PROTECTED again)", "secondary",
                              "SYNCING -> PROTECTED")):
        at = _logged_at(lab.run_dir / f"orch-{role}.log", line)
        spans = [gap for gap, end in window if at is not None and end - gap <= at < end]
        print(f"the {what}: the client's wait across it "
              f"{f'{1000 * spans[0]:.0f} ms' if spans else 'not found'}")
    final = pri["checkpoints"].get("switchover", 0)
    print(f"client pause at the switchover: {1000 * pause:.0f} ms (usual gap "
          f"{1000 * usual:.0f} ms; the final checkpoint took "
          f"{1000 * (pri['last_checkpoint_s'] or 0):.0f} ms, the take-over "
          f"{1000 * (sec['last_takeover_s'] or 0):.0f} ms; {last - first} answers during "
          f"the switchover)")
    assert final == 1
    # The client waited, it was not cut off: its longest wait stayed under its own timeout.
    assert pause < 10.0
    # What an operator sees afterwards, from the new secondary (the old primary).
    st = pair.coloctl(lab, "primary", "status")
    print(st.stdout)
    assert st.returncode == 0 and "protection verified" in st.stdout, st
