"""The packet socket when its link goes away (issue 15): a lost carrier or a deleted
interface is counted and logged once per burst, and reading goes on.

A child process in a throwaway namespace holds a real PacketSocket on one end of a veth
pair and reports, as JSON lines, what each step gave; the test drives the steps."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from colo_lab import netns
from colo_lab.proxy_harness import REPO, unique_name

pytestmark = pytest.mark.host

CHILD = r"""
import json, logging, socket, sys, time
from colo_proxy.kernel.packet_socket import ETH_P_IP, PacketSocket
logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s")
ps = PacketSocket("pa")
tx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
for line in sys.stdin:
    step = line.strip()
    if step == "send":
        tx.sendto(b"\x45" + bytes(19), ("pb", ETH_P_IP, 0, 0, b"\xff" * 6))
    got = []
    deadline = time.monotonic() + (5.0 if step == "send" else 0.2)
    while time.monotonic() < deadline and not (step == "send" and got):
        got += ps.receive()
        time.sleep(0.01)
    print(json.dumps({"step": step, "frames": len(got), "errors": ps.errors.total,
                      "in_burst": ps.errors.in_burst}), flush=True)
"""


class _Child:
    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.proc = netns.popen(ns, [sys.executable, "-c", CHILD], cwd=str(REPO),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def step(self, name: str) -> dict[str, Any]:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(name + "\n")
        stdin.flush()
        line = stdout.readline()
        assert line, f"the child ended: {self.finish()}"
        got: dict[str, Any] = json.loads(line)
        return got

    def finish(self) -> str:
        _, err = self.proc.communicate(timeout=10)
        return str(err)


@pytest.fixture
def child() -> Iterator[_Child]:
    ns = unique_name("pk")
    netns.add(ns)
    try:
        # No IPv6: its neighbour discovery would put frames of its own among the test's.
        netns.sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")
        netns.ip(ns, "link", "add", "pa", "type", "veth", "peer", "name", "pb")
        netns.ip(ns, "link", "set", "pa", "up")
        netns.ip(ns, "link", "set", "pb", "up")
        c = _Child(ns)
        yield c
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait(10)
    finally:
        netns.delete(ns)


def test_a_lost_link_is_counted_logged_once_and_read_on(child: _Child) -> None:
    assert child.step("send") == {"step": "send", "frames": 1, "errors": 0, "in_burst": False}
    # Carrier lost: the kernel reports ENETDOWN once on the bound socket.
    netns.ip(child.ns, "link", "set", "pa", "down")
    assert child.step("down") == {"step": "down", "frames": 0, "errors": 1, "in_burst": True}
    netns.ip(child.ns, "link", "set", "pa", "up")
    netns.ip(child.ns, "link", "set", "pa", "down")
    assert child.step("flap")["errors"] == 2  # the same burst: no second log line
    netns.ip(child.ns, "link", "set", "pa", "up")
    # The link is back: frames arrive again on the same socket, and the burst ends.
    assert child.step("send") == {"step": "send", "frames": 1, "errors": 2, "in_burst": False}
    # The interface is deleted under the socket: an error too, never an exception.
    netns.ip(child.ns, "link", "del", "pa")
    gone = child.step("deleted")
    assert gone["errors"] == 3 and gone["in_burst"], gone
    assert child.proc.poll() is None
    err = child.finish()
    warnings = [ln for ln in err.splitlines() if ln.startswith("WARNING packet socket on pa")]
    assert len(warnings) == 2, err
    assert "ENETDOWN" in warnings[0], err
