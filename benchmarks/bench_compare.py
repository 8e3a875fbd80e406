"""Throughput and memory of the comparison core (a benchmark, not a test).

Prints matched 1448-byte TCP segment pairs per second through ``Comparator.packet`` (PVM
segment, then its SVM twin, as the proxy sees them in steady state) and the memory per idle
flow with 100,000 flows in the table, measured in the same run. Target (issue 3): at least
300,000 pairs/s on one core, well under 1 KiB per idle flow.

    .venv/bin/python benchmarks/bench_compare.py [--pairs N] [--flows N] [--conns N]

The core runs compiled by mypyc when scripts/build-compare has built it for these sources
(the bootstrap does); the benchmark then also measures the interpreted modules in a child
process (COLO_COMPARE_PURE=1) in the same run and prints the ratio.
"""

from __future__ import annotations

import argparse
import gc
import os
import struct
import subprocess
import sys
import time
import tracemalloc

from colo_proxy.compare import COMPILED, Comparator, CompareConfig, Side

MSS = 1448
SYN, ACK, PSH = 0x02, 0x10, 0x08


def tcp_packet(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
) -> bytes:
    """An IPv4 TCP packet with a 12-byte timestamp option, like Linux sends."""
    options = b"\x01\x01\x08\x0a" + bytes(8)
    tcp = (
        struct.pack(
            "!HHIIBBHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            (5 + len(options) // 4) << 4,
            flags,
            502,
            0,
            0,
        )
        + options
    )
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6, 0, src, dst
    )
    return ip + tcp + payload


def bench_pairs(pairs: int, conns: int) -> float:
    """Pairs per second for ``pairs`` segment pairs spread round-robin over ``conns`` flows."""
    cmp = Comparator(CompareConfig(max_flow_packets=1 << 20))
    vm, client = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    p_isn, s_isn, c_isn = 1_000_000, 3_000_000_000, 77
    for c in range(conns):
        port = 40000 + c
        cmp.packet(
            Side.PRIMARY, -1, tcp_packet(vm, client, 80, port, p_isn, c_isn + 1, SYN | ACK), 0.0
        )
        cmp.packet(
            Side.SECONDARY, -1, tcp_packet(vm, client, 80, port, s_isn, c_isn + 1, SYN | ACK), 0.0
        )
    payload = bytes(range(256)) * 6
    payload = payload[:MSS]
    # Prebuilt packets: building them is not the comparator's cost. Each flow sends
    # pairs/conns segments; equal contents per offset are fine for the comparison cost.
    per = pairs // conns
    prim: list[bytes] = []
    sec: list[bytes] = []
    for i in range(per):
        for c in range(conns):
            port = 40000 + c
            prim.append(
                tcp_packet(vm, client, 80, port, p_isn + 1 + i * MSS, c_isn + 1, ACK | PSH, payload)
            )
            sec.append(
                tcp_packet(vm, client, 80, port, s_isn + 1 + i * MSS, c_isn + 1, ACK | PSH, payload)
            )
    n = len(prim)
    packet = cmp.packet
    primary, secondary = Side.PRIMARY, Side.SECONDARY
    gc.collect()
    gc.disable()
    t0 = time.perf_counter()
    released = 0
    for i in range(n):
        now = i * 1e-6
        packet(primary, i, prim[i], now)
        released += len(packet(secondary, i, sec[i], now))
    elapsed = time.perf_counter() - t0
    gc.enable()
    if cmp.stats.released_packets != n + conns or cmp.held_packets:
        sys.exit(f"benchmark broken: released {cmp.stats.released_packets} of {n + conns}")
    return n / elapsed


def bench_idle_flows(flows: int) -> tuple[float, float]:
    """Bytes per idle flow (after a handshake and a matched request/response), and seconds."""
    vm, client = bytes([10, 0, 0, 1]), bytes([10, 1, 0, 0])
    data = b"HTTP/1.1 200 OK\r\n\r\nhello"
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cmp = Comparator(CompareConfig(max_flows=flows + 1))
    t0 = time.perf_counter()
    for i in range(flows):
        dst = client[:1] + i.to_bytes(3, "big")
        port = 1024 + i % 60000
        cmp.packet(Side.PRIMARY, 2 * i, tcp_packet(vm, dst, 80, port, 5000, 900, SYN | ACK), 0.0)
        cmp.packet(Side.SECONDARY, 2 * i, tcp_packet(vm, dst, 80, port, 8000, 900, SYN | ACK), 0.0)
        cmp.packet(
            Side.PRIMARY, 2 * i + 1, tcp_packet(vm, dst, 80, port, 5001, 1000, ACK | PSH, data), 0.0
        )
        cmp.packet(
            Side.SECONDARY,
            2 * i + 1,
            tcp_packet(vm, dst, 80, port, 8001, 1000, ACK | PSH, data),
            0.0,
        )
    elapsed = time.perf_counter() - t0
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    if cmp.flow_count != flows or cmp.held_packets:
        sys.exit(f"benchmark broken: {cmp.flow_count} flows, {cmp.held_packets} held")
    return used / flows, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=300_000, help="segment pairs (default 300000)")
    ap.add_argument("--conns", type=int, default=100, help="concurrent flows for the pairs")
    ap.add_argument("--flows", type=int, default=100_000, help="idle flows (default 100000)")
    ap.add_argument("--pairs-only", action="store_true", help="print only the median pairs/s")
    ap.add_argument(
        "--no-interpreted", action="store_true", help="skip the interpreted comparison run"
    )
    args = ap.parse_args()
    rates = [bench_pairs(args.pairs, args.conns) for _ in range(3)]
    median = sorted(rates)[1]
    if args.pairs_only:
        print(f"{median:.0f}")
        return
    build = "compiled (mypyc)" if COMPILED else "interpreted (no build for these sources)"
    print(
        f"core: {build}; matched {MSS}-byte segment pairs/s: best {max(rates):,.0f}, "
        f"median {median:,.0f} ({args.pairs:,} pairs over {args.conns} flows; "
        f"target >= 300,000)"
    )
    if COMPILED and not args.no_interpreted:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--pairs-only",
                f"--pairs={args.pairs}",
                f"--conns={args.conns}",
            ],
            env={**os.environ, "COLO_COMPARE_PURE": "1"},
            capture_output=True,
            text=True,
            check=True,
        )
        pure = float(out.stdout.strip())
        print(
            f"same run, interpreted: median {pure:,.0f} pairs/s; "
            f"compiled/interpreted = {median / pure:.2f}"
        )
    per_flow, secs = bench_idle_flows(args.flows)
    print(
        f"idle flows: {args.flows:,} in table, {per_flow:,.0f} bytes per idle flow "
        f"(target well under 1024), built in {secs:.2f} s"
    )


if __name__ == "__main__":
    main()
