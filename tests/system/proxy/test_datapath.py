"""The datapath under checksum offload on/off with GSO, and bad frames from both VMs."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import sys

import pytest

from colo_lab.lab import VM_MAC
from colo_lab.proxy_harness import Orchestrator, ProxyPair, in_ns, nstat
from colo_lab.standin import Standin
from colo_lab.wait import wait_until

pytestmark = pytest.mark.system
OFFLOADS = ("tx", "rx", "tso", "gso", "gro")


@pytest.mark.parametrize("offload", ["on", "off"])
def test_rewrite_keeps_checksums_right(standin: Standin, pair: ProxyPair, offload: str) -> None:
    if shutil.which("ethtool") is None:
        pytest.skip("ethtool is not installed")
    ends = [(standin.client_ns, "eth0"), *((ns, "eth0") for ns in standin.vm_ns.values()),
            *((h.ns, h.tap) for h in standin.hosts.values())]
    for ns, dev in ends:
        args = [a for o in OFFLOADS for a in (o, offload)]
        in_ns(ns, ["ethtool", "-K", dev, *args], check=False)
    # Bulk (GSO super-packets when offload is on) and many small exchanges.
    url = "http://10.99.0.10/blob/8388608"
    out = in_ns(standin.client_ns, ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}",
                                    url])
    assert out == "8388608"
    res = json.loads(in_ns(standin.client_ns, [sys.executable, "-m", "colo_lab.loadgen",
                                               "check", "--conns", "5", "--requests", "200"]))
    assert res["errors"] == []
    assert pair.status("primary")["checkpoint_requests"] == {}
    sec = pair.status("secondary")["datapath"]
    assert sec["ack_rewrites"] > 0
    for ns in (standin.client_ns, standin.vm_ns["secondary"]):
        errs = nstat(ns, "TcpInCsumErrors", "TcpExtTCPACKSkippedSeq", "TcpExtTSEcrRejected")
        assert errs.get("TcpInCsumErrors", 0) == 0, (ns, errs)
        assert errs.get("TcpExtTSEcrRejected", 0) == 0, (ns, errs)


def _ip4(proto: int, payload: bytes, *, frag: int = 0, src: str = "10.99.0.10",
         tot: int | None = None) -> bytes:
    tot = 20 + len(payload) if tot is None else tot
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, tot, 7, frag, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton("10.99.0.100"))
    csum = _csum(hdr)
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + payload


def _csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _frames() -> list[bytes]:
    mac = bytes.fromhex(VM_MAC.replace(":", ""))
    client = b"\x02" * 6  # the frames go out as broadcast/unknown unicast; fine for the test
    eth = lambda t: client + mac + struct.pack("!H", t)  # noqa: E731
    udp = struct.pack("!HHHH", 5000, 6000, 16, 0) + b"datagram"
    ip6 = (struct.pack("!IHBB", 6 << 28, len(udp), 17, 64)
           + socket.inet_pton(socket.AF_INET6, "fd00::10")
           + socket.inet_pton(socket.AF_INET6, "fd00::64") + udp)
    return [
        eth(0x0800) + _ip4(17, udp, frag=0x2000),  # first fragment
        eth(0x0800) + _ip4(17, b"tail-of-fragment", frag=3),  # later fragment
        eth(0x8100) + struct.pack("!HH", 42, 0x0800) + _ip4(17, udp),  # VLAN-tagged
        eth(0x86DD) + ip6,  # IPv6 UDP
        eth(0x0800) + _ip4(6, b"\x00\x50" + b"\x00" * 5),  # TCP header cut short
        eth(0x0800) + _ip4(17, udp, tot=900),  # total length past the frame
        eth(0x0800) + b"\x45\x00",  # truncated IP header
        eth(0x88B5) + b"local experimental ethertype",
    ]


SEND = ("import socket,sys,json\n"
        "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW); s.bind(('eth0',0))\n"
        "for f in json.loads(sys.argv[1]): s.send(bytes.fromhex(f))\n")


def test_bad_frames_from_both_vms_never_crash_the_proxy(standin: Standin,
                                                        pair: ProxyPair) -> None:
    orch = Orchestrator(pair.sock("primary"))
    try:
        frames = json.dumps([f.hex() for f in _frames()])
        for role in ("primary", "secondary"):
            in_ns(standin.vm_ns[role], [sys.executable, "-c", SEND, frames])

        def counted() -> dict[str, int] | None:
            st = pair.status("primary")
            c = st["compare"]
            seen = c["fragments"] + c["parse_errors"] + c["other_protocol"] + st["svm_non_ip"]
            return c if seen >= 3 else None

        c = wait_until(counted, 10, "the bad frames to be counted")
        print("bad-frame counters:", {k: v for k, v in c.items() if v})
        assert c["internal_errors"] == 0
        # Whatever the engine's policy asked for, a checkpoint settles it, and the proxies
        # still serve.
        for _ in orch.taken():
            pair.tell("checkpoint_done")
        assert in_ns(standin.client_ns, ["curl", "-sS", "-m", "10",
                                         "http://10.99.0.10/health"]) == "ok\n"
        assert pair.status("secondary")["type"] == "status"
    finally:
        orch.close()
