"""What the proxy changes on its host, and waits for (issue 17, "proxy on a real host"):
it waits for a tap that QEMU has not created yet, turns on netfilter only for its tap's
bridge, and puts that bridge back as it was when its last rule goes (an orderly stop, or
`cleanup` after a crash).

Each test runs the proxy's own kernel modules in a child process inside a namespace it
made (`ip netns exec`), so the host-wide sysctls checked are that namespace's."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from colo_lab import netns
from colo_lab.proxy_harness import REPO, in_ns, unique_name

pytestmark = pytest.mark.host

WAIT = r"""
import logging, sys
from colo_proxy.kernel import links
logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s", level=logging.INFO)
links.wait_for(["tapw", "fwdw"], logging.getLogger("t"), lambda n: " (test)", timeout=60)
"""

BRIDGE = r"""
import json, sys
from colo_proxy.kernel import netfilter as nf
def look(step):
    sysctls = [open("/proc/sys/net/bridge/" + k).read().strip()
               for k in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables")]
    print(json.dumps({"step": step, "br0": nf.bridge_netfilter("br0"),
                      "br1": nf.bridge_netfilter("br1"), "sysctls": sysctls,
                      "rules": len(nf.rules())}), flush=True)
look("before")
nf.install("tapa", 7, "one", bypass=False)
look("one")
nf.install("tapb", 8, "two", bypass=False)  # another VM's proxy, the same bridge
look("two")
print(json.dumps(nf.remove("one")), flush=True)
look("one stopped")
print(json.dumps(nf.remove("two")), flush=True)
look("two stopped")
nf.install("other", 9, "crashed", bypass=False)  # a proxy that then crashes:
print(json.dumps(nf.remove()), flush=True)  # `colo-proxy cleanup` removes every rule
look("cleaned up")
try:
    nf.install("lonely", 9, "three", bypass=False)
except RuntimeError as exc:
    print(json.dumps(str(exc)), flush=True)
"""


PROMISC = r"""
import json
from pyroute2 import IPRoute
from colo_proxy.kernel import datapath

def promisc(name):
    with IPRoute() as ipr:
        return bool(ipr.get_links(ipr.link_lookup(ifname=name)[0])[0]["flags"] & 0x100)

for fwd in ("fwdq", "fwdp"):
    look = {"fwd": fwd, "before": promisc(fwd)}
    with datapath.Datapath("secondary", tap="tapq", fwd=fwd, vm_mac="52:54:00:c0:10:01",
                           peer_mac="02:c0:10:21:00:01"):
        look["attached"] = promisc(fwd)
    look["after"] = promisc(fwd)
    print(json.dumps(look), flush=True)
"""


@pytest.fixture
def ns() -> Iterator[str]:
    name = unique_name("hc")
    netns.add(name)
    try:
        yield name
    finally:
        netns.delete(name)


def test_the_proxy_waits_for_its_tap_and_says_so(ns: str) -> None:
    child = netns.popen(ns, [sys.executable, "-c", WAIT], cwd=str(REPO), text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stderr is not None
        first = child.stderr.readline()  # blocks until the child has looked and said so
        assert first.startswith("WARNING waiting for tapw (test), fwdw (test) to appear"), first
        assert child.poll() is None
        # QEMU creating the tap (a veth end stands in for it), then the forward link.
        netns.ip(ns, "link", "add", "tapw", "type", "veth", "peer", "name", "tapw-peer")
        netns.ip(ns, "link", "add", "fwdw", "type", "veth", "peer", "name", "fwdw-peer")
        assert child.wait(timeout=30) == 0
        rest = child.stderr.read()
        assert "INFO tapw, fwdw appeared after" in rest, rest
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


PORT = r"""
import logging, sys
from colo_proxy.kernel import links
logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s", level=logging.INFO)
try:
    links.wait_for(["tapp"], logging.getLogger("t"), timeout=float(sys.argv[1]),
                   ports=["tapp"])
except TimeoutError as exc:
    print(exc, flush=True)
    sys.exit(3)
"""


def test_a_primarys_tap_is_waited_for_until_it_is_a_bridge_port(ns: str) -> None:
    # Xen: libxl's hotplug script renames the device model's tap to <vifname>-emu, then
    # adds it to the bridge; a primary proxy that took the tap before then failed to
    # queue its output ("not a port of a bridge").
    netns.ip(ns, "link", "add", "tapp", "type", "veth", "peer", "name", "tapp-peer")
    alone = netns.popen(ns, [sys.executable, "-c", PORT, "2"], cwd=str(REPO), text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, _ = alone.communicate(timeout=60)
    assert alone.returncode == 3 and "tapp did not appear in 2 s" in out, out
    child = netns.popen(ns, [sys.executable, "-c", PORT, "60"], cwd=str(REPO), text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stderr is not None
        first = child.stderr.readline()  # it has looked: the tap is there, on no bridge
        assert first.startswith("WARNING waiting for tapp to appear"), first
        netns.ip(ns, "link", "add", "brp", "type", "bridge")
        netns.ip(ns, "link", "set", "tapp", "master", "brp")
        assert child.wait(timeout=30) == 0
        assert "INFO tapp appeared after" in child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_only_the_taps_bridge_is_changed_and_an_orderly_stop_restores_it(ns: str) -> None:
    for bridge, ports in (("br0", ["tapa", "tapb"]), ("br1", ["other"])):
        for port in ports:
            netns.ip(ns, "link", "add", port, "type", "veth", "peer", "name", port + "-p")
        netns.bridge(ns, bridge, ports)
    netns.ip(ns, "link", "add", "lonely", "type", "veth", "peer", "name", "lonely-p")
    for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
        netns.sysctl(ns, key, "0")
    out = in_ns(ns, [sys.executable, "-c", BRIDGE], timeout=60)
    lines = [json.loads(ln) for ln in out.splitlines()]
    looks = {x["step"]: x for x in lines if isinstance(x, dict)}
    off, on = ["0", "0"], ["1", "1"]
    assert looks["before"] == {"step": "before", "br0": off, "br1": off, "sysctls": off,
                               "rules": 0}
    # Only the tap's bridge sends its frames through iptables; the host-wide sysctls,
    # and every other bridge, stay as they were.
    assert looks["one"] == {"step": "one", "br0": on, "br1": off, "sysctls": off, "rules": 2}
    assert looks["two"]["br0"] == on and looks["two"]["rules"] == 4
    # The first proxy stops: the other still queues from br0, which stays on.
    assert "bridge br0: netfilter options stay on (another colo-proxy instance queues " \
           "from it)" in lines[3]
    assert looks["one stopped"]["br0"] == on and looks["one stopped"]["rules"] == 2
    # The last one stops: br0 as it was before the first.
    assert "bridge br0: nf_call_iptables=0, nf_call_ip6tables=0 again" in lines[5]
    assert looks["two stopped"] == {"step": "two stopped", "br0": off, "br1": off,
                                    "sysctls": off, "rules": 0}
    # After a crash `cleanup` puts the bridge back too: the rules carried how it was.
    assert "bridge br1: nf_call_iptables=0, nf_call_ip6tables=0 again" in lines[7]
    assert looks["cleaned up"] == {"step": "cleaned up", "br0": off, "br1": off,
                                   "sysctls": off, "rules": 0}
    # A tap on no bridge: the error names the fix, and nothing was installed.
    assert lines[-1].startswith("lonely is not a port of a bridge") and \
        "ip link set lonely master BRIDGE" in lines[-1]


def test_the_forward_link_takes_every_frame_while_attached(ns: str) -> None:
    # The forward link's frames keep their addresses (for the VMs' MAC, for a client's):
    # a real NIC's address filter drops them unless it is promiscuous (run AU, the nested
    # Xen dom0s' NICs). An orderly stop ends only the promiscuous mode it began.
    for dev in ("tapq", "fwdq", "fwdp"):
        netns.ip(ns, "link", "add", dev, "type", "veth", "peer", "name", dev + "-p")
    netns.ip(ns, "link", "set", "fwdp", "promisc", "on")  # an operator's, or a capture's
    out = in_ns(ns, [sys.executable, "-c", PROMISC], timeout=300)
    looks = [json.loads(ln) for ln in out.splitlines()]
    assert looks == [
        {"fwd": "fwdq", "before": False, "attached": True, "after": False},
        {"fwd": "fwdp", "before": True, "attached": True, "after": True}]
