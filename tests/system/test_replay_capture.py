"""`colo-proxy replay` on real captures: the same server run twice with different MSS.

Two private setups (client namespace <-> server namespace over a veth pair, the same
addresses in both) run one deterministic TCP server each; tcpdump captures each server's
output while one client per setup sends the same requests from the same ports. The replay
must find every flow matched, and in a second pair, where one server changes one byte,
report that flow with reason "payload" at that byte's offset.
"""

from __future__ import annotations

import functools
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest

from colo_lab.wait import wait_until

pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(
        not (shutil.which("ip") and shutil.which("tcpdump")), reason="needs iproute2 and tcpdump"
    ),
]

SERVER_IP, CLIENT_IP, PORT = "10.77.0.1", "10.77.0.2", 8080
SIZES = [100, 5000, 20000, 1, 70000]  # response bytes per request
FIRST_CLIENT_PORT = 41000
INJECT_REQUEST, INJECT_OFFSET = 2, 12345

SERVER = r"""
import hashlib, socket, sys
mss, inject_req, inject_off = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def body(n):
    out = b"".join(hashlib.sha256(b"%d:%d" % (n, i)).digest() for i in range(n // 32 + 1))
    return out[:n]
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
ls.bind((sys.argv[4], int(sys.argv[5])))
ls.listen()
print("ready", flush=True)
while True:
    s, _ = ls.accept()
    line = b""
    while not line.endswith(b"\n"):
        chunk = s.recv(100)
        if not chunk:
            break
        line += chunk
    req, size = (int(x) for x in line.split())
    data = bytearray(body(size))
    if req == inject_req and inject_off < size:
        data[inject_off] ^= 0xFF
    for i in range(0, len(data), 3000):
        s.sendall(data[i:i + 3000])
    s.close()
"""

CLIENT = r"""
import socket, sys
sizes = [int(x) for x in sys.argv[2].split(",")]
for i, size in enumerate(sizes):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[3], int(sys.argv[1]) + i))
    s.connect((sys.argv[4], int(sys.argv[5])))
    s.sendall(b"%d %d\n" % (i, size))
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    assert len(got) == size, (i, len(got))
    s.close()
print("done", flush=True)
"""


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


def wait_line(proc: subprocess.Popen[str], stream: str, text: str, deadline: float) -> None:
    """Read ``proc``'s stdout/stderr until a line contains ``text``, or fail at the deadline."""
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = pipe.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"no {text!r} from {proc.args!r}; got {seen!r}")


class Sandbox:
    """Namespaces and processes made by one test, all removed by ``close``."""

    def __init__(self, tmp: Path) -> None:
        self.prefix = f"coloreplay-{os.getpid()}"
        self.tmp = tmp
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []

    def setup(self, name: str) -> tuple[str, str]:
        server, client = f"{self.prefix}-{name}s", f"{self.prefix}-{name}c"
        for ns in (server, client):
            run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run(
            "ip",
            "-n",
            server,
            "link",
            "add",
            "veth0",
            "type",
            "veth",
            "peer",
            "name",
            "veth1",
            "netns",
            client,
        )
        for ns, addr in ((server, SERVER_IP), (client, CLIENT_IP)):
            dev = "veth0" if ns == server else "veth1"
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        return server, client

    def spawn(self, ns: str, *cmd: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    made = Sandbox(tmp_path)
    try:
        yield made
    finally:
        made.close()


def capture_pair(sandbox: Sandbox, tag: str, inject_b: bool) -> tuple[Path, Path]:
    """Run the server in two setups (MSS 1000 and 536), return the two output captures."""
    deadline = time.monotonic() + 30
    setups = []
    for name, mss, inject in (("a", 1000, False), ("b", 536, inject_b)):
        server_ns, client_ns = sandbox.setup(f"{tag}{name}")
        pcap = sandbox.tmp / f"{tag}{name}.pcap"
        # --immediate-mode: hand each packet to tcpdump at once, -U: write it at once. The
        # ring has one snaplen-sized slot per packet: a snaplen just above a 64 KiB GSO packet
        # and a 16 MiB buffer keep bursts from overflowing it (the default 256 KiB snaplen in
        # 2 MiB drops packets).
        dump = sandbox.spawn(
            server_ns,
            "tcpdump",
            "-i",
            "veth0",
            "--immediate-mode",
            "-U",
            "-n",
            "-s",
            "70000",
            "-B",
            "16384",
            "-w",
            str(pcap),
            f"tcp and src host {SERVER_IP}",
        )
        wait_line(dump, "stderr", "listening on", deadline)
        inject_args = (str(INJECT_REQUEST), str(INJECT_OFFSET)) if inject else ("-1", "-1")
        server = sandbox.spawn(
            server_ns, sys.executable, "-c", SERVER, str(mss), *inject_args, SERVER_IP, str(PORT)
        )
        wait_line(server, "stdout", "ready", deadline)
        setups.append((client_ns, dump, pcap))
    sizes = ",".join(map(str, SIZES))
    clients = [
        sandbox.spawn(
            ns,
            sys.executable,
            "-c",
            CLIENT,
            str(FIRST_CLIENT_PORT),
            sizes,
            CLIENT_IP,
            SERVER_IP,
            str(PORT),
        )
        for ns, _, _ in setups
    ]  # both at once, so that the two runs keep in step
    for client in clients:
        out, err = client.communicate(timeout=max(1.0, deadline - time.monotonic()))
        assert client.returncode == 0 and "done" in out, err
    for _, dump, pcap in setups:
        # The server's last packet (the ACK of the client's FIN) may follow the client's exit.
        wait_until(functools.partial(capture_complete, pcap),
                   max(1.0, deadline - time.monotonic()), f"{pcap} to be complete")
        dump.terminate()
        dump.wait(timeout=10)
    return setups[0][2], setups[1][2]


def capture_complete(pcap: Path) -> bool:
    """Every connection's server FIN and, after it, the server's ACK of the client's FIN."""
    finished: dict[int, str] = {}
    try:
        with pcap.open("rb") as fh:
            for _, frame in dpkt.pcap.Reader(fh):
                seg = dpkt.ethernet.Ethernet(frame).data.data
                if seg.flags & dpkt.tcp.TH_FIN:
                    finished[seg.dport] = "fin"
                elif finished.get(seg.dport) == "fin" and not seg.data:
                    finished[seg.dport] = "acked"
    except (ValueError, dpkt.dpkt.NeedData):  # a packet half written: look again
        return False
    return list(finished.values()) == ["acked"] * len(SIZES)


def segment_sizes(pcap: Path) -> list[int]:
    with pcap.open("rb") as fh:
        return [len(dpkt.ethernet.Ethernet(f).data.data.data) for _, f in dpkt.pcap.Reader(fh)]


def replay(primary: Path, secondary: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "colo_proxy.cli.main",
            "replay",
            "--primary",
            str(primary),
            "--secondary",
            str(secondary),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_replay_of_two_real_runs(sandbox: Sandbox) -> None:
    pvm, svm = capture_pair(sandbox, "m", inject_b=False)
    rc, report = replay(pvm, svm)
    flows = report["flows"]
    assert len(flows) == len(SIZES), report
    assert [f["status"] for f in flows] == ["matched"] * len(SIZES), report
    assert rc == 0
    assert segment_sizes(pvm) != segment_sizes(svm)  # segmentation really differed

    pvm, svm = capture_pair(sandbox, "d", inject_b=True)
    rc, report = replay(pvm, svm)
    assert rc == 1
    diverged = [f for f in report["flows"] if f["status"] == "diverged"]
    assert [
        (f["src"], f["sport"], f["dst"], f["dport"], f["reason"], f["offset"]) for f in diverged
    ] == [
        (SERVER_IP, PORT, CLIENT_IP, FIRST_CLIENT_PORT + INJECT_REQUEST, "payload", INJECT_OFFSET)
    ], report
    assert report["totals"]["matched"] == len(SIZES) - 1
