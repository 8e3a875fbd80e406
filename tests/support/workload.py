"""A client workload for fault tests: what the client saw, who served, what states passed.

`Workload` runs, for the length of one fault, the lab's checking client on one persistent
connection (PUT/GET of unique keys), a MAC sampler on the LAN bridge (at most one host may
serve in any interval) and a poller of both orchestrators' states; `finish` checks that no
interval saw both hosts serve and reads every acknowledged key back.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from colo_lab import pair
from colo_lab.client import Watch
from colo_lab.lab import VM_IP, VM_MAC, Lab
from colo_lab.mac_sampler import MacSampler
from colo_lab.netns import sh
from colo_lab.wait import wait_until

PORTS = {"primary": "p-pri", "secondary": "p-sec"}


@dataclass
class StatePoller:
    """Both orchestrators' /state every `every` seconds on a thread: what each went through."""

    lab: Lab
    every: float = 0.2
    seen: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for host in ("primary", "secondary"):
                st = pair.state(self.lab, host, timeout=2)
                if st:
                    self.seen.append((time.monotonic(), host, st))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def states(self, host: str, since: float = 0.0) -> set[str]:
        return {str(st["state"]) for t, h, st in list(self.seen) if h == host and t >= since}

    def first(self, host: str, state: str, since: float = 0.0) -> float | None:
        return next((t for t, h, st in list(self.seen)
                     if h == host and t >= since and st["state"] == state), None)


class Workload:
    """The client, the MAC sampler and the state poller, for the length of one fault."""

    def __init__(self, lab: Lab, name: str, random_every: int = 0) -> None:
        self.lab = lab
        self.prefix = f"{name}-"
        self.sampler = MacSampler(lab.lan_ns, VM_MAC, list(PORTS.values()))
        wait_until(self.sampler.ready.is_set, 15, "the MAC sampler to start")
        self.watch = Watch(lab.client_ns, "--host", VM_IP, "--prefix", self.prefix,
                           *(["--random-every", str(random_every)] if random_every else []))
        self.watch.wait_for(20, 60)
        self.poller = StatePoller(lab)
        self._done = False

    def mark(self) -> int:
        """Where the client is now: pause() measures from here."""
        return self.watch.count()

    def pause(self, since: int, until: int | None = None) -> float:
        """The longest gap between successive successful requests from `since` (counted
        from the last success before it) to `until`."""
        rs = self.watch.results[:until]
        ok = [r["t"] for r in rs[:since] if r["ok"]][-1:]
        ok += [r["t"] for r in rs[since:] if r["ok"]]
        assert len(ok) >= 2, "the client had no successful request during the fault"
        return max(b - a for a, b in itertools.pairwise(ok))

    def slowest(self, since: int, until: int | None = None) -> float:
        return max(r["ms"] for r in self.watch.results[since:until]) / 1000

    def finish(self) -> dict[str, Any]:
        """Stop everything; check no interval saw both hosts serve, and that every
        acknowledged PUT is still readable. Returns the client's summary."""
        self._done = True
        self.poller.stop()
        summary = self.watch.finish()
        self.sampler.stop()
        assert self.sampler.both() == [], f"both hosts served at once: {self.sampler.both()[:5]}"
        acked = [r["i"] for r in self.watch.results if r["ok"]]
        path = self.lab.run_dir / f"acked-{self.prefix}txt"
        path.write_text("".join(f"{i}\n" for i in acked))
        out = sh(self.lab.client_ns, [sys.executable, "-m", "colo_lab.client", "--host", VM_IP, "--prefix", self.prefix,
                                      "--verify", str(path)], timeout=300, check=False)
        verdict = json.loads(out.strip().splitlines()[-1])
        assert verdict["lost"] == [], f"acknowledged PUTs lost: {verdict['lost'][:5]}"
        assert verdict["verified"] == len(acked)
        return summary

    def close(self) -> None:
        """After a failure: stop the helpers without checking."""
        if self._done:
            return
        self.poller.stop()
        for p in (self.watch, self.sampler):
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(timeout=10)
