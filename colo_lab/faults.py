"""Faults a test injects into a lab: cut and heal a host's links, reset the disk
replication's NBD connections, kill and restart etcd members.

A link is cut on the host's side (`ip link set <link> down` in the host's namespace), as
pulling that host's cable would: the other end loses its carrier too. The host's own
address on the cut link still answers from inside the host (Linux keeps its local route),
so `colo-lab status` and `pair.api` still reach that host's orchestrator; from anywhere
else it is gone.
"""

from __future__ import annotations

from colo_lab import etcd_net, netns
from colo_lab.errors import LabError
from colo_lab.lab import LINKS, Lab


def link_name(link: str) -> str:
    try:
        return LINKS[link]
    except KeyError:
        raise LabError(f"no link '{link}'", f"use one of {', '.join(LINKS)}") from None


def _set(lab: Lab, host: str, link: str, state: str) -> None:
    if host not in lab.hosts:
        raise LabError(f"no host '{host}'", f"use one of {', '.join(lab.hosts)}")
    netns.ip(lab.hosts[host].ns, "link", "set", link_name(link), state)


def cut(lab: Lab, host: str, link: str) -> None:
    """Take a host's link down: link is one of colo_lab.lab.LINKS."""
    _set(lab, host, link, "down")


def heal(lab: Lab, host: str, link: str) -> None:
    """Bring a host's link up again (addresses and routes come back with it)."""
    _set(lab, host, link, "up")


NBD_PORT = 10809  # the orchestrators' nbd_port in the lab (the default)


def cut_nbd(lab: Lab, port: int = NBD_PORT) -> list[int]:
    """Reset the primary's established NBD connections to the secondary's disk export, and
    every packet they send from now on (iptables in the secondary host's namespace).

    Only those connections: a new connection to the port is still accepted, as by a
    server whose session broke while it keeps listening. The primary's QEMU then gets an
    error on each write to the secondary's disk (`QUORUM_REPORT_BAD`), while its
    orchestrator's probe of the port still succeeds. Returns the client ports cut.
    """
    ns = lab.hosts["secondary"].ns
    out = netns.sh(ns, ["ss", "-Htn", "state", "established", f"( sport = :{port} )"])
    ports = sorted({int(line.split()[-1].rpartition(":")[2])
                    for line in out.splitlines() if line.strip()})
    if not ports:
        raise LabError(f"no established NBD connection to port {port} on the secondary",
                       "cut it while the pair is protected with a replicated disk")
    for p in ports:
        netns.sh(ns, ["iptables", "-w", "-I", "INPUT", "-p", "tcp", "--dport", str(port),
                      "--sport", str(p), "-j", "REJECT", "--reject-with", "tcp-reset"])
    return ports


def kill_etcd_member(lab: Lab, i: int) -> None:
    """SIGKILL etcd member i (1-3) and wait until it is gone."""
    etcd_net.kill_member(lab, i)


def start_etcd_member(lab: Lab, i: int) -> int:
    """Start etcd member i again (from its data directory: it rejoins); returns its pid."""
    return etcd_net.start_member(lab, i)


def etcd_endpoints(lab: Lab) -> list[str]:
    return etcd_net.endpoints(lab)


def etcdctl(lab: Lab, *args: str, host: str = "primary", timeout: float = 10.0) -> str:
    """Run etcdctl against the cluster from a host's namespace (the primary's unless told);
    its stdout, or a LabError with etcdctl's last line of error."""
    return etcd_net.etcdctl(lab, *args, host=host, timeout=timeout).stdout
