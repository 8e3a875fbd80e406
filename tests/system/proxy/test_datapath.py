"""The datapath under checksum offload on/off with GSO, and bad frames from both VMs."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from colo_lab.proxy_harness import Orchestrator, ProxyPair, in_ns, nstat
from colo_lab.standin import Standin
from colo_lab.wait import wait_until
from tests.support.packets import ETH_IP4, ether, ip4, udp

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


def _frames() -> list[bytes]:
    def dgram(**ip: int) -> bytes:
        return udp(b"datagram", sport=5000, dport=6000, **ip)

    return [
        ether(dgram(frag=0x2000)),  # first fragment
        ether(ip4(17, b"tail-of-fragment", frag=3)),  # later fragment
        ether(dgram(), vlan=42),  # VLAN-tagged
        ether(udp(b"datagram", sport=5000, dport=6000, v6=True)),  # IPv6 UDP
        ether(ip4(6, b"\x00\x50" + b"\x00" * 5)),  # TCP header cut short
        ether(dgram(total=900)),  # total length past the frame
        ether(b"\x45\x00", ethertype=ETH_IP4),  # truncated IP header
        ether(b"local experimental ethertype", ethertype=0x88B5),
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
