"""A restarted colo-orch adopts what runs, and a killed colo-proxy is replaced, in a
protected pair with proxies (issue 13, "truthful restarts").

Before: a SIGKILLed and restarted primary orchestrator took its COLO VM as WAITING,
paused the live proxy (output uncompared) and started a second proxy, which on its way
out removed the live one's rules and filters; 30 s later nothing was compared.

The peer must not take the restart for a death, so the orchestrators here allow 5 s of
silence (a restart takes 1 to 2 s on this loaded two-core machine).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from colo_lab import pair
from colo_lab.lab import Lab
from colo_lab.wait import wait_until
from tests.support.workload import Workload

pytestmark = [pytest.mark.lab(proxy=True, extra="[timing]\nheartbeat_timeout = 5.0\n"
                                                  "lease_ttl = 6.0\n"),
              pytest.mark.timeout(240)]
HOSTS = ("primary", "secondary")


class Sampler:
    """Samples a host's colo-proxy processes and mode every 50 ms on a thread."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.lab, self.host = lab, host
        self.pids: list[tuple[int, ...]] = []
        self.modes: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.pids.append(tuple(pair.proxy_pids(self.lab, self.host)))
            try:
                self.modes.append(str(pair.proxy_status(self.lab, self.host).get("mode")))
            except OSError:
                self.modes.append("unreachable")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _verified(lab: Lab) -> bool:
    return all(pair.state(lab, h).get("protection_verified") for h in HOSTS)


def _payload_checkpoints(lab: Lab) -> int:
    return int(pair.state(lab, "primary").get("checkpoints", {}).get("payload", 0))


def _diverge_and_checkpoint(lab: Lab) -> None:
    before = _payload_checkpoints(lab)
    assert lab.http("/random")[0] == 200
    wait_until(lambda: _payload_checkpoints(lab) > before, 30, "a payload checkpoint")


def _log_since(lab: Lab, host: str, offset: int) -> str:
    return (lab.run_dir / f"orch-{host}.log").read_bytes()[offset:].decode(errors="replace")


def _reprotected_after_resume(lab: Lab) -> None:
    """The secondary's orchestrator resumed: the pair is protected again, and a divergence
    still checkpoints."""
    t0 = time.monotonic()
    pair.wait_state(lab, "primary", "PROTECTED", 120)
    wait_until(lambda: _verified(lab), 60, "protection verified again")
    print(f"re-protected {time.monotonic() - t0:.2f} s after the secondary's orchestrator "
          "resumed")
    _diverge_and_checkpoint(lab)


@contextmanager
def _client(lab: Lab, name: str) -> Iterator[Workload]:
    """The fault tests' workload (tests/support/workload.py): one persistent connection
    that must lose nothing (not even be reopened), every acknowledged key read back, and
    the VM's MAC never from both hosts' LAN ports in one interval."""
    work = Workload(lab, name)
    try:
        yield work
        work.watch.wait_more(10, 90)
        summary = work.finish()
    finally:
        work.close()
    assert work.watch.errors() == []
    assert summary["errors"] == 0 and summary["connections"] == 1, summary
    print(f"longest client request pair: {max(r['ms'] for r in work.watch.results):.0f} ms")


@pytest.mark.parametrize("host", HOSTS)
def test_a_restarted_orchestrator_adopts_the_vm_and_its_proxy(lab: Lab, host: str) -> None:
    wait_until(lambda: _verified(lab), 30, "protection verified on both hosts")
    proxy = pair.proxy_pids(lab, host)
    assert len(proxy) == 1
    passed = pair.proxy_status(lab, "primary").get("passed_uncompared")
    log_at = (lab.run_dir / f"orch-{host}.log").stat().st_size
    sampler = Sampler(lab, host)
    try:
        with _client(lab, f"restart-{host}"):
            t0 = time.monotonic()
            pair.restart_orchestrator(lab, host)
            pair.wait_state(lab, host, "PROTECTED", 30)
            t1 = time.monotonic()
            wait_until(lambda: _verified(lab), 30, "protection verified again")
            print(f"{host} orchestrator restarted: PROTECTED after {t1 - t0:.2f} s, verified "
                  f"after {time.monotonic() - t0:.2f} s")
            st = pair.state(lab, host)
    finally:
        sampler.stop()
    log = _log_since(lab, host, log_at)
    assert f"STOPPED -> PROTECTED: adopting our VM, in COLO as {host}" in log, log
    assert "-> WAITING" not in log and "-> STARTING" not in log, log
    assert f"adopted the running colo-proxy (pid {proxy[0]})" in log, log
    # One proxy throughout, the same one, and never passing output uncompared.
    assert sampler.pids and set(sampler.pids) == {tuple(proxy)}, set(sampler.pids)
    assert set(sampler.modes) == {"protected"}, set(sampler.modes)
    assert pair.proxy_status(lab, "primary").get("passed_uncompared") == passed
    assert st["proxy"]["pid"] == proxy[0] and st["proxy"]["role"] == host
    _diverge_and_checkpoint(lab)


@pytest.mark.parametrize("host", HOSTS)
def test_a_killed_proxy_is_replaced_and_no_connection_is_lost(lab: Lab, host: str) -> None:
    wait_until(lambda: _verified(lab), 30, "protection verified on both hosts")
    [old] = pair.proxy_pids(lab, host)
    with _client(lab, f"kill-{host}"):
        t0 = time.monotonic()
        pair.kill_proxy(lab, host)
        new = wait_until(lambda: [p for p in pair.proxy_pids(lab, host) if p != old], 30,
                         f"a new {host} proxy")
        wait_until(lambda: _verified(lab), 60, "protection verified again",
                   detail=lambda: str({h: pair.state(lab, h).get("proxy") for h in HOSTS}))
        print(f"{host} proxy killed: protection verified again after "
              f"{time.monotonic() - t0:.2f} s")
        assert pair.proxy_pids(lab, host) == new and len(new) == 1
        assert pair.state(lab, host)["proxy"]["pid"] == new[0]
        for h in HOSTS:
            assert pair.state(lab, h)["state"] in ("PROTECTED", "CHECKPOINTING")
    _diverge_and_checkpoint(lab)


@contextmanager
def _serving_alone_restarted(lab: Lab, serving: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The other host goes quiet (its orchestrator stopped) and its VM dies: `serving`
    serves alone; its orchestrator is then killed and started again under a client, and
    serves alone again with the proxy it had. Yields the restarted run's log and state,
    then resumes the other host's orchestrator."""
    other = "secondary" if serving == "primary" else "primary"
    pid = pair.orchestrator_pid(lab, other)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        pair.kill_vm(lab, other)
        pair.wait_state(lab, serving, "ALONE", 60)  # a take-over waits for the lease
        [proxy] = pair.proxy_pids(lab, serving)
        log_at = (lab.run_dir / f"orch-{serving}.log").stat().st_size
        with _client(lab, f"alone-{serving}"):
            pair.restart_orchestrator(lab, serving)
            # A VM adopted outside COLO serves again only once the arbiter has said that
            # `alone:<us>` stands (S6): its proxy holds output until then (HOLDING), and
            # the client sees at most a retransmission, never an error.
            st = pair.wait_state(lab, serving, "ALONE", 30)
        assert st["role"] == "primary" and st["lease_holder"] == serving[:3]
        assert pair.proxy_pids(lab, serving) == [proxy]
        yield _log_since(lab, serving, log_at), st
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_primary_restarted_while_alone_adopts_and_protection_returns(lab: Lab) -> None:
    wait_until(lambda: _verified(lab), 30, "protection verified on both hosts")
    with _serving_alone_restarted(lab, "primary") as (log, _st):
        assert "adopting the running VM as primary" in log, log
        assert "FAILING_OVER" not in log, log
    # The secondary finds its VM gone, fences, and comes back as the new secondary.
    _reprotected_after_resume(lab)


def test_a_secondary_lost_mid_checkpoint_leaves_the_primary_serving(lab: Lab) -> None:
    """Found in CI: the secondary's VM died in the middle of a checkpoint while its
    orchestrator was silent. The checkpoint failed (COLO_EXIT, reason error) before the peer
    counted as lost, the primary went DEGRADED, then ALONE with its proxy still holding
    output for comparison: the client timed out for good. The lab's 5 s of silence makes
    the checkpoint fail first here every time (the SVM is stopped, so the checkpoint waits
    for its answer until the VM is killed)."""
    wait_until(lambda: _verified(lab), 30, "protection verified on both hosts")
    svm = int((lab.run_dir / "svm.pid").read_text())
    sec = pair.orchestrator_pid(lab, "secondary")
    assert sec is not None
    log_at = (lab.run_dir / "orch-primary.log").stat().st_size
    os.kill(svm, signal.SIGSTOP)
    try:
        pair.api(lab, "primary", "POST", "/checkpoint")
        pair.wait_state(lab, "primary", "CHECKPOINTING", 10)
        os.kill(sec, signal.SIGSTOP)
        os.kill(svm, signal.SIGKILL)
        pair.wait_state(lab, "primary", "ALONE", 30)
        assert pair.proxy_status(lab, "primary").get("mode") == "passthrough"
        with _client(lab, "mid-checkpoint"):
            pass
    finally:
        os.kill(sec, signal.SIGCONT)
    log = _log_since(lab, "primary", log_at)
    assert "COLO exited during the checkpoint" in log, log
    assert "FAILING_OVER -> ALONE" in log, log
    _reprotected_after_resume(lab)


@pytest.mark.lab(spoils=True)  # the roles end swapped
def test_a_restarted_orchestrator_adopts_a_serving_vm_as_primary_against_its_config(
        lab: Lab) -> None:
    """`colo-lab chaos` (seed 1, 32 faults, fault 28): after a failover the host
    configured secondary serves; its colo-orch, killed and started again, adopted the VM
    in the config's role, secondary, and waited for a migration beside the other host's
    new SVM: nobody served. Here the other host's orchestrator is stopped meanwhile, so
    the serving host stays ALONE until its restarted orchestrator has decided."""
    wait_until(lambda: _verified(lab), 30, "protection verified on both hosts")
    with _serving_alone_restarted(lab, "secondary") as (log, _st):
        assert ("adopting the running VM as primary (the config says secondary; the VM "
                "wins)") in log, log
        assert "restarting it" not in log, log  # the take-over's proxy, kept
    # The configured primary finds its VM gone, fences, and becomes the new secondary.
    t0 = time.monotonic()
    pair.wait_state(lab, "secondary", "PROTECTED", 120)
    pair.wait_state(lab, "primary", "PROTECTED", 60)
    assert pair.state(lab, "primary")["role"] == "secondary"
    print(f"re-protected, roles swapped, {time.monotonic() - t0:.2f} s after the SIGCONT")
