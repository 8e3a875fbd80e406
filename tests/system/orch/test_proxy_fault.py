"""A colo-proxy that fails on an exception is restarted by its orchestrator (issue 15).

The proxy fails closed (its rules and filters stay), exits 1, and the orchestrator's
supervision starts it again; the new one takes the rules and filters over and the pair
is verified protected again. The fault is injected through COLO_PROXY_TEST_FAULT, which
the orchestrators hand down to the proxies they start: while its file exists, the next
proxy loop to handle an event raises once (whichever host's proxy that is)."""

from __future__ import annotations

import time

import pytest

from colo_lab import pair
from colo_lab.lab import Lab
from colo_lab.wait import wait_until
from colo_proxy.service.run import TEST_FAULT_ENV

# Orchestrators started by the test, with the fault hook in their environment.
pytestmark = [pytest.mark.lab(proxy=True, orchestrators=False), pytest.mark.timeout(180)]
HOSTS = ("primary", "secondary")


def _verified(lab: Lab) -> bool:
    return all(pair.state(lab, h).get("protection_verified") for h in HOSTS)


def test_a_proxy_that_raised_is_restarted_and_protects_again(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    fault = lab.run_dir / "proxy-fault"
    monkeypatch.setenv(TEST_FAULT_ENV, str(fault))
    pair.protect(lab, proxy=True)
    wait_until(lambda: _verified(lab), 60, "protection verified on both hosts")
    before = {h: pair.proxy_pids(lab, h) for h in HOSTS}
    assert all(len(p) == 1 for p in before.values()), before
    logs = {h: (lab.run_dir / f"orch-{h}.log").stat().st_size for h in HOSTS}
    t0 = time.monotonic()
    fault.touch()
    # The client's request wakes the primary's proxy (the PVM's answer is queued to it).
    lab.http("/health", timeout=30)

    def replaced() -> list[str]:
        return [h for h in HOSTS if pair.proxy_pids(lab, h) not in ([], before[h])]

    [host] = wait_until(replaced, 60, "a new proxy")
    wait_until(lambda: _verified(lab), 60, "protection verified again",
               detail=lambda: str({h: pair.state(lab, h).get("proxy") for h in HOSTS}))
    print(f"{host} proxy raised: protection verified again after {time.monotonic() - t0:.2f} s")
    assert not fault.exists()
    log = (lab.run_dir / f"orch-{host}.log").read_bytes()[logs[host]:].decode(errors="replace")
    old = before[host][0]
    assert f"colo-proxy ({host}, pid {old}) is gone (exit status 1)" in log, log[-3000:]
    assert f"fault injected by {TEST_FAULT_ENV}" in log and "Traceback" in log, log[-3000:]
    assert "rules and filters stay as on a crash" in log, log[-3000:]
    assert lab.http("/health", timeout=30)[0] == 200
    for h in HOSTS:
        assert len(pair.proxy_pids(lab, h)) == 1
        assert pair.state(lab, h)["state"] in ("PROTECTED", "CHECKPOINTING")
