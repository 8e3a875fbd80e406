"""A stand-in primary proxy for a nested Xen host's dom0: the proxy's real service core,
fed packets by hand instead of by the kernel.

The real `colo-proxy primary` needs bcc (its eBPF programs on tc) and the dom0 kernel's
headers; the lab's dom0 has neither (docs/xen.md, "The nested Xen lab"). This runs what
the libxl bridge talks to, unchanged: `ControlServer` (the control socket, its status
socket and who may say what), `PrimaryProxy` with its comparator, and `serve`. Only the
two packet sources are stood in for: NFQUEUE (the PVM's output) and the packet socket
(the SVM's) become unix datagram sockets `CONTROL.pvm` and `CONTROL.svm`, one IPv4 packet
per datagram. Verdicts are logged, not applied: no packet of the guest passes through it.

So a divergence fed in as packets (`diverge`) takes the whole path of a real one on Xen:
comparator -> `checkpoint_request` -> bridge -> `DO_CHECKPOINT` -> libxl checkpoints ->
`COLO_CHECKPOINT` -> bridge -> `checkpoint_done` -> the held packet is released.

  python3 -m colo_lab.xen_proxy serve --control /run/colo/proxy.sock
  python3 -m colo_lab.xen_proxy diverge --control /run/colo/proxy.sock --port 81

It imports the standard library and the project only (the dom0 has python3 and no more).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from colo_lab.wait import WaitTimeout, wait_until
from colo_proxy.compare import CompareConfig
from colo_proxy.kernel.packet_socket import Frame
from colo_proxy.service import control_socket as control
from colo_proxy.service.loop import serve
from colo_proxy.service.primary import PrimaryProxy
from colo_proxy.service.settings import ProxySettings
from colo_proxy.wire.nfqueue_msgs import QueuedPacket

log = logging.getLogger("colo-xen-proxy")
ETH_P_IP = 0x0800
SYN, PSH, ACK = 0x02, 0x08, 0x10
# One connection as the two replicas answer it: their initial sequence numbers differ
# (the secondary proxy would rewrite them; here there is none), the client's is shared.
PVM_ISN, SVM_ISN, CLIENT_ISN = 1_000_000, 3_000_000_000, 77_000
VM, CLIENT = "10.99.0.10", "10.99.0.100"
# Long enough that only a checkpoint releases the held packet, never the compare timeout.
COMPARE_TIMEOUT_S = 600.0


def _bind(path: str) -> socket.socket:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)
    return s


def _datagrams(sock: socket.socket, limit: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < limit:
        try:
            got.append(sock.recv(65536))
        except BlockingIOError:
            break
    return got


class DatagramQueue:
    """NFQUEUE's place: each datagram is a queued PVM packet; verdicts are logged."""

    def __init__(self, path: str) -> None:
        self.sock = _bind(path)
        self.next_id = 1

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self, limit: int = 256) -> list[QueuedPacket]:
        out = []
        for data in _datagrams(self.sock, limit):
            out.append(QueuedPacket(self.next_id, ETH_P_IP, data, False, len(data), 0, 0))
            self.next_id += 1
        return out

    def decide(self, accept: Any, drop: Any = (), requeue: Any = ()) -> None:
        for what, ids in (("released", accept), ("dropped", drop), ("requeued", requeue)):
            if list(ids):
                log.info("PVM packets %s: %s", what, list(ids))

    def accept_all(self) -> None:
        log.info("PVM packets: all released")

    def drop_all(self) -> None:
        log.info("PVM packets: all dropped")


class DatagramSource:
    """The SVM packet socket's place: each datagram is an SVM frame (from L3 on)."""

    def __init__(self, path: str) -> None:
        self.sock = _bind(path)

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self, limit: int = 256) -> list[Frame]:
        return [Frame(ETH_P_IP, d) for d in _datagrams(self.sock, limit)]


def tcp4(seq: int, ack: int, flags: int, data: bytes = b"", *, sport: int = 80,
         dport: int = 40000) -> bytes:
    """An IPv4 packet with one TCP segment from the VM to the client. Checksums are left
    0: the comparator never reads them (offload makes them unreliable; comparator.py)."""
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, 5 << 4, flags,
                      502, 0, 0) + data
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, 6, 0,
                       socket.inet_aton(VM), socket.inet_aton(CLIENT)) + seg


def run_serve(path: str) -> int:
    ctl = control.ControlServer(path)
    pvm, svm = DatagramQueue(path + ".pvm"), DatagramSource(path + ".svm")
    proxy = PrimaryProxy(ProxySettings(compare=CompareConfig(compare_timeout=COMPARE_TIMEOUT_S)),
                         pvm, svm, notify=ctl.broadcast)
    log.info("stand-in primary proxy on %s (packets: %s.pvm, %s.svm)", path, path, path)
    serve(proxy, ctl, {"pvm": pvm, "svm": svm})
    return 0


def _status(path: str) -> dict[str, Any]:
    return control.request(control.status_path_for(path), {"type": "status"})


def run_diverge(path: str, port: int, timeout: float) -> int:
    """One connection whose replicas answer differently; returns once a checkpoint has
    released the PVM's held answer (exit 0) or after `timeout` (exit 1)."""
    before = _status(path)["checkpoints_done"]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    pvm, svm = path + ".pvm", path + ".svm"
    s.sendto(tcp4(PVM_ISN, CLIENT_ISN + 1, SYN | ACK, sport=port), pvm)
    s.sendto(tcp4(SVM_ISN, CLIENT_ISN + 1, SYN | ACK, sport=port), svm)
    t0 = time.monotonic()
    s.sendto(tcp4(PVM_ISN + 1, CLIENT_ISN + 1, ACK | PSH, b"hello", sport=port), pvm)
    s.sendto(tcp4(SVM_ISN + 1, CLIENT_ISN + 1, ACK | PSH, b"jello", sport=port), svm)
    st: dict[str, Any] = {}

    def released() -> bool:
        nonlocal st
        st = _status(path)
        return bool(st.get("checkpoints_done", 0) > before and st.get("held_packets") == 0)

    try:
        wait_until(released, timeout, "a checkpoint to release the held packet", every=0.05)
    except WaitTimeout:
        print(f"diverge: not released within {timeout:.0f} s: held_packets "
              f"{st.get('held_packets')}, checkpoints_done {st.get('checkpoints_done')}")
        return 1
    print(f"diverge: released by checkpoint {st['checkpoints_done']} "
          f"{time.monotonic() - t0:.2f} s after the divergent packets")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m colo_lab.xen_proxy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("serve", "diverge"))
    p.add_argument("--control", required=True, help="the control socket's path")
    p.add_argument("--port", type=int, default=80, help="diverge: the service port")
    p.add_argument("--timeout", type=float, default=60.0, help="diverge: seconds")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    Path(a.control).parent.mkdir(parents=True, exist_ok=True)
    if a.command == "serve":
        return run_serve(a.control)
    return run_diverge(a.control, a.port, a.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
