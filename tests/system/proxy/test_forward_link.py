"""The forward link trusts nothing a LAN host (or another device on the link) can send.

The secondary learns the PVM's ISNs and carried flows from the forward link, and the
primary releases the PVM's output when the forward link brings its twin. A host on the
clients' LAN (here a namespace on the LAN bridge) forges each of those; the proxies must
change nothing, count the forgeries, and go on serving the genuine traffic.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from colo_lab import netns
from colo_lab.lab import CLIENT_IP, FWD_MACS, VM_IP, VM_MAC
from colo_lab.proxy_harness import RUN_ROOT, Orchestrator, ProxyPair, in_ns
from colo_lab.standin import Standin
from colo_lab.wait import wait_until
from colo_proxy.kernel.datapath import mac_bytes
from colo_proxy.service import control_socket as control
from colo_proxy.service import handover_file
from colo_proxy.wire import carry, handover
from colo_proxy.wire.offset import Offset
from tests.support.packets import ACK, PSH, SYN, ether, tcp

EVIL_MAC = "02:66:66:66:66:66"
EVIL, VM, PRI_FWD, SEC_FWD = (mac_bytes(m) for m in (EVIL_MAC, VM_MAC, FWD_MACS["primary"],
                                                       FWD_MACS["secondary"]))
BCAST = b"\xff" * 6

# Frames out of a namespace's interface: argv[1] the device, argv[2] a JSON list of hex.
SEND = ("import socket,sys,json\n"
        "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW); s.bind((sys.argv[1],0))\n"
        "for f in json.loads(sys.argv[2]): s.send(bytes.fromhex(f))\n")

# One keep-alive connection from the client: prints its port, then for each line on stdin
# sends GET /health and prints the whole response (hex) on one line.
CLIENT = f"""
import socket, sys
s = socket.create_connection(({VM_IP!r}, 80), timeout=60, source_address=({CLIENT_IP!r}, 0))
print(s.getsockname()[1], flush=True)
for _ in sys.stdin:
    s.sendall(b"GET /health HTTP/1.1\\r\\nHost: vm\\r\\n\\r\\n")
    buf = b""
    while not buf.endswith(b"ok\\n"):
        buf += s.recv(4096)
    print(buf.hex(), flush=True)
"""

# The PVM's TCP payload toward the client's port (argv[1]) as it leaves the PVM (tapP),
# until it ends with "ok\n": one JSON line [[seq, ack, payload hex], ...].
CAPTURE = """
import json, socket, struct, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("tapP", 0))
print("ready", flush=True)
segs, data = [], b""
while not data.endswith(b"ok\\n"):
    f, addr = s.recvfrom(65536)
    if addr[2] == socket.PACKET_OUTGOING or f[12:14] != b"\\x08\\x00" or f[23] != 6:
        continue
    ip = f[14:]
    ihl, total = (ip[0] & 15) * 4, struct.unpack_from("!H", ip, 2)[0]
    seg = ip[ihl:total]
    sport, dport, seq, ack = struct.unpack_from("!HHII", seg)
    payload = seg[(seg[12] >> 4) * 4:]
    if sport == 80 and dport == port and payload:
        segs.append([seq, ack, payload.hex()])
        data += payload
print(json.dumps(segs), flush=True)
"""


def _send(ns: str, dev: str, frames: list[bytes]) -> None:
    in_ns(ns, [sys.executable, "-c", SEND, dev, json.dumps([f.hex() for f in frames])])


class KeepAlive:
    """The client's one connection (CLIENT above)."""

    def __init__(self, lab: Standin) -> None:
        self.proc = netns.popen(lab.client_ns, [sys.executable, "-c", CLIENT],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.port = int(self._line(10))

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"no answer from the client within {timeout} s")
        return self.proc.stdout.readline().decode().strip()

    def ask(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"\n")
        self.proc.stdin.flush()

    def answered(self) -> bool:
        assert self.proc.stdout is not None
        return bool(select.select([self.proc.stdout], [], [], 0)[0])

    def answer(self, timeout: float = 20) -> bytes:
        return bytes.fromhex(self._line(timeout))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def evil(standin: Standin) -> str:
    """A host on the clients' LAN (its namespace goes with the stand-in lab's)."""
    ns = standin.prefix + "evil"
    netns.add(ns)
    netns.veth(standin.lan_ns, "p-evil", ns, "eth0", b_mac=EVIL_MAC)
    netns.ip(standin.lan_ns, "link", "set", "p-evil", "master", "lan")
    return ns


def _flow_offset(pair: ProxyPair, port: int) -> dict[str, Any]:
    offs = control.request(pair.sock("secondary"), {"type": "status", "offsets": True})
    mine = [o for o in offs["offsets"] if o["peer"] == f"{CLIENT_IP}:{port}"]
    assert len(mine) == 1, offs
    return dict(mine[0])


def _old_announcement(port: int, offset: int) -> bytes:
    """An announcement as the datapath took them until now, unauthenticated: "COLO",
    version 1, the flow (addresses v4-mapped), offset, ts_offset, ts_valid."""
    def v4(ip: str) -> bytes:
        return bytes(10) + b"\xff\xff" + bytes(int(x) for x in ip.split("."))

    return (b"COLO" + struct.pack("!I", 1) + v4(VM_IP) + v4(CLIENT_IP)
            + struct.pack("!HHIII", 80, port, offset, 0, 0))


def test_a_lan_host_can_neither_teach_offsets_nor_carry_flows(
        standin: Standin, pair: ProxyPair, evil: str) -> None:
    orch = Orchestrator(pair.sock("primary"))
    client = KeepAlive(standin)
    try:
        client.ask()
        assert client.answer().endswith(b"ok\n")
        before = _flow_offset(pair, client.port)
        assert before["complete"], before
        pri0 = pair.status("primary")["datapath"]
        # A SYN-ACK "of the PVM" with another ISN: the VM's MAC as source, to everyone.
        synack = tcp(before["pvm_isn"] + 10_000, 1, SYN | ACK, dport=client.port)
        # A carried-flow announcement that would shift the client's connection. (The
        # SYN-ACK last: from then on the LAN bridge takes the VM's MAC to be the forger's.)
        forged = [ether(_old_announcement(client.port, 4242), src=EVIL, dst=VM,
                        ethertype=carry.ETH_P_CARRY),
                  ether(_old_announcement(client.port, 4242), src=EVIL, dst=BCAST,
                        ethertype=carry.ETH_P_CARRY),
                  ether(synack, src=VM, dst=BCAST)]
        _send(evil, "eth0", forged)

        def changed() -> bool:
            off, sec = _flow_offset(pair, client.port), pair.status("secondary")
            return bool(sec["carried_flows"] or (off["complete"], off["pvm_isn"]) !=
                        (True, before["pvm_isn"]))

        def refused_or_changed() -> bool:
            dp = pair.status("primary")["datapath"]
            return dp.get("mirror_refused", 0) >= pri0.get("mirror_refused", 0) + 3 or changed()

        wait_until(refused_or_changed, 10, "the mirror to refuse the three frames",
                   detail=lambda: f"primary datapath {pair.status('primary')['datapath']}")
        # What the secondary learned must not change: it would reset the offset of the
        # connection (its next request would then wait for a twin the SVM never sends),
        # or shift it by a carried offset after a failover.
        after, sec = _flow_offset(pair, client.port), pair.status("secondary")
        assert (after["complete"], after["pvm_isn"], after["offset"]) == \
            (True, before["pvm_isn"], before["offset"]), (before, after)
        assert sec["carried_flows"] == 0, sec
        pri = pair.status("primary")["datapath"]
        assert pri["mirror_refused"] == pri0["mirror_refused"] + 3
        # The bridges learned the VM's MAC on the forger's port (a switch with port
        # security would not have): forget it, so that the client reaches the VM again.
        netns.sh(standin.lan_ns, ["bridge", "fdb", "del", VM_MAC, "dev", "p-evil", "master"],
                 check=False)
        h = standin.hosts["primary"]
        netns.sh(h.ns, ["bridge", "fdb", "del", VM_MAC, "dev", "lan0", "master"], check=False)
        # The genuine connection goes on in step, without a checkpoint.
        client.ask()
        assert client.answer().endswith(b"ok\n")
        assert orch.taken() == []
        assert _flow_offset(pair, client.port)["offset"] == before["offset"]
        assert pair.status("secondary")["datapath"]["fwd_foreign"] == 0  # none got that far
    finally:
        client.close()
        orch.close()


@pytest.mark.parametrize("pair", [["--compare-timeout", "60"]], indirect=True)
def test_a_forged_twin_releases_nothing(standin: Standin, pair: ProxyPair, evil: str) -> None:
    """With the SVM's service stopped, the PVM's answer waits for its twin. A forged twin
    from the LAN never reaches the comparator (the mirror brings it to the SVM's side
    only); one sent on the forward link from another MAC than the secondary host's is
    kept from the comparator and counted. Then the SVM answers and the client gets it."""
    orch = Orchestrator(pair.sock("primary"))
    client = KeepAlive(standin)
    svm = standin.servers["secondary"]
    capture = None
    try:
        client.ask()
        assert client.answer().endswith(b"ok\n")
        flow = _flow_offset(pair, client.port)
        os.kill(svm.pid, signal.SIGSTOP)
        capture = netns.popen(standin.hosts["primary"].ns,
                              [sys.executable, "-c", CAPTURE, str(client.port)],
                              stdout=subprocess.PIPE)
        assert capture.stdout is not None and capture.stdout.readline().strip() == b"ready"
        client.ask()
        segs = json.loads(capture.stdout.readline())
        # The twin the SVM would send: the same bytes at the same place in its own space.
        seq, ack = segs[0][0], segs[0][1]
        payload = b"".join(bytes.fromhex(s[2]) for s in segs)
        twin = tcp(seq - flow["pvm_isn"] + flow["svm_isn"], ack, PSH | ACK, payload,
                   dport=client.port)
        held = wait_until(lambda: (st := pair.status("primary"))["held_packets"] > 0 and st,
                          10, "the PVM's answer to be held")
        assert not client.answered(), held
        _send(evil, "eth0", [ether(twin, src=EVIL, dst=VM), ether(twin, src=EVIL, dst=BCAST)])
        # On the forward link, as any device there could.
        _send(standin.hosts["secondary"].ns, "fwd0", [ether(twin, src=EVIL, dst=PRI_FWD),
                                                      ether(twin, src=VM, dst=PRI_FWD)])

        def counted_or_released() -> bool:
            dp = pair.status("primary")["datapath"]
            return client.answered() or dp.get("svm_foreign", 0) >= 2

        wait_until(counted_or_released, 10, "the forged twins to be counted")
        st = pair.status("primary")
        assert not client.answered(), "a forged twin released the PVM's answer"
        # (The PVM retransmits its unacknowledged answer meanwhile: more may be held.)
        assert st["compare"]["released_packets"] == held["compare"]["released_packets"], st
        assert st["held_packets"] >= held["held_packets"], st
        assert st["datapath"]["svm_foreign"] == 2, st["datapath"]
        # The genuine twin releases it.
        os.kill(svm.pid, signal.SIGCONT)
        assert client.answer() == payload
        assert orch.taken() == []
    finally:
        os.kill(svm.pid, signal.SIGCONT)
        if capture is not None:
            capture.kill()
            capture.wait()
        client.close()
        orch.close()


@pytest.fixture
def carried_pair(standin: Standin) -> Iterator[ProxyPair]:
    """A proxy pair whose primary starts with one flow carried over a role swap (the file
    the secondary-role proxy of its host left at the failover)."""
    p = ProxyPair(standin, RUN_ROOT / standin.name)
    handover_file.path_for(p.sock("primary")).write_text(handover.encode([CARRIED]))
    with p.running():
        yield p


CARRIED = Offset(VM_IP, 80, CLIENT_IP, 45000, 1, 1001, 1000, True, 5)


def test_carried_flows_reach_the_secondary_only_authenticated(
        standin: Standin, carried_pair: ProxyPair) -> None:
    pair = carried_pair
    assert pair.status("primary")["carried_flows"] == 1

    def heard() -> dict[str, Any] | None:
        st: dict[str, Any] = pair.status("secondary")
        return st if st["carried_flows"] == 1 and st["carry"]["accepted"] >= 1 else None

    sec = wait_until(heard, 10, "the secondary to hear the carried flow", every=0.1)
    assert sec["carry"]["refused"] == {}, sec["carry"]
    # Forged announcements of another flow on the forward link: from another MAC (the
    # secondary's datapath drops them), and from the primary's MAC but without the pair's
    # key, or in the old unauthenticated format (its proxy refuses them).
    other = Offset(VM_IP, 80, CLIENT_IP, 45001, 1, 2001, 2000, True, None)
    nonce = bytes(16)
    wrong_key = carry.announcement(b"not the pair's key, 32 bytes...", nonce, other)
    pri_ns = standin.hosts["primary"].ns
    fwd0 = sec["datapath"]["fwd_foreign"]
    _send(pri_ns, "fwd0", [ether(wrong_key, src=EVIL, dst=SEC_FWD, ethertype=carry.ETH_P_CARRY),
                           ether(wrong_key, src=PRI_FWD, dst=SEC_FWD,
                                 ethertype=carry.ETH_P_CARRY),
                           ether(_old_announcement(45001, 2000), src=PRI_FWD, dst=SEC_FWD,
                                 ethertype=carry.ETH_P_CARRY)])

    def refused() -> dict[str, Any] | None:
        st: dict[str, Any] = pair.status("secondary")
        r = st["carry"]["refused"]
        return st if r.get("tag", 0) >= 1 and r.get("version", 0) >= 1 else None

    sec = wait_until(refused, 10, "the secondary to refuse the forged announcements")
    assert sec["datapath"]["fwd_foreign"] == fwd0 + 1
    assert sec["carried_flows"] == 1  # the genuine one only
    # A forged challenge makes the primary announce nothing: refused as well.
    sent = pair.status("primary")["carry"]["sent"]
    _send(standin.hosts["secondary"].ns, "fwd0", [ether(
        carry.challenge(b"not the pair's key, 32 bytes...", bytes(16)), src=SEC_FWD,
        dst=PRI_FWD, ethertype=carry.ETH_P_CARRY)])

    def challenge_refused() -> dict[str, Any] | None:
        st: dict[str, Any] = pair.status("primary")["carry"]
        return st if st["refused"].get("tag", 0) >= 1 else None

    pri = wait_until(challenge_refused, 10, "the primary to refuse the forged challenge")
    # Its answers to the genuine challenges go on (one flow each round).
    assert pri["sent"] >= sent and pri["accepted"] >= 1
