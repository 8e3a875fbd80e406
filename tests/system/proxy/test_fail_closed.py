"""A proxy that crashes (an exception, not a signal) fails closed (issue 15, item 6).

Before, any exception ran the `finally` blocks that remove the NFQUEUE rule and the BPF
filters: the PVM's output then passed uncompared until someone noticed. Now only an
orderly stop removes them; a crash leaves them, logs its traceback, exits with status 1,
and the restarted proxy takes them over in place. The crash is injected through the
test-only COLO_PROXY_TEST_FAULT (colo_proxy/service/loop.py).
"""

from __future__ import annotations

import json
import sys

import pytest

from colo_lab.proxy_harness import ProxyPair, in_ns
from colo_lab.standin import Standin
from colo_lab.wait import wait_until
from colo_proxy.service import control_socket as control
from colo_proxy.service.loop import FAULT_ENV

LOADGEN = [sys.executable, "-m", "colo_lab.loadgen"]
TAPS = {"primary": "tapP", "secondary": "tapS"}


def _check(lab: Standin, requests: int = 20) -> int:
    out = json.loads(in_ns(lab.client_ns, [*LOADGEN, "check", "--conns", "2",
                                           "--requests", str(requests)], timeout=120))
    return int(out["ok"])


def _queued(pair: ProxyPair) -> int:
    """Packets the primary's NFQUEUE rules have matched (IPv4 and IPv6)."""
    n = 0
    for tool in ("iptables", "ip6tables"):
        out = in_ns(pair.ns("primary"), [tool, "-w", "-L", "FORWARD", "-v", "-x", "-n"])
        n += sum(int(ln.split()[0]) for ln in out.splitlines() if "colo-proxy:" in ln)
    return n


def _filters(pair: ProxyPair, role: str) -> list[str]:
    """Our filters on the role's tap and forward link, one line each ("dev hook name")."""
    out = []
    for dev in (TAPS[role], "fwd0"):
        for hook in ("ingress", "egress"):
            rows = json.loads(in_ns(pair.ns(role), ["tc", "-j", "filter", "show", "dev", dev,
                                                    hook]) or "[]")
            out += [f"{dev} {hook} {r['options']['bpf_name'].split(':')[0]}" for r in rows
                    if str((r.get("options") or {}).get("bpf_name", "")).startswith("colo_")]
    return sorted(out)


def _rules(pair: ProxyPair) -> list[str]:
    return [f"{tool} {ln}" for tool in ("iptables", "ip6tables")
            for ln in in_ns(pair.ns("primary"), [tool, "-w", "-S", "FORWARD"]).splitlines()
            if "colo-proxy:" in ln]


def _crash(pair: ProxyPair, role: str) -> str:
    """Send the request that raises; wait for the exit; its status must say "crashed"."""
    try:
        control.request(pair.sock(role), {"type": "checkpoint_started"}, timeout=5)
    except OSError:
        pass  # the proxy died before answering: expected
    proc = pair.procs[role]
    rc = proc.wait(30)
    log = pair.log(role).read_text()
    assert rc == 1, log[-2000:]
    assert "crashed" in log and "InjectedFault" in log and "Traceback" in log, log[-2000:]
    assert "filters and rules left in place" in log, log[-2000:]
    return log


def test_a_crashed_proxy_holds_output_and_a_restart_takes_over(
    standin: Standin, pair: ProxyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules, filters = _rules(pair), {r: _filters(pair, r) for r in TAPS}
    assert len(rules) == 2 and len(filters["primary"]) == 3 == len(filters["secondary"])
    # Restart both with the fault armed (SIGTERM: an orderly stop, everything removed).
    monkeypatch.setenv(FAULT_ENV, "checkpoint_started")
    pair.stop()
    pair.start()
    assert _check(standin) == 20

    # 1. The secondary crashes: its filters stay, so the SVM's output is still steered to
    # the comparator (never to the LAN) and the pair still compares without a checkpoint.
    _crash(pair, "secondary")
    assert _filters(pair, "secondary") == filters["secondary"]
    svm_before = pair.status("primary")["compare"]["secondary_packets"]
    assert _check(standin) == 20
    assert pair.status("primary")["compare"]["secondary_packets"] > svm_before + 20

    # 2. The primary crashes: its rule and filters stay; the PVM's output reaches the rule
    # and goes no further (no queue is bound: dropped, on_crash = "closed").
    _crash(pair, "primary")
    assert _rules(pair) == rules and _filters(pair, "primary") == filters["primary"]
    before = _queued(pair)
    answer = in_ns(standin.client_ns, ["curl", "-sS", "-m", "3", "http://10.99.0.10/health"],
                   check=False)
    assert answer == ""
    assert _queued(pair) > before  # the PVM answered; the rule held its answer

    # 3. Restarted (as the supervisor does), the pair takes the rules and filters over in
    # place (none stacked) and compares again.
    monkeypatch.delenv(FAULT_ENV)
    pair.start()
    assert _rules(pair) == rules
    assert {r: _filters(pair, r) for r in TAPS} == filters
    wait_until(lambda: _check(standin, 5) == 5, 30, "service through the restarted pair")
    assert _check(standin) == 20
