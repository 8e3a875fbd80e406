"""The lab's etcd cluster: three members in namespaces of their own, on a network of their own.

```
  colo-<name>-etcd1 ─ eth0 ──┐
  colo-<name>-etcd2 ─ eth0 ──┼── colo-<name>-etcdnet (bridge "etcd")
  colo-<name>-etcd3 ─ eth0 ──┤
  colo-<name>-pri ── etcd0 ──┤
  colo-<name>-sec ── etcd0 ──┘
```
A member in a namespace of its own can be killed or cut alone, and each host reaches the
cluster over a link of its own (`etcd0` in its namespace), so a test can cut one host off
from etcd while the other still reaches it: as with an etcd cluster on other machines.
The members' data directories are in the lab's run directory; `Lab.down` kills them with
everything else in the lab's namespaces.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from colo_lab import netns
from colo_lab.cmd import need
from colo_lab.errors import LabError
from colo_lab.wait import wait_until

if TYPE_CHECKING:
    from colo_lab.lab import Lab

MEMBERS = (1, 2, 3)
SUBNET = "10.99.2"
PLEN = 24
HOST_IPS = {"primary": f"{SUBNET}.1", "secondary": f"{SUBNET}.2"}
HOST_LINK = "etcd0"  # each host's link to the etcd network, in the host's namespace
BRIDGE = "etcd"
CLIENT_PORT = 2379
PEER_PORT = 2380
# etcd's defaults (heartbeat 100 ms, election 1000 ms) hold here, although the two cores
# also run two TCG VMs: in a protected pair with colo-proxy under a client's load and
# checkpoints, not one of the leader's heartbeats was sent later than twice the interval
# (no member logged etcd's warning "leader failed to send out heartbeat on time"), even at
# a 50 ms interval, and no leader changed after the first election (docs/LAB.md). Longer
# timeouts would only slow what the tests measure: etcd raises any lease TTL below 1.5
# election timeouts to that minimum, and losing a leader costs an election timeout.
HEARTBEAT_MS = 100
ELECTION_MS = 1000
MIN_LEASE_TTL_S = 1.5 * ELECTION_MS / 1000
ETCD = "etcd"  # Debian's etcd-server and etcd-client (scripts/bootstrap)
ETCDCTL = "etcdctl"
# Members this process started (its children), so that a killed one is collected, not left a
# zombie; a member outlives the process that started it (`colo-lab up` exits).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def member_ns(lab: Lab, i: int) -> str:
    _check_member(i)
    return f"{lab.prefix}etcd{i}"


def net_ns(lab: Lab) -> str:
    return f"{lab.prefix}etcdnet"


def member_ip(i: int) -> str:
    _check_member(i)
    return f"{SUBNET}.{10 + i}"


def endpoints(lab: Lab) -> list[str]:
    """The members' client URLs, as the orchestrators and etcdctl take them."""
    return [f"http://{member_ip(i)}:{CLIENT_PORT}" for i in MEMBERS]


def build(lab: Lab) -> None:
    """The etcd network: its bridge, the members' namespaces and each host's `etcd0`."""
    net = net_ns(lab)
    netns.add(net)
    netns.bridge(net, BRIDGE, [])
    for i in MEMBERS:
        ns = member_ns(lab, i)
        netns.add(ns)
        _port(net, f"p-etcd{i}", ns, "eth0", member_ip(i))
    for role, ip in HOST_IPS.items():
        _port(net, f"p-{role[:3]}", lab.hosts[role].ns, HOST_LINK, ip)


def _port(net: str, port: str, ns: str, name: str, ip: str) -> None:
    netns.veth(net, port, ns, name)
    netns.ip(net, "link", "set", port, "master", BRIDGE)
    netns.ip(ns, "addr", "add", f"{ip}/{PLEN}", "dev", name)


def member_argv(lab: Lab, i: int) -> list[str]:
    """The command line of member i (the same for its first start and a restart: with a
    data directory present etcd ignores the initial-cluster flags and rejoins)."""
    def url(j: int, port: int) -> str:
        return f"http://{member_ip(j)}:{port}"

    cluster = ",".join(f"etcd{j}={url(j, PEER_PORT)}" for j in MEMBERS)
    return [ETCD, "--name", f"etcd{i}", "--data-dir", str(lab.run_dir / f"etcd{i}.data"),
            "--listen-client-urls", url(i, CLIENT_PORT),
            "--advertise-client-urls", url(i, CLIENT_PORT),
            "--listen-peer-urls", url(i, PEER_PORT),
            "--initial-advertise-peer-urls", url(i, PEER_PORT),
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"colo-{lab.name}",
            "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS),
            # A member back from a kill or a cut asks before it campaigns, so it does not
            # depose a working leader (etcd 3.5 turns this on by default).
            "--pre-vote",
            "--logger", "zap", "--log-outputs", "stderr"]


def start_member(lab: Lab, i: int) -> int:
    """Start member i in its namespace (it must not run); returns its pid."""
    if member_pids(lab, i):
        raise LabError(f"etcd member {i} of lab '{lab.name}' already runs",
                       f"kill_etcd_member(lab, {i}) first")
    argv = member_argv(lab, i)
    argv[0] = need(ETCD)
    log = open(lab.run_dir / f"etcd{i}.log", "ab")
    with log:
        # `ip netns exec` execs etcd: the pid is etcd's. A session of its own keeps it out
        # of the caller's signals (Ctrl-C on `colo-lab up` must not take the cluster down).
        proc = netns.popen(member_ns(lab, i), argv, stdout=log, stderr=log,
                           stdin=subprocess.DEVNULL, start_new_session=True)
    (lab.run_dir / f"etcd{i}.pid").write_text(str(proc.pid))
    _reap_exited()
    _CHILDREN[proc.pid] = proc
    return proc.pid


def start(lab: Lab) -> None:
    """Start every member; wait_healthy() waits for the cluster."""
    for i in MEMBERS:
        start_member(lab, i)


def member_pids(lab: Lab, i: int) -> list[int]:
    return netns.pids(member_ns(lab, i))


def kill_member(lab: Lab, i: int, timeout: float = 10.0) -> None:
    """SIGKILL member i (a crash: no goodbye to its peers) and wait until it is gone."""
    for pid in member_pids(lab, i):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            child.wait(timeout)
    wait_until(lambda: not member_pids(lab, i), timeout, f"etcd member {i} to exit")


def _reap_exited() -> None:
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            del _CHILDREN[pid]


def all_pids(lab: Lab) -> list[int]:
    """etcd processes of this lab anywhere on the machine, namespace or not (by the cluster
    token on their command line): what must be gone after `Lab.down`."""
    token = f"colo-{lab.name}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"etcd") and token in argv:
            found.append(int(entry.name))
    return found


def etcdctl(lab: Lab, *args: str, host: str = "primary", timeout: float = 10.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """etcdctl against all members, from a host's namespace (over its `etcd0`)."""
    argv = ["ip", "netns", "exec", lab.hosts[host].ns, need(ETCDCTL),
            "--endpoints", ",".join(endpoints(lab)),
            "--dial-timeout", "1s", "--command-timeout", f"{max(1, int(timeout) - 1)}s", *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5,
                              check=False, env=dict(os.environ, ETCDCTL_API="3"))
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"etcdctl {' '.join(args)} from {host} hung past {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"etcdctl {' '.join(args)} from {host} failed: "
                       f"{err[-1] if err else f'exit {proc.returncode}'}")
    return proc


def healthy(lab: Lab, host: str = "primary") -> bool:
    """Every member answers `endpoint health` from this host's namespace."""
    return etcdctl(lab, "endpoint", "health", host=host, timeout=3, check=False).returncode == 0


def wait_healthy(lab: Lab, timeout: float = 30.0, host: str = "primary") -> None:
    last = ""

    def ok() -> bool:
        nonlocal last
        proc = etcdctl(lab, "endpoint", "health", host=host, timeout=3, check=False)
        last = (proc.stderr or proc.stdout).strip().replace("\n", " | ")
        return proc.returncode == 0

    def seen() -> str:
        tails = []
        for i in MEMBERS:
            log = lab.run_dir / f"etcd{i}.log"
            lines = log.read_text(errors="replace").splitlines()[-2:] if log.exists() else []
            tails.append(f"etcd{i} {'running' if member_pids(lab, i) else 'NOT running'}: "
                         + " ".join(lines)[-300:])
        return f"etcdctl said: {last[-400:]}; " + "; ".join(tails)

    wait_until(ok, timeout, f"the etcd cluster of lab '{lab.name}' to be healthy", every=0.2,
               detail=seen)


def status(lab: Lab) -> list[dict[str, Any]]:
    return [{"name": f"etcd{i}", "namespace": member_ns(lab, i),
             "endpoint": f"http://{member_ip(i)}:{CLIENT_PORT}",
             "running": bool(netns.exists(member_ns(lab, i)) and member_pids(lab, i))}
            for i in MEMBERS]


def _check_member(i: int) -> None:
    if i not in MEMBERS:
        raise LabError(f"no etcd member {i}", f"the lab's members are {list(MEMBERS)}")
