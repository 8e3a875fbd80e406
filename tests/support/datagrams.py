"""Capture and inject UDP datagrams inside a lab host's namespace, for forged-heartbeat tests.

Run in a namespace (`ip netns exec NS python -m tests.support.datagrams ...`):

    capture --dev ctl0 --src 10.99.1.1 --dport 7410 [--timeout 5]
        the payload of the next UDP datagram from --src to --dport seen on --dev, as one
        JSON line {"hex": ...} (a packet socket: it sees the datagram as the peer sent it)
    send --src 10.99.1.7 --sport 7410 --dst 10.99.1.2 --dport 7410 --hex HEX [--hex ...]
        each payload as a UDP datagram with exactly that source address and port: a raw
        socket writes the IP header itself, so the source may be the peer's own heartbeat
        address (its port taken by its orchestrator) or an address no host has. A raw
        socket does not fragment: a payload longer than RAW_MAX goes through a UDP socket
        bound to the (non-local) source instead, which the kernel fragments; that source
        must then be free, so not the peer's heartbeat address

`capture` and `send` are the functions behind them, `in_ns` runs them in a namespace.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

ETH_P_IP = 0x0800
IP_TRANSPARENT = 19  # linux/in.h: bind to and send from an address this host does not own
RAW_MAX = 1400  # payload bytes a raw datagram carries within the lab links' MTU (1500)
REPO = Path(__file__).resolve().parents[2]


def capture(dev: str, src: str, dport: int, timeout: float) -> bytes:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    try:
        s.bind((dev, 0))
        want = socket.inet_aton(src)
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            pkt = s.recv(65536)
            ihl = (pkt[0] & 0x0F) * 4
            if len(pkt) < ihl + 8 or pkt[9] != socket.IPPROTO_UDP or pkt[12:16] != want:
                continue
            _, dst_port, length, _ = struct.unpack("!HHHH", pkt[ihl:ihl + 8])
            if dst_port == dport:
                return pkt[ihl + 8:ihl + length]
    finally:
        s.close()
    raise TimeoutError(f"no UDP datagram from {src} to port {dport} on {dev} in {timeout} s")


def send(src: str, sport: int, dst: str, dport: int, payloads: list[bytes]) -> None:
    big = [p for p in payloads if len(p) > RAW_MAX]
    if big:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            u.bind((src, sport))
            for data in big:
                u.sendto(data, (dst, dport))
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL
    try:
        for data in payloads:
            if len(data) > RAW_MAX:
                continue
            udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data  # no checksum
            # Linux fills in the total length, the id and the header checksum.
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, socket.IPPROTO_UDP, 0,
                             socket.inet_aton(src), socket.inet_aton(dst))
            s.sendto(ip + udp, (dst, 0))
    finally:
        s.close()


def in_ns(ns: str, *args: str, timeout: float = 20.0) -> str:
    """Run this module with `args` in namespace `ns`; its stdout."""
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m",
                           "tests.support.datagrams", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"datagrams {args[0]} in {ns} failed: {proc.stderr.strip()}")
    return proc.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests.support.datagrams", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture")
    c.add_argument("--dev", required=True)
    c.add_argument("--src", required=True)
    c.add_argument("--dport", type=int, required=True)
    c.add_argument("--timeout", type=float, default=5.0)
    s = sub.add_parser("send")
    s.add_argument("--src", required=True)
    s.add_argument("--sport", type=int, required=True)
    s.add_argument("--dst", required=True)
    s.add_argument("--dport", type=int, required=True)
    s.add_argument("--hex", action="append", required=True, help="a payload (repeatable)")
    args = p.parse_args(argv)
    if args.cmd == "capture":
        print(json.dumps({"hex": capture(args.dev, args.src, args.dport, args.timeout).hex()}))
    else:
        send(args.src, args.sport, args.dst, args.dport, [bytes.fromhex(h) for h in args.hex])
    return 0


if __name__ == "__main__":
    sys.exit(main())
