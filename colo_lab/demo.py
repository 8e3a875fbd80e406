"""The demo: a protected VM pair survives the death of its primary, then of the new primary.

Steps (each printed as it happens):
 1. lab up: namespaces, PVM booted, SVM waiting for migration
 2. both orchestrators start and protect the pair (COLO)
 3. a client keeps one persistent connection and a checked request loop running
 4. requests to the non-deterministic endpoint cause checkpoints (reason "payload")
 5. the PVM's QEMU is killed (SIGKILL); the SVM takes over
 6. the orchestrators re-protect: a new secondary, COLO again
 7. a summary: requests, errors, checkpoints by reason, takeover time
 8. everything is removed
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from colo_lab import pair
from colo_lab.client import Watch
from colo_lab.errors import LabError
from colo_lab.lab import VM_IP, Lab
from colo_lab.wait import wait_until


def run_demo(say: Callable[[str], None], *, name: str = "demo") -> dict[str, Any]:
    lab = Lab(name)
    lab.down()
    t0 = time.monotonic()
    try:
        say("1/7 starting the lab: namespaces, bridges, PVM booting, SVM waiting ...")
        lab.up(secondary="incoming")
        say(f"    lab up in {time.monotonic() - t0:.1f} s (accel {lab.accel})")
        say("2/7 starting colo-orch (and through it colo-proxy) on both hosts ...")
        pair.protect(lab, proxy=True)
        say("    pair PROTECTED: PVM on the primary host, SVM in COLO on the secondary host")

        say(f"3/7 client: one persistent connection to http://{VM_IP}/, PUT+GET checked ...")
        client = Watch(lab.client_ns, "--host", VM_IP, "--duration", "600",
                       "--random-every", "10", "--timeout", "5")
        client_t0 = time.monotonic()
        client.wait_for(20, 60)
        say(f"    {client.count()} requests so far")

        say("4/7 checkpoints while the client runs (proxy requests, operator, periodic) ...")
        for _ in range(3):
            before = _cps(lab, "primary")
            pair.api(lab, "primary", "POST", "/checkpoint")
            wait_until(_more_checkpoints(lab, before), 20, "checkpoint")
        st = pair.state(lab, "primary")
        say(f"    checkpoints by reason: {st['checkpoints']}; last took "
            f"{1000 * (st['last_checkpoint_s'] or 0):.0f} ms")

        say("5/7 killing the PVM's QEMU with SIGKILL ...")
        n_before = client.count()
        pid = int((lab.run_dir / "pvm.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        sec = pair.wait_state(lab, "secondary", "ALONE", 30)
        say(f"    secondary took over in {1000 * (sec['last_takeover_s'] or 0):.0f} ms; "
            f"now {sec['role']}")
        client.wait_for(n_before + 20, 60)
        gap = _largest_gap(client.results, killed_at - client_t0)
        say(f"    client continues: {client.count() - n_before} more requests; "
            f"longest pause around the failover {gap * 1000:.0f} ms")

        say("6/7 re-protecting: new SVM on the old primary host, COLO again ...")
        settled_t = time.monotonic() - client_t0
        pair.wait_state(lab, "primary", "PROTECTED", 90)
        pair.wait_state(lab, "secondary", "PROTECTED", 30)
        client.wait_for(client.count() + 10, 60)
        # The COLO entry stops the new primary's VM for the migration's last copy.
        entry_gap = _largest_gap(client.results, time.monotonic() - client_t0,
                                 after=settled_t)
        say(f"    pair PROTECTED again (roles swapped); longest pause while re-protecting "
            f"{entry_gap * 1000:.0f} ms")

        if not client.finish(timeout=30):
            raise LabError("the client printed no summary")
        summary = {
            "requests_ok": client.summary.get("ok"),
            "request_errors": client.summary.get("errors"),
            "client_connections": client.summary.get("connections"),
            "checkpoints_by_reason": pair.state(lab, "primary").get("checkpoints", {})
            | {f"{k} (new primary)": v for k, v in
               pair.state(lab, "secondary").get("checkpoints", {}).items()},
            "takeover_ms": round(1000 * (sec["last_takeover_s"] or 0)),
            "longest_client_pause_ms": round(gap * 1000),
            "reprotect_client_pause_ms": round(entry_gap * 1000),
            "seconds": round(time.monotonic() - t0, 1),
        }
        if summary["request_errors"]:
            # Where in the story each error fell, so a failed demo says which step broke it.
            summary["errors_at"] = [
                f"{r['t'] - (killed_at - client_t0):+.2f} s from the kill: {r['err']}"
                for r in client.results if not r["ok"]]
        say("7/7 summary:")
        for k, v in summary.items():
            say(f"    {k}: {v}")
        return summary
    finally:
        say("cleaning up the lab ...")
        lab.down()


def _cps(lab: Lab, host: str) -> int:
    return sum(pair.state(lab, host).get("checkpoints", {}).values())


def _more_checkpoints(lab: Lab, before: int) -> Callable[[], bool]:
    return lambda: _cps(lab, "primary") > before


def _largest_gap(results: list[dict[str, Any]], around: float, *,
                 after: float | None = None) -> float:
    """Longest time between two consecutive answers within 10 s of `around` (and after
    `after`, when given)."""
    times = [r["t"] for r in results if r["ok"] and abs(r["t"] - around) < 10
             and (after is None or r["t"] >= after)]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)
