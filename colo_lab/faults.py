"""Faults a test injects into a lab: cut and heal a host's links, kill and restart etcd members.

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
    """Take a host's link down: link is control, forward, uplink or etcd."""
    _set(lab, host, link, "down")


def heal(lab: Lab, host: str, link: str) -> None:
    """Bring a host's link up again (addresses and routes come back with it)."""
    _set(lab, host, link, "up")


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
