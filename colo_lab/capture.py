"""tcpdump at chosen points of the lab, for the benchmarks that trace requests.

`tcpdump(lab, out, names)` captures the lab's HTTP traffic (TCP port 80) at each named
point into `out/NAME.txt` (`-n -tt -S`: what colo_lab.packet_trace parses) while its
block runs. On leaving it makes one more request, unmeasured, and waits until the
client's capture shows that request's SYN: tcpdump reads one interface's packets in
order, so every packet of the measured requests at the client has been written by then
(stopping tcpdump at once loses the last ones still in its buffer).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from colo_lab import netns, packet_trace
from colo_lab.lab import VM_IP, Lab
from colo_lab.wait import wait_until

# Capture points: name, host ("client" or a lab host role), interface.
POINTS = (("client", "client", "eth0"), ("pvm", "primary", "tapP"),
          ("fwd", "primary", "fwd0"), ("svm", "secondary", "tapS"))
NAMES = tuple(name for name, _, _ in POINTS)


def syn_seen(capture: Path, port: int, server: str = VM_IP) -> bool:
    """Whether a capture shows the SYN from client port `port` to the server's port 80."""
    return any(s.sport == port and s.dst == server and s.dport == 80 and "S" in s.flags
               for s in packet_trace.parse(capture.read_text().splitlines()))


def last_request(lab: Lab) -> int:
    """One request on a new connection from the client namespace; its client port."""
    out = subprocess.run(
        ["ip", "netns", "exec", lab.client_ns, "curl", "-sS", "-m", "20", "-o", "/dev/null",
         "-w", "%{local_port}", f"http://{VM_IP}/health"],
        capture_output=True, text=True, timeout=30, check=True)
    return int(out.stdout)


@contextlib.contextmanager
def tcpdump(lab: Lab, out: Path, names: Sequence[str] = NAMES) -> Iterator[None]:
    """Capture at each point of `names` while the block runs (see the module)."""
    unknown = set(names) - set(NAMES)
    if unknown or "client" not in names:
        raise ValueError(f"capture points {sorted(unknown)} unknown, or no client point: "
                         f"use some of {', '.join(NAMES)}, client among them")
    out.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[subprocess.Popen[bytes], tuple[IO[bytes], IO[bytes]]]] = []
    try:
        for name, host, ifname in POINTS:
            if name not in names:
                continue
            ns = lab.client_ns if host == "client" else lab.hosts[host].ns
            err = out / f"{name}.err"
            files = (open(out / f"{name}.txt", "wb"), open(err, "wb"))
            # -s 128: the headers are all packet_trace reads; -B 16 MiB: a 1 MiB download
            # arrives in bursts that tcpdump must not drop.
            procs.append((netns.popen(ns, ["tcpdump", "-i", ifname, "-n", "-tt", "-S", "-l",
                                           "-B", "16384", "-s", "128", "tcp", "port", "80"],
                                      stdout=files[0], stderr=files[1]), files))
            wait_until(lambda e=err: b"listening on" in e.read_bytes(),  # type: ignore[misc]
                       10, f"tcpdump on {name}")
        yield
        port = last_request(lab)
        client = out / "client.txt"
        wait_until(lambda: syn_seen(client, port), 10,
                   f"the client capture of the last request (port {port})")
    finally:
        for p, logs in procs:
            p.terminate()
            p.wait(10)
            for f in logs:
                f.close()
