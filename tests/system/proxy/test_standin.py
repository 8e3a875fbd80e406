"""The proxy pair on stand-in VMs: the acceptance of issue 4 (fast, no QEMU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from colo_lab.proxy_harness import Orchestrator, ProxyPair, in_ns, nstat
from colo_lab.standin import CLIENT_IP6, VM_IP6, Standin
from colo_lab.wait import wait_until
from colo_proxy import fastpath
from colo_proxy.kernel.datapath import prog_exists
from colo_proxy.service import control_socket as control
from colo_proxy.service.run import TEST_FAULT_ENV

LOADGEN = [sys.executable, "-m", "colo_lab.loadgen"]


def _load(lab: Standin, *args: str, timeout: float = 120) -> dict[str, object]:
    out = in_ns(lab.client_ns, [*LOADGEN, *args], timeout=timeout)
    result: dict[str, object] = json.loads(out)
    return result


# Every test here runs the primary's C fast path (the default) when it is built; this one
# runs the pure-Python path too.
@pytest.mark.parametrize("pair", [[], ["--no-fast-path"]], ids=["fast-path", "python"],
                         indirect=True)
def test_deterministic_service_needs_no_checkpoint(standin: Standin, pair: ProxyPair) -> None:
    res = _load(standin, "check", "--conns", "20", "--requests", "1000")
    pri, sec = pair.status("primary"), pair.status("secondary")
    svm_tcp = nstat(standin.vm_ns["secondary"], "TcpExtTSEcrRejected", "TcpExtListenDrops")
    assert res["errors"] == [] and res["ok"] == 1000, json.dumps(
        [res["errors"], pri, sec, svm_tcp])

    assert pri["checkpoint_requests"] == {}
    if "--no-fast-path" in pair.extra or not fastpath.available():
        assert "fast_path" not in pri
    else:
        # Keep-alive exchanges after the first of each connection: released in C.
        assert pri["fast_path"]["released"] > 500, pri["fast_path"]
    assert pri["compare"]["primary_packets"] > 1000
    assert pri["compare"]["released_packets"] == pri["compare"]["primary_packets"]
    assert pri["compare"]["internal_errors"] == 0
    # Each connection's offset was learned; the SVM's ISN differs from the PVM's on most
    # (separate TCP stacks; equal only when both SYNs landed within the same 64 ns).
    offs = control.request(pair.sock("secondary"), {"type": "status", "offsets": True})
    assert sec["offsets"] >= 20 and all(o["complete"] for o in offs["offsets"]), offs
    assert sec["offsets_nonzero"] >= 10, offs
    assert sec["datapath"]["ack_rewrites"] > 1000
    assert sec["datapath"]["redirect_failures"] == 0
    assert pri["datapath"]["clone_failures"] == 0
    # The SVM took every handshake: Linux >= 6.15 drops an ACK whose timestamp echo is none
    # of its own SYN-ACKs' (the rewriter shifts the PVM's into the SVM's).
    assert svm_tcp.get("TcpExtTSEcrRejected", 0) == 0, svm_tcp


def test_ipv6_connections_need_no_checkpoint(standin: Standin, pair: ProxyPair) -> None:
    """IPv6 TCP through the proxy pair: the secondary rewrites it as IPv4 (offsets learned
    from the handshakes), so the SVM takes every client segment and no reply diverges."""
    res = _load(standin, "check", "--host", VM_IP6, "--conns", "8", "--requests", "400")
    pri, sec = pair.status("primary"), pair.status("secondary")
    svm_tcp = nstat(standin.vm_ns["secondary"], "TcpExtTSEcrRejected", "TcpExtListenDrops")
    assert res["errors"] == [] and res["ok"] == 400, json.dumps(
        [res["errors"], pri, sec, svm_tcp])
    assert pri["checkpoint_requests"] == {}
    # The PVM's IPv6 output was queued (ip6tables) and compared with the SVM's.
    assert pri["compare"]["primary_packets"] > 400
    assert pri["compare"]["secondary_packets"] > 400
    assert pri["compare"]["released_packets"] == pri["compare"]["primary_packets"]
    assert pri["compare"]["internal_errors"] == 0
    assert pri["datapath"]["isn_clones"] >= 8  # the PVM's IPv6 SYN-ACKs copied too
    offs = control.request(pair.sock("secondary"), {"type": "status", "offsets": True})
    # "addr:port" (the address bracketed when IPv6, or not: split at the last colon).
    six = [o for o in offs["offsets"] if o["vm"].rsplit(":", 1)[0].strip("[]") == VM_IP6]
    assert len(six) >= 8, offs
    assert all(o["complete"] and o["peer"].rsplit(":", 1)[0].strip("[]") == CLIENT_IP6
               for o in six), offs
    assert sec["datapath"]["ack_rewrites"] > 400
    assert sec["datapath"]["ip6_ext_headers"] == 0
    assert svm_tcp.get("TcpExtTSEcrRejected", 0) == 0, svm_tcp


def test_the_svm_resolves_its_neighbours_itself(standin: Standin, pair: ProxyPair) -> None:
    """The SVM forgot the client's MAC while the PVM and the client still know each other:
    only the SVM asks (ARP, and IPv6 neighbour solicitation), and only the primary host's
    uplink can carry its question to the client."""
    warm = _load(standin, "check", "--conns", "2", "--requests", "20")
    warm6 = _load(standin, "check", "--host", VM_IP6, "--conns", "2", "--requests", "20")
    assert warm["errors"] == [] and warm6["errors"] == []
    in_ns(standin.vm_ns["secondary"], ["ip", "neigh", "flush", "all"])
    before = pair.status("primary")["datapath"]["svm_solicits"]
    res = _load(standin, "check", "--conns", "4", "--requests", "100")
    res6 = _load(standin, "check", "--host", VM_IP6, "--conns", "4", "--requests", "100")
    pri = pair.status("primary")
    assert res["errors"] == [] and res6["errors"] == [], json.dumps([res, res6, pri])
    # Without the uplink copy the SVM's answers waited for a neighbour entry that never
    # came, and each connection's first reply timed out into a checkpoint.
    assert pri["checkpoint_requests"] == {}, pri["checkpoint_requests"]
    assert pri["datapath"]["svm_solicits"] >= before + 2


def test_nondeterministic_reply_is_held_until_checkpoint(standin: Standin, pair: ProxyPair) -> None:
    orch = Orchestrator(pair.sock("primary"))
    try:
        client = subprocess.Popen(
            ["ip", "netns", "exec", standin.client_ns, *LOADGEN, "random", "--timeout", "15"],
            stdout=subprocess.PIPE,
        )
        reqs = wait_until(orch.taken, 10, "a checkpoint request")
        assert [r["reason"] for r in reqs] == ["payload"]
        flow = reqs[0]["flow"]
        assert (flow["proto"], flow["src"], flow["sport"]) == (6, "10.99.0.10", 80)
        assert flow["dst"] == "10.99.0.100"
        # The replies differ in their body only: the headers were compared and released.
        assert reqs[0]["offset"] > 0
        held = pair.status("primary")["held_packets"]
        assert held > 0
        done_at = time.monotonic()
        pair.tell("checkpoint_done")
        out, _ = client.communicate(timeout=30)

        # A stand-in cannot really copy the PVM's state, so the connection's close may
        # diverge again; an orchestrator answers each request with a checkpoint.
        def settled() -> bool:
            if orch.taken():
                pair.tell("checkpoint_done")
            return bool(pair.status("primary")["held_packets"] == 0)

        wait_until(settled, 10, "nothing held")
    finally:
        orch.close()
    chunks = json.loads(out)["chunks"]
    before = b"".join(bytes.fromhex(c["hex"]) for c in chunks if c["at"] < done_at)
    whole = b"".join(bytes.fromhex(c["hex"]) for c in chunks)
    head, _, body = whole.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(body) == 37
    # Nothing of the differing body reached the client before the checkpoint.
    assert len(before) <= reqs[0]["offset"]


@pytest.mark.parametrize("pair", [["--compare-timeout", "0.5"]], indirect=True)
def test_reply_without_svm_twin_times_out(standin: Standin, pair: ProxyPair) -> None:
    orch = Orchestrator(pair.sock("primary"))
    svm = standin.servers["secondary"]
    try:
        _load(standin, "check", "--conns", "1", "--requests", "5")
        assert orch.taken() == []
        # The SVM's service stops answering; its kernel still takes the connection.
        os.kill(svm.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        client = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                standin.client_ns,
                "curl",
                "-sS",
                "-m",
                "20",
                "http://10.99.0.10/health",
            ],
            stdout=subprocess.PIPE,
        )
        reqs = wait_until(orch.taken, 10, "a checkpoint request")
        assert reqs[0]["reason"] == "timeout"
        assert reqs[0]["flow"]["sport"] == 80
        assert reqs[0]["at"] - t0 >= 0.5
        pair.tell("checkpoint_done")
        out, _ = client.communicate(timeout=30)
        assert out == b"ok\n"
    finally:
        os.kill(svm.pid, signal.SIGCONT)
        orch.close()


def test_sigkill_holds_traffic_restart_takes_over_cleanup_leaves_nothing(
    standin: Standin, pair: ProxyPair
) -> None:
    ids = pair.prog_ids()
    # 3 per host, and the primary's 2 on its uplink (lan0).
    assert len(ids) == 8 and all(prog_exists(i) for i in ids)
    pair.kill("primary")
    pair.kill("secondary")
    # Fail-closed (the default): with the proxy dead the PVM's output is held.
    held = in_ns(
        standin.client_ns, ["curl", "-sS", "-m", "2", "http://10.99.0.10/health"], check=False
    )
    assert held == ""
    # A restarted pair takes over the queue, filters and rules of the dead one.
    pair.start()
    assert _load(standin, "check", "--conns", "2", "--requests", "20")["ok"] == 20
    ids += pair.prog_ids()
    pair.kill("primary")
    pair.kill("secondary")
    out = pair.cleanup()
    assert "removed" in out["primary"] and "removed" in out["secondary"]
    assert pair.leftovers() == []
    assert not any(prog_exists(i) for i in ids)
    # Without a proxy and its rules the service answers directly again.
    assert (
        in_ns(standin.client_ns, ["curl", "-sS", "-m", "5", "http://10.99.0.10/health"]) == "ok\n"
    )


def _kernel_state(pair: ProxyPair, role: str) -> str:
    """The proxy's rules and filters in its host's namespace, as text to compare."""
    ns, tap = pair.ns(role), standin_tap(role)
    return "\n".join(in_ns(ns, argv, check=False) for argv in (
        ["iptables", "-w", "-S", "FORWARD"],
        ["tc", "filter", "show", "dev", tap, "ingress"], ["tc", "filter", "show", "dev", tap, "egress"],
        ["tc", "filter", "show", "dev", "fwd0", "ingress"],
        ["tc", "filter", "show", "dev", "fwd0", "egress"]))


def standin_tap(role: str) -> str:
    return "tapP" if role == "primary" else "tapS"


def test_a_second_proxy_of_an_instance_exits_and_changes_nothing(
    standin: Standin, pair: ProxyPair
) -> None:
    """Before the lock, a second primary failed to bind the queue and on its way out removed
    the live one's rules and filters: the PVM's output then passed uncompared."""
    for role in ("secondary", "primary"):
        live = control.request(pair.sock(role), {"type": "hello"})
        kernel = _kernel_state(pair, role)
        second = subprocess.run(["ip", "netns", "exec", pair.ns(role), *pair.argv(role)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 3, second.stderr
        assert f"already runs (pid {live['pid']}," in second.stderr, second.stderr
        assert pair.procs[role].poll() is None
        assert control.request(pair.sock(role), {"type": "hello"})["pid"] == live["pid"]
        assert _kernel_state(pair, role) == kernel
    assert "colo-proxy" in _kernel_state(pair, "primary")
    # The live pair still compares: the PVM's output goes through its queue.
    before = pair.status("primary")["compare"]["primary_packets"]
    assert _load(standin, "check", "--conns", "2", "--requests", "20")["ok"] == 20
    assert pair.status("primary")["compare"]["primary_packets"] > before + 20


@pytest.mark.parametrize("pair", [["--on-crash", "open"]], indirect=True)
def test_fail_open_passes_traffic_when_the_proxy_dies(standin: Standin, pair: ProxyPair) -> None:
    pair.kill("primary")
    assert (
        in_ns(standin.client_ns, ["curl", "-sS", "-m", "5", "http://10.99.0.10/health"]) == "ok\n"
    )


def test_failover_sends_svm_output_to_the_lan(standin: Standin, pair: ProxyPair) -> None:
    """The PVM's host is lost: the SVM serves old connections (rewritten) and new ones."""
    code = (
        "import http.client,json,sys\n"
        "c=http.client.HTTPConnection('10.99.0.10',80,timeout=10)\n"
        "c.request('GET','/health'); a=c.getresponse().read()\n"
        "sys.stdout.write(json.dumps([a.decode()])+'\\n'); sys.stdout.flush()\n"
        "sys.stdin.readline()\n"
        "c.request('PUT','/kv/x',body=b'after'); b=c.getresponse().read()\n"
        "print(json.dumps([b.decode()]))\n"
    )
    client = subprocess.Popen(
        ["ip", "netns", "exec", standin.client_ns, sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert client.stdout is not None and client.stdin is not None
    assert json.loads(client.stdout.readline()) == ["ok\n"]
    # Lose the primary host: its uplink goes down and its VM is gone.
    standin.set_uplink("primary", False)
    pair.kill("primary")
    pair.tell("failover", ("secondary",))
    standin.set_uplink("secondary", True)
    # The client's ARP cache still holds the same MAC; the LAN bridge learns the new port
    # from the SVM's first frame (announce-self does this for a real VM).
    in_ns(standin.vm_ns["secondary"], ["ping", "-c", "1", "-W", "1", "10.99.0.100"], check=False)
    client.stdin.write(b"go\n")
    client.stdin.flush()
    out, _ = client.communicate(timeout=30)
    assert json.loads(out) == ["stored 5\n"]
    assert pair.status("secondary")["datapath"]["seq_rewrites"] > 0
    assert (
        in_ns(standin.client_ns, ["curl", "-sS", "-m", "5", "http://10.99.0.10/health"]) == "ok\n"
    )


def test_a_secondary_drops_the_queue_rule_a_dead_primary_left_on_its_host(
    standin: Standin, pair: ProxyPair
) -> None:
    """Found by colo-lab chaos (seed 1, fault 31): a host's primary-role proxy killed with
    the host left its fail-closed NFQUEUE rule; back as secondary, its proxy kept it, and
    after the next failover the SVM's output was queued to nobody: no answer on any
    connection until a primary proxy bound the queue again."""
    ns, tap = pair.ns("secondary"), standin_tap("secondary")
    argv = pair.argv("secondary")
    instance = argv[argv.index("--instance") + 1]
    pair.kill("secondary", signal.SIGTERM)
    # What a primary of this host's instance leaves when it dies: its rule, fail closed.
    in_ns(ns, [sys.executable, "-c", "from colo_proxy.kernel import netfilter; "
               f"netfilter.install({tap!r}, {pair.queue}, {instance!r}, bypass=False)"])
    assert "NFQUEUE" in in_ns(ns, ["iptables", "-w", "-S", "FORWARD"])
    pair.start("secondary")
    # The failover: the SVM's output reaches the client through the bridge.
    standin.set_uplink("primary", False)
    pair.kill("primary")
    pair.tell("failover", ("secondary",))
    standin.set_uplink("secondary", True)
    in_ns(standin.vm_ns["secondary"], ["ping", "-c", "1", "-W", "1", "10.99.0.100"], check=False)
    assert (
        in_ns(standin.client_ns, ["curl", "-sS", "-m", "5", "http://10.99.0.10/health"],
              check=False) == "ok\n"
    )
    assert "NFQUEUE" not in in_ns(ns, ["iptables", "-w", "-S", "FORWARD"])


def test_an_exception_fails_closed_and_a_restart_takes_over(
    standin: Standin, pair: ProxyPair
) -> None:
    """Before, an exception in the proxy ran the `finally` that removed its rule and
    filters: the PVM's output then passed uncompared until someone restarted it."""
    fault = pair.run_dir / "fault"
    pair.kill("primary", signal.SIGTERM)
    pair.start("primary", env={TEST_FAULT_ENV: str(fault)})
    kernel = _kernel_state(pair, "primary")
    assert "colo-proxy" in kernel and "colo_pvm_out" in kernel, kernel
    fault.touch()
    # The client's request makes the PVM answer: the proxy raises before reading it.
    first = in_ns(standin.client_ns, ["curl", "-sS", "-m", "3", "http://10.99.0.10/health"],
                  check=False)
    proc = pair.procs["primary"]
    wait_until(lambda: proc.poll() is not None, 10, "the primary proxy to exit")
    log = pair.log("primary").read_text()
    assert proc.returncode == 1, log[-2000:]
    assert "Traceback" in log and f"fault injected by {TEST_FAULT_ENV}" in log, log[-2000:]
    assert not fault.exists()
    # No reply passed uncompared, then or while no proxy runs: the rule and the filters
    # (the same programs) are still there.
    assert first == ""
    assert _kernel_state(pair, "primary") == kernel
    held = in_ns(standin.client_ns, ["curl", "-sS", "-m", "2", "http://10.99.0.10/health"],
                 check=False)
    assert held == ""
    # A restarted proxy takes the rule and the filters over and compares again.
    pair.start("primary")
    before = pair.status("primary")["compare"]["primary_packets"]
    assert _load(standin, "check", "--conns", "2", "--requests", "20")["ok"] == 20
    assert pair.status("primary")["compare"]["primary_packets"] > before + 20
    after = _kernel_state(pair, "primary")
    assert after.count("colo-proxy") == kernel.count("colo-proxy"), after
    assert after.count("colo_") == kernel.count("colo_"), after
