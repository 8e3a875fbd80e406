"""colo_lab.mac_sampler sees which LAN ports carry the VM's MAC, and when two do at once."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from colo_lab import netns
from colo_lab.mac_sampler import MacSampler
from colo_lab.wait import wait_until

pytestmark = pytest.mark.host
MAC = "52:54:00:c0:10:01"
FRAME = bytes.fromhex("ffffffffffff" + MAC.replace(":", "")) + b"\x08\x00" + b"x" * 50
OTHER = bytes.fromhex("ffffffffffff" + "525400aaaaaa") + b"\x08\x00" + b"x" * 50


def _send(ns: str, port: str, frame: bytes) -> None:
    code = (f"import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); "
            f"s.bind(({port!r}, 0)); s.send({frame!r})")
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], check=True,
                   timeout=30)


def test_frames_from_two_ports_in_one_interval_are_reported() -> None:
    ns = "colo-tms" + uuid.uuid4().hex[:6]
    netns.add(ns)
    try:
        for port in ("p-pri", "p-sec"):
            netns.ip(ns, "link", "add", port, "type", "veth", "peer", "name", port + "x")
            netns.ip(ns, "link", "set", port, "up")
            netns.ip(ns, "link", "set", port + "x", "up")
        sampler = MacSampler(ns, MAC, ["p-pri", "p-sec"], interval=0.5)
        try:
            wait_until(sampler.ready.is_set, 20, "the sampler to listen")
            _send(ns, "p-prix", FRAME)
            _send(ns, "p-prix", OTHER)  # another MAC: not counted
            wait_until(lambda: sampler.seen("p-pri") >= 1, 10, "the primary's frame")
            assert sampler.seen("p-pri") == 1 and sampler.seen("p-sec") == 0
            assert sampler.both() == []

            def both() -> bool:
                _send(ns, "p-prix", FRAME)
                _send(ns, "p-secx", FRAME)
                return bool(sampler.both())
            wait_until(both, 20, "an interval with the MAC on both ports")
        finally:
            sampler.stop()
    finally:
        netns.delete(ns)
