"""`coloctl switchover` on the lab's protected pair, under a client on one persistent
connection: the roles swap, the pair is protected again, the client sees no error, and
its longest wait for an answer (the client pause) is measured and printed."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

import pytest

from colo_lab import pair
from colo_lab.client import Watch
from colo_lab.lab import VM_IP, Lab

pytestmark = pytest.mark.lab(proxy=True)


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
    try:
        client.wait_more(20)
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
    final = pri["checkpoints"].get("switchover", 0)
    print(f"client pause at the switchover: {1000 * pause:.0f} ms (usual gap "
          f"{1000 * usual:.0f} ms; the final checkpoint took "
          f"{1000 * (pri['last_checkpoint_s'] or 0):.0f} ms, the take-over "
          f"{1000 * (sec['last_takeover_s'] or 0):.0f} ms; {last - first} answers during "
          f"the switchover)")
    assert final == 1
    # The client waited, it was not cut off: its longest wait stayed under its own timeout.
    assert pause < 10.0
