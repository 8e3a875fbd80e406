"""Random and mutated frames through the eBPF programs and the comparator (issue 15, item 8).

Each frame is drawn from a few real-looking kinds (TCP with options, UDP and ICMP over IPv4
and IPv6, IPv6 extension headers and fragments, ARP, 802.1Q and QinQ tags, the project's
own carry ethertype 0x88B5, runts), between the MACs that matter to the programs (the VM's,
the two forward links', a client's, broadcast), then mutated now and then (bytes flipped,
cut short, grown, ethertype swapped). Every frame runs through every program of both host
roles with the kernel's BPF_PROG_TEST_RUN, and its IP packet goes to a comparator as PVM
output, with an SVM twin that is equal, changed or missing.

Invariants checked:
- both roles' programs load (no verifier rejection), and every test run succeeds;
- a tc program returns TC_ACT_OK, TC_ACT_SHOT or TC_ACT_REDIRECT; the socket filter 0
  or the whole frame; no frame leaves longer than it came by more than a tag's room;
- the maps stay consistent: `have` holds only its three bits, `ts_have` its two, and a
  paired entry's offset is svm_isn - pvm_isn; the counters never go down;
- the comparator never counts an internal error, releases each PVM packet and drops
  each SVM packet exactly once, and holds nothing after the last checkpoint.

`make fuzz` runs 1,000,000 frames; tests/system/proxy/test_datapath_fuzz.py a short seeded
run. Needs root (bcc, BPF_PROG_TEST_RUN); it runs in a network namespace of its own, so
that frames the programs redirect go nowhere but its loopback.

    python -m tests.support.datapath_fuzz --frames 20000 --seed 1
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import random
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from colo_lab.lab import FWD_MACS, VM_MAC
from colo_proxy.compare import Comparator, CompareConfig, Drop, Release, Side
from colo_proxy.kernel import datapath
from colo_proxy.wire import carry
from colo_proxy.wire.offset import Offset
from tests.support.bpf_run import ProgRun
from tests.support.packets import (
    ACK,
    CLIENT4,
    CLIENT6,
    CLIENT_ETHER,
    FIN,
    PSH,
    RST,
    SYN,
    VM4,
    VM6,
    VM_ETHER,
    ether,
    icmp_echo_reply,
    ip4,
    ip6,
    tcp,
    udp,
)

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
TC_VERDICTS = {TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT}
SOCKET_VERDICTS = {0, 0xFFFFFFFF}  # nothing, or the whole frame (-1)
PRI_ETHER, SEC_ETHER = (datapath.mac_bytes(FWD_MACS[r]) for r in ("primary", "secondary"))
MACS = (VM_ETHER, CLIENT_ETHER, PRI_ETHER, SEC_ETHER, b"\xff" * 6, b"\x33\x33\0\0\0\x01")
# The flows the generator uses: a few, so that handshakes meet and the maps fill.
PORTS = (80, 22, 443)
CLIENT_PORTS = (40000, 40001, 40002, 40003)
KEY = b"k" * 32
CHECK_MAPS_EVERY = 5000  # frames; walking the maps costs far more than a test run


class FuzzFailure(AssertionError):
    pass


# --- frames ---------------------------------------------------------------------------------

def _tcp_options(rng: random.Random) -> bytes:
    opts = b""
    for _ in range(rng.randrange(4)):
        kind = rng.choice((1, 2, 3, 4, 5, 8, 0, 30))
        if kind in (0, 1):
            opts += bytes([kind])
        elif kind == 5:  # SACK blocks, sometimes a lying length
            n = rng.randrange(1, 4)
            opts += bytes([5, 2 + 8 * n if rng.random() < 0.8 else rng.randrange(256)])
            opts += rng.randbytes(8 * n)
        elif kind == 8:
            opts += struct.pack("!BBII", 8, 10, rng.getrandbits(32), rng.getrandbits(32))
        else:
            opts += bytes([kind, rng.randrange(2, 6)]) + rng.randbytes(2)
    return (opts + b"\0" * 3)[:len(opts) + (-len(opts) % 4)][:40]


def _segment(rng: random.Random) -> bytes:
    v6 = rng.random() < 0.5
    vm, client = (VM6, CLIENT6) if v6 else (VM4, CLIENT4)
    src, dst = (vm, client) if rng.random() < 0.5 else (client, vm)
    vm_port, client_port = rng.choice(PORTS), rng.choice(CLIENT_PORTS)
    sport, dport = (vm_port, client_port) if src == vm else (client_port, vm_port)
    flags = rng.choice((SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK,
                        rng.randrange(256)))
    data = rng.randbytes(rng.choice((0, 0, 1, 10, 100, 1400)))
    ext = rng.randbytes(8) if v6 and rng.random() < 0.1 else b""
    return tcp(rng.getrandbits(32), rng.getrandbits(32), flags, data, sport=sport,
               dport=dport, options=_tcp_options(rng), src=src, dst=dst, ext=ext)


def _datagram(rng: random.Random) -> bytes:
    v6 = rng.random() < 0.5
    kind = rng.randrange(4)
    if kind == 0:
        return udp(rng.randbytes(rng.randrange(64)), v6=v6, sport=rng.choice((53, 123, 5353)))
    if kind == 1 and not v6:
        return icmp_echo_reply(rng.getrandbits(16), rng.getrandbits(16), rng.randbytes(32))
    if kind == 2:  # a fragment
        if v6:
            frag = struct.pack("!BBHI", 17, 0, rng.getrandbits(16), rng.getrandbits(32))
            return ip6(44, frag + rng.randbytes(24))
        return ip4(17, rng.randbytes(24), frag=rng.getrandbits(16))
    # ICMPv6 (neighbour solicitations and MLD among them) or another protocol
    if v6:
        return ip6(58, bytes([rng.choice((135, 136, 143, 128, 129)), 0]) + rng.randbytes(22),
                   dst=rng.choice((CLIENT6, "ff02::1", "ff02::16")))
    return ip4(rng.choice((47, 50, 132, 255)), rng.randbytes(rng.randrange(40)))


def _arp(rng: random.Random) -> bytes:
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, rng.choice((1, 2, 3))) + rng.randbytes(20)


def _carry(rng: random.Random) -> bytes:
    nonce = rng.randbytes(carry.NONCE)
    if rng.random() < 0.5:
        return carry.challenge(KEY, nonce)
    o = Offset(VM4, rng.choice(PORTS), CLIENT4, rng.choice(CLIENT_PORTS), 0, 0,
               rng.getrandbits(32), True, None)
    return carry.announcement(KEY, nonce, o)


def frame(rng: random.Random) -> bytes:
    """One real-looking frame, sometimes mutated."""
    src, dst = rng.choice(MACS), rng.choice(MACS)
    kind = rng.random()
    vlan = rng.getrandbits(12) if rng.random() < 0.05 else None
    if kind < 0.6:
        f = ether(_segment(rng), src=src, dst=dst, vlan=vlan)
    elif kind < 0.8:
        f = ether(_datagram(rng), src=src, dst=dst, vlan=vlan)
    elif kind < 0.87:
        f = ether(_arp(rng), src=src, dst=dst, ethertype=0x0806, vlan=vlan)
    elif kind < 0.94:
        f = ether(_carry(rng), src=src, dst=dst, ethertype=carry.ETH_P_CARRY)
    elif kind < 0.97:  # QinQ: an 802.1ad tag around an 802.1Q one
        inner = ether(_segment(rng), src=src, dst=dst, vlan=rng.getrandbits(12))
        f = inner[:12] + struct.pack("!HH", 0x88A8, rng.getrandbits(12)) + inner[12:]
    else:
        f = rng.randbytes(rng.randrange(1, 100))
    return mutate(rng, f) if rng.random() < 0.3 else f


def mutate(rng: random.Random, f: bytes) -> bytes:
    b = bytearray(f)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(5)
        if op == 0 and b:  # flip bytes, mostly in the headers
            at = min(rng.randrange(len(b)), rng.randrange(80))
            b[at % len(b)] = rng.randrange(256)
        elif op == 1:  # cut short
            del b[rng.randrange(len(b) + 1):]
        elif op == 2:  # grow
            b += rng.randbytes(rng.randrange(1, 64))
        elif op == 3 and len(b) >= 14:  # another ethertype
            b[12:14] = struct.pack("!H", rng.choice((0x0800, 0x86DD, 0x8100, 0x88A8, 0x0806,
                                                     carry.ETH_P_CARRY, rng.getrandbits(16))))
        elif op == 4 and len(b) >= 12:  # another MAC pair
            b[0:12] = rng.choice(MACS) + rng.choice(MACS)
    return bytes(b)


def ip_packet(f: bytes) -> bytes:
    """What the comparator gets of a frame: from the IP header on (past any VLAN tags)."""
    at = 12
    while f[at:at + 2] in (b"\x81\x00", b"\x88\xa8"):
        at += 4
    return f[at + 2:]


# --- the programs ---------------------------------------------------------------------------

def too_short(f: bytes) -> bool:
    """Shorter than an Ethernet header, or than the IPv4 or IPv6 header its ethertype
    names: the kernel's test run refuses such a frame with EINVAL before the program runs
    (Linux 6.18; the IP case for BPF_PROG_TYPE_SOCKET_FILTER at least). No such frame
    reaches a program on the wire: a NIC pads to 60 bytes, and the IP layer drops what
    cannot be IP before a socket filter sees it as such."""
    kind = f[12:14]
    return (len(f) < 14 or (kind == b"\x08\x00" and len(f) < 14 + 20)
            or (kind == b"\x86\xdd" and len(f) < 14 + 40))


@dataclass
class Role:
    name: str
    bpf: Any
    runs: dict[str, tuple[ProgRun, set[int]]] = field(default_factory=dict)
    counters: list[int] = field(default_factory=list)


def load_roles() -> list[Role]:
    """Both host roles' programs, loaded (a verifier rejection raises here), with flows
    carried so that the rewriting paths run too."""
    roles = []
    for name, fwd, peer, uplink in (("primary", "primary", "secondary", 1),
                                    ("secondary", "secondary", "primary", 0)):
        bpf = datapath.load(name, fwd_ifindex=1, tap_ifindex=1, vm_mac=VM_MAC,
                            fwd_mac=FWD_MACS[fwd], peer_mac=FWD_MACS[peer],
                            uplink_ifindex=uplink)
        role = Role(name, bpf)
        progs = [p for p, _, _ in datapath.HOOKS[name]]
        if name == "primary":
            progs += [p for p, _, _ in datapath.UPLINK_HOOKS]
            fd = bpf.load_func(b"colo_svm_sock", bpf.SOCKET_FILTER).fd
            role.runs["colo_svm_sock"] = (ProgRun(fd), SOCKET_VERDICTS)
        for p in progs:
            role.runs[p] = (ProgRun(bpf.load_func(p.encode(), bpf.SCHED_CLS).fd), TC_VERDICTS)
        dp = datapath.Datapath(name, tap="tap", fwd="fwd", vm_mac=VM_MAC,
                               peer_mac=FWD_MACS[peer], uplink="up" if uplink else "")
        dp._bpf = bpf
        dp.carry([Offset(ip, port, cl, cport, 1, 2, 1 + port, True, 5)
                  for ip, cl in ((VM4, CLIENT4), (VM6, CLIENT6))
                  for port in PORTS for cport in CLIENT_PORTS[:2]])
        roles.append(role)
    return roles


def set_mode(role: Role, mode: int) -> None:
    role.bpf[b"mode"][ctypes.c_int(0)] = ctypes.c_uint32(mode)


def check_maps(role: Role) -> None:
    table = role.bpf[b"counters"]
    now = [int(sum(table[ctypes.c_int(i)])) for i in range(len(datapath.COUNTERS))]
    for name, before, after in zip(datapath.COUNTERS, role.counters or now, now, strict=True):
        if after < before:
            raise FuzzFailure(f"{role.name}: counter {name} went down: {before} -> {after}")
    role.counters = now
    for map_name in (b"offsets", b"carried"):
        try:
            entries = role.bpf[map_name].items()
        except KeyError:
            continue
        for k, v in entries:
            if v.have & ~7 or v.ts_have & ~3:
                raise FuzzFailure(f"{role.name} {map_name.decode()}: have {v.have:#x} "
                                  f"ts_have {v.ts_have:#x} (key port {k.vm_port})")
            if v.have & 4 and (v.have & 3 != 3
                               or v.offset != (v.svm_isn - v.pvm_isn) % 2**32):
                raise FuzzFailure(f"{role.name} {map_name.decode()}: paired entry with "
                                  f"offset {v.offset} != {v.svm_isn} - {v.pvm_isn}")


# --- the comparator -------------------------------------------------------------------------

@dataclass
class Ledger:
    """What the comparator was given and what it gave back."""

    comparator: Comparator
    pvm: set[int] = field(default_factory=set)
    svm: set[int] = field(default_factory=set)
    released: set[int] = field(default_factory=set)
    dropped: set[int] = field(default_factory=set)
    checkpoints: int = 0

    def take(self, commands: list[Any]) -> None:
        for c in commands:
            if isinstance(c, Release):
                for i in c.packet_ids:
                    if i not in self.pvm or i in self.released:
                        raise FuzzFailure(f"released packet {i} twice or never held")
                    self.released.add(i)
            elif isinstance(c, Drop):
                for i in c.packet_ids:
                    if i not in self.svm or i in self.dropped:
                        raise FuzzFailure(f"dropped packet {i} twice or never held")
                    self.dropped.add(i)

    def finish(self, now: float) -> None:
        self.take(self.comparator.checkpoint_done(now))
        c = self.comparator
        if c.stats.internal_errors:
            raise FuzzFailure(f"comparator: {c.stats.internal_errors} internal errors")
        if c.held_packets or c.held_bytes:
            raise FuzzFailure(f"comparator holds {c.held_packets} packets after a checkpoint")
        if self.released != self.pvm:
            raise FuzzFailure(f"{len(self.pvm - self.released)} PVM packets never released")
        if self.dropped != self.svm:
            raise FuzzFailure(f"{len(self.svm - self.dropped)} SVM packets never dropped")
        self.pvm.clear(), self.svm.clear(), self.released.clear(), self.dropped.clear()


def compare(rng: random.Random, ledger: Ledger, n: int, f: bytes, now: float) -> None:
    c = ledger.comparator
    pkt = ip_packet(f)
    ledger.pvm.add(2 * n)
    ledger.take(c.packet(Side.PRIMARY, 2 * n, pkt, now))
    r = rng.random()
    if r < 0.85:  # the SVM's twin: mostly equal, sometimes changed, sometimes missing
        twin = pkt if r < 0.7 else ip_packet(mutate(rng, f))
        ledger.svm.add(2 * n + 1)
        ledger.take(c.packet(Side.SECONDARY, 2 * n + 1, twin, now))
    if n % 64 == 0:
        ledger.take(c.tick(now))
    if c.checkpoint_pending and rng.random() < 0.2:  # the orchestrator's answer, soon
        ledger.checkpoints += 1
        ledger.take(c.checkpoint_done(now))


# --- the run --------------------------------------------------------------------------------

def run(frames: int, seed: int, progress: Callable[[str], None] = print) -> dict[str, Any]:
    rng = random.Random(seed)
    roles = load_roles()
    ledger = Ledger(Comparator(CompareConfig(compare_timeout=0.05, max_flow_packets=64,
                                             max_total_packets=4096)))
    verdicts: dict[str, dict[int, int]] = {p: {} for r in roles for p in r.runs}
    refused: dict[str, int] = {}
    start = last = time.monotonic()
    now = 0.0
    for n in range(frames):
        f = frame(rng)
        if n % 997 == 0:
            for role in roles:
                set_mode(role, rng.choice((datapath.MODE_PROTECTED, datapath.MODE_PASSTHROUGH)))
        for role in roles:
            for prog, (prog_run, allowed) in role.runs.items():
                try:
                    rc, out = prog_run(f)
                except OSError as exc:
                    if exc.errno == errno.EINVAL and too_short(f):
                        refused[prog] = refused.get(prog, 0) + 1
                        continue
                    raise FuzzFailure(f"{role.name} {prog}: {exc} on frame {f.hex()}") from exc
                if rc not in allowed or len(out) > len(f) + 8:
                    raise FuzzFailure(f"{role.name} {prog}: verdict {rc}, {len(out)} bytes "
                                      f"out of {len(f)} on frame {f.hex()}")
                verdicts[prog][rc] = verdicts[prog].get(rc, 0) + 1
        now += 0.001
        compare(rng, ledger, n, f, now)
        if (n + 1) % CHECK_MAPS_EVERY == 0 or n + 1 == frames:
            for role in roles:
                check_maps(role)
            ledger.finish(now)
        if time.monotonic() - last >= 10 or n + 1 == frames:
            last = time.monotonic()
            progress(f"  {n + 1} frames, {(n + 1) / (last - start):.0f} frames/s")
    elapsed = time.monotonic() - start
    counters = {f"{r.name}.{name}": v for r in roles
                for name, v in zip(datapath.COUNTERS, r.counters, strict=True) if v}
    for role in roles:
        role.bpf.cleanup()
    return {"frames": frames, "seed": seed, "seconds": elapsed,
            "frames_per_second": frames / elapsed, "verdicts": verdicts,
            "checkpoints": ledger.checkpoints, "refused": refused, "counters": counters, "comparator": ledger.comparator.stats.as_dict()}


def own_netns() -> None:
    """A network namespace of our own, loopback up: frames the programs redirect (to
    ifindex 1) land there and nowhere else."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("set", index=1, state="up")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    own_netns()
    print(f"datapath fuzz: {args.frames} frames, seed {seed}", flush=True)
    try:
        s = run(args.frames, seed, lambda line: print(line, flush=True))
    except FuzzFailure as exc:
        print(f"FAILED (seed {seed}): {exc}", flush=True)
        return 1
    print(f"datapath fuzz: {s['frames']} frames in {s['seconds']:.1f} s "
          f"({s['frames_per_second']:.0f} frames/s), seed {seed}: no failed run, every "
          f"verdict allowed, maps consistent, nothing held; {s['checkpoints']} checkpoints")
    for prog, counts in sorted(s["verdicts"].items()):
        print(f"  {prog}: " + ", ".join(f"{rc:#x} x {k}" for rc, k in sorted(counts.items()))
              + (f"; {s['refused'][prog]} too short for the kernel's test run"
                 if prog in s["refused"] else ""))
    print("  counters: " + ", ".join(f"{k} {v}" for k, v in s["counters"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
