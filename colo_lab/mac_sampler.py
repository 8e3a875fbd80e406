"""Who serves: frames from the VM's MAC seen on each host's LAN port, per sampling interval.

At most one host may release the VM's output at any time. The LAN bridge sees every frame
a host sends toward the clients on that host's port (`p-pri`, `p-sec` in the lan
namespace), so counting the frames whose source is the VM's MAC on each port, per short
interval, shows split brain directly: an interval in which both ports carried such a frame
means that two VMs served at once.

usage (inside the lan namespace): python -m colo_lab.mac_sampler --mac M --ports p-pri,p-sec
       [--interval 0.05]
One JSON line per interval in which any port saw the MAC: {"t": S, "n": {"p-pri": 3}}.

`MacSampler` runs it in a lab's lan namespace and collects those lines (tests, chaos).
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import Any

from colo_lab.client import JsonLinesProcess

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # linux/if_packet.h: a frame the bridge sends out of this port


def _unbound() -> socket.socket:
    # Protocol 0: the socket takes no frames until bind names its port. Made with
    # ETH_P_ALL, it took every frame of the namespace until then, and a PVM frame on
    # p-pri read by p-sec's socket was a "two-serving" violation in the chaos campaign's
    # first interval (CI of 00767e7, t=6.88 s, just after PROTECTED, before any fault).
    return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)


def _bind(s: socket.socket, port: str) -> socket.socket:
    s.bind((port, ETH_P_ALL))  # Python puts the protocol in network order itself
    s.setblocking(False)
    return s


def _open(port: str) -> socket.socket:
    return _bind(_unbound(), port)


def counts_for(port: str, addr: tuple[Any, ...], data: bytes, mac: bytes) -> bool:
    """A frame read on `port`'s socket that the port received from its host and that
    comes from `mac`: not one the LAN bridge sent out of it, nor another port's."""
    return addr[0] == port and addr[2] != PACKET_OUTGOING and data[6:12] == mac


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="colo_lab.mac_sampler", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mac", required=True, help="the VM's MAC, aa:bb:cc:dd:ee:ff")
    p.add_argument("--ports", required=True, help="comma-separated LAN bridge ports")
    p.add_argument("--interval", type=float, default=0.05, help="seconds per sample")
    args = p.parse_args(argv)
    mac = bytes.fromhex(args.mac.replace(":", ""))
    socks = {port: _open(port) for port in args.ports.split(",")}
    by_fd = {s.fileno(): port for port, s in socks.items()}
    stop = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    start = time.monotonic()
    print(json.dumps({"ready": True}), flush=True)
    while not stop:
        end = time.monotonic() + args.interval
        counts: dict[str, int] = {}
        while not stop:
            left = end - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(by_fd), [], [], left)
            for fd in ready:
                port = by_fd[fd]
                while True:
                    try:
                        data, addr = socks[port].recvfrom(65536)
                    except BlockingIOError:
                        break
                    if counts_for(port, addr, data, mac):
                        counts[port] = counts.get(port, 0) + 1
        if counts:
            print(json.dumps({"t": round(end - start, 3), "n": counts}), flush=True)
    return 0


class MacSampler(JsonLinesProcess):
    """The sampler running in namespace `ns`; `samples` as they come, `both()` the
    intervals in which more than one port carried the VM's MAC."""

    def __init__(self, ns: str, mac: str, ports: list[str], interval: float = 0.05) -> None:
        self.samples: list[dict[str, Any]] = []
        self.ready = threading.Event()
        super().__init__(ns, "colo_lab.mac_sampler", "--mac", mac, "--ports", ",".join(ports),
                         "--interval", str(interval))

    def on_record(self, rec: dict[str, Any]) -> None:
        if rec.get("ready"):
            self.ready.set()
        else:
            self.samples.append(rec)

    def seen(self, port: str) -> int:
        """Frames from the MAC seen on `port` so far."""
        return sum(int(s["n"].get(port, 0)) for s in list(self.samples))

    def both(self) -> list[dict[str, Any]]:
        return [s for s in list(self.samples) if len(s["n"]) > 1]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._reader.join(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
