"""Stand-in "VMs": the lab's topology with a namespace per VM instead of a QEMU guest.

Same namespaces, bridges, links and addresses as `colo_lab.lab.Lab` (see its docstring),
but each host's `tapP`/`tapS` is one end of a veth whose other end (`eth0`, the VM's MAC
and IP) sits in a namespace `colo-<name>-pvm`/`-svm` running `colo_lab.standin_server`.
It starts in well under a second, so the proxy's system tests use it first; the same
tests then run once against real VMs. Unlike the real lab it also has IPv6 on the LAN
(`VM_IP6` in both VM namespaces, `CLIENT_IP6` in the client's), without duplicate address
detection so that the addresses are usable at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from colo_lab import netns
from colo_lab.errors import LabError
from colo_lab.lab import CLIENT_IP, LAN_PLEN, VM_IP, VM_MAC, Lab, host_links
from colo_lab.wait import wait_until

REPO = Path(__file__).resolve().parent.parent
VM_IP6 = "fd99::10"
CLIENT_IP6 = "fd99::100"
LAN_PLEN6 = 64


class Standin:
    def __init__(self, name: str) -> None:
        # Same names as the real lab (Lab() only names things; it touches nothing).
        lab = Lab(name)
        self.name, self.prefix, self.hosts = lab.name, lab.prefix, lab.hosts
        self.client_ns, self.lan_ns = lab.client_ns, lab.lan_ns
        self.vm_ns = {"primary": self.prefix + "pvm", "secondary": self.prefix + "svm"}
        self.servers: dict[str, subprocess.Popen[bytes]] = {}

    def up(self, *, secondary: bool = True) -> None:
        busy = netns.list_ns(self.prefix)
        if busy:
            raise LabError(f"stand-in lab '{self.name}' is busy ({', '.join(busy)})",
                           "call down() first or use another name")
        try:
            self._topology()
            self.start_server("primary")
            if secondary:
                self.start_server("secondary")
        except BaseException:
            self.down()
            raise

    def _topology(self) -> None:
        for ns in (self.client_ns, self.lan_ns, *(h.ns for h in self.hosts.values()),
                   *self.vm_ns.values()):
            netns.add(ns)
        netns.bridge(self.lan_ns, "lan", [])
        netns.veth(self.lan_ns, "p-client", self.client_ns, "eth0")
        netns.ip(self.lan_ns, "link", "set", "p-client", "master", "lan")
        netns.ip(self.client_ns, "addr", "add", f"{CLIENT_IP}/{LAN_PLEN}", "dev", "eth0")
        netns.ip(self.client_ns, "addr", "add", f"{CLIENT_IP6}/{LAN_PLEN6}", "dev", "eth0",
                 "nodad")
        for h in self.hosts.values():
            port = "p-" + h.role[:3]
            netns.veth(self.lan_ns, port, h.ns, "lan0")
            netns.ip(self.lan_ns, "link", "set", port, "master", "lan")
            vm = self.vm_ns[h.role]
            netns.veth(h.ns, h.tap, vm, "eth0")
            netns.ip(vm, "link", "set", "eth0", "down")
            netns.ip(vm, "link", "set", "eth0", "address", VM_MAC)
            netns.ip(vm, "addr", "add", f"{VM_IP}/{LAN_PLEN}", "dev", "eth0")
            netns.ip(vm, "addr", "add", f"{VM_IP6}/{LAN_PLEN6}", "dev", "eth0", "nodad")
            netns.ip(vm, "link", "set", "eth0", "up")
            netns.bridge(h.ns, "br0", ["lan0", h.tap])
            for key in ("net.bridge.bridge-nf-call-iptables",
                        "net.bridge.bridge-nf-call-ip6tables"):
                try:
                    netns.sysctl(h.ns, key, "0")
                except LabError:
                    pass
        host_links(self.hosts["primary"].ns, self.hosts["secondary"].ns)
        self.set_uplink("secondary", False)
        self._wait_ipv6([(self.client_ns, CLIENT_IP6),
                         *((ns, VM_IP6) for ns in self.vm_ns.values())])

    def _wait_ipv6(self, addrs: list[tuple[str, str]], timeout: float = 10.0) -> None:
        """Until each (namespace, address) is on its eth0 and usable (not tentative)."""
        pending = list(addrs)

        def usable() -> bool:
            pending[:] = [(ns, addr) for ns, addr in pending if not _ipv6_usable(ns, addr)]
            return not pending

        wait_until(usable, timeout, "the stand-in lab's IPv6 addresses to be usable",
                   every=0.02, detail=lambda: f"not yet: {pending}")

    def start_server(self, role: str, timeout: float = 10.0) -> None:
        old = self.servers.pop(role, None)
        if old is not None:
            old.kill()
            old.wait()
        proc = netns.popen(
            self.vm_ns[role], [sys.executable, "-m", "colo_lab.standin_server", "--port", "80"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(REPO),
        )
        self.servers[role] = proc
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = proc.stdout.readline()  # blocks until the server listens or dies
        if b"ready" not in line or time.monotonic() > deadline:
            raise LabError(f"stand-in server for {role} did not start")

    def set_uplink(self, role: str, up: bool) -> None:
        netns.ip(self.hosts[role].ns, "link", "set", "lan0", "up" if up else "down")

    def client(self, argv: list[str], *, timeout: float = 30.0, check: bool = True) -> str:
        return netns.sh(self.client_ns, argv, timeout=timeout, check=check)

    def down(self) -> list[str]:
        removed = []
        for proc in self.servers.values():
            proc.kill()
            proc.wait()
        self.servers.clear()
        for ns in netns.list_ns(self.prefix):
            netns.kill_all(ns)
            netns.delete(ns)
            removed.append(f"namespace {ns}")
        return removed

    def leftovers(self) -> list[str]:
        return [f"namespace {ns}" for ns in netns.list_ns(self.prefix)]


def _ipv6_usable(ns: str, addr: str) -> bool:
    out = netns.ip(ns, "-j", "-6", "addr", "show", "dev", "eth0")
    return any(a.get("local") == addr and not a.get("tentative") and not a.get("dadfailed")
               for link in json.loads(out or "[]") for a in link.get("addr_info", []))
