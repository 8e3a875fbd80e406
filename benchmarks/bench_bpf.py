"""Nanoseconds per frame of the tc programs (and the comparator socket's filter), by the
kernel's BPF test run with a repeat count: no namespaces, no VMs. Run as root:

    .venv/bin/python benchmarks/bench_bpf.py [--repeat 200000] [--against DIR]

`--against DIR` runs the same frames through the programs in DIR (another checkout's
colo_proxy/kernel/bpf, e.g. main's), alternating with ours in one process, and prints
the ratio: the cost of a change to the programs, measured in the same run. A program
that DIR lacks is shown without a ratio. Clones and redirects go to `lo` of this
namespace (ifindex 1), as in tests/system/proxy/test_bpf_programs.py.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import struct
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from colo_lab.lab import FWD_MACS, VM_MAC
from colo_proxy.kernel import datapath
from tests.support.packets import ACK, CLIENT_ETHER, PSH, VM_ETHER, ether, tcp

PRI, SEC = (datapath.mac_bytes(FWD_MACS[r]) for r in ("primary", "secondary"))
PAYLOAD = b"x" * 1448
# (role, program, program type, frame): the per-packet hot paths.
CASES = [
    ("primary", "colo_mirror", "SCHED_CLS",
     ether(tcp(1, 2, ACK | PSH, b"GET / HTTP/1.1\r\n\r\n", sport=40000, dport=80,
               src="10.99.0.100", dst="10.99.0.10"), src=CLIENT_ETHER, dst=VM_ETHER)),
    ("primary", "colo_pvm_out", "SCHED_CLS", ether(tcp(1, 2, ACK | PSH, PAYLOAD))),
    ("primary", "colo_svm_in", "SCHED_CLS", ether(tcp(1, 2, ACK | PSH, PAYLOAD), src=SEC)),
    ("primary", "colo_svm_sock", "SOCKET_FILTER",
     ether(tcp(1, 2, ACK | PSH, PAYLOAD), src=SEC)),
    ("secondary", "colo_fwd_in", "SCHED_CLS",
     ether(tcp(1, 2, ACK, b"", sport=40000, dport=80, src="10.99.0.100", dst="10.99.0.10"),
           src=CLIENT_ETHER, dst=VM_ETHER)),
    ("secondary", "colo_tap_in", "SCHED_CLS", ether(tcp(1, 2, ACK | PSH, PAYLOAD))),
]


def _load(bpf_dir: Path, role: str) -> Any:
    from bcc import BPF

    mac = datapath.mac_to_int
    own, peer = (FWD_MACS["primary"], FWD_MACS["secondary"])[::1 if role == "primary" else -1]
    # Every -D of any version: a program ignores what it does not use.
    cflags = [f"-I{bpf_dir}", "-DFWD_IFINDEX=1", "-DTAP_IFINDEX=1", "-DUPLINK_IFINDEX=0",
              f"-DVM_MAC={mac(VM_MAC):#x}ULL", f"-DFWD_MAC={mac(own):#x}ULL",
              f"-DPEER_MAC={mac(peer):#x}ULL"]
    return BPF(src_file=str(bpf_dir / f"{role}.bpf.c").encode(), cflags=cflags)


def _ns_per_run(bpf: Any, prog: str, kind: str, frame: bytes, repeat: int) -> float:
    fd = bpf.load_func(prog.encode(), getattr(bpf, kind)).fd
    data = ctypes.create_string_buffer(frame, len(frame))
    attr = (ctypes.c_uint8 * 80)()
    struct.pack_into("=IIIIQQI", attr, 0, fd, 0, len(frame), 0, ctypes.addressof(data), 0,
                     repeat)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(321, 10, attr, 80) != 0:  # __NR_bpf (x86_64), BPF_PROG_TEST_RUN
        raise OSError(ctypes.get_errno(), f"BPF_PROG_TEST_RUN {prog}")
    return float(struct.unpack_from("=I", attr, 36)[0])  # duration: ns per run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5, help="alternations; medians shown")
    ap.add_argument("--against", type=Path, help="another tree's colo_proxy/kernel/bpf")
    a = ap.parse_args()
    trees = {"ours": datapath.BPF_DIR, **({"other": a.against} if a.against else {})}
    loaded = {(t, role): _load(d, role) for t, d in trees.items()
              for role in ("primary", "secondary")}
    for role, prog, kind, frame in CASES:
        runs: dict[str, list[float]] = {t: [] for t in trees}
        for _ in range(a.rounds):
            for t in trees:
                try:
                    runs[t].append(_ns_per_run(loaded[t, role], prog, kind, frame, a.repeat))
                except Exception:  # the other tree lacks this program
                    runs[t] = []
                    break
        ours = statistics.median(runs["ours"])
        line = f"{role:9} {prog:14} {len(frame):5} B  ours {ours:7.1f} ns"
        if runs.get("other"):
            other = statistics.median(runs["other"])
            line += f"  other {other:7.1f} ns  ratio {ours / other:5.2f}"
        print(line)
    for bpf in loaded.values():
        bpf.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
