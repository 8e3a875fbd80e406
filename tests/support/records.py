"""Numbered records that a client writes into the lab guest's key-value store (on its
replicated disk) while VMs are killed: what the disk replication tests count."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

from colo_lab import pair
from colo_lab.errors import LabError
from colo_lab.lab import Lab
from colo_lab.wait import wait_until


def value(n: int) -> bytes:
    # 3 KiB: spans filesystem blocks, so a torn record would show.
    return (f"record {n:05d} ".encode() * 300)[:3000]


class Writer:
    """A client writing numbered records; remembers when each was acknowledged."""

    def __init__(self, lab: Lab, start: int) -> None:
        self.lab = lab
        self.next = start
        self.acked: dict[int, float] = {}
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            n = self.next
            try:
                code, body = self.lab.http(f"/kv/r{n}", method="PUT", data=value(n), timeout=3)
            except (LabError, OSError, subprocess.TimeoutExpired) as exc:
                self.last_error = str(exc)  # the VM died or moved: this one was not acknowledged
                time.sleep(0.05)
                continue
            if code == 200 and body == b"stored 3000\n":
                self.acked[n] = time.monotonic()
                self.next = n + 1

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def failovers(lab: Lab, host: str) -> int:
    """How often `host`'s orchestrator has taken over so far."""
    return int(pair.state(lab, host).get("failovers", 0))


def took_over(lab: Lab, host: str, before: int) -> dict[str, Any]:
    """Wait until `host`'s orchestrator has failed over since it counted `before` failovers
    and serves as primary; its state."""

    def where() -> str:
        # Where each orchestrator got to: a failover that never came is otherwise
        # impossible to tell apart from one that hung.
        seen = []
        for h in ("primary", "secondary"):
            try:
                st = pair.state(lab, h)
            except Exception as err:  # the host may be the one that died
                st = {"error": str(err)}
            log = lab.run_dir / f"orch-{h}.log"
            tail = log.read_text(errors="replace").splitlines()[-12:] if log.exists() else []
            seen.append(f"{h}: {st.get('state')} role={st.get('role')} "
                        f"failovers={st.get('failovers')} recent={st.get('recent', [])[-4:]} "
                        f"log: {' | '.join(tail)}")
        return "\n".join(seen)

    # At least once: if the fenced peer's first restarted VM dies right after it starts
    # (seen here: "monitor unreachable" 50 ms after the start, then a 5 s back-off), the
    # re-protection that began meanwhile ends in a second "continuing alone" failover.
    wait_until(lambda: failovers(lab, host) > before, 30, f"{host} to take over", detail=where)
    st = pair.state(lab, host)
    assert st["role"] == "primary"
    return st
