"""`colo-orch firewall`'s rules loaded into a real kernel: the peer reaches every port of the
pair, another host on the same link reaches none, the host itself still reaches its own.

Two namespaces made here: "host" (10.77.0.1) runs listeners on the config's ports; "lan"
holds the peer (10.77.0.2) and a stranger (10.77.0.3) on one link.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_lab import netns
from colo_lab.proxy_harness import unique_name
from colo_lab.wait import wait_until

pytestmark = [pytest.mark.host,
              pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (nftables)")]

HOST, PEER, STRANGER = "10.77.0.1", "10.77.0.2", "10.77.0.3"
TCP_PORTS = {"migration": 4444, "nbd": 10809, "api": 7411, "proxy-metrics": 7412}
HB_PORT = 7410
CONFIG = f"""
name = "fw"
role = "secondary"
qmp = "/run/x.qmp"
qmp_events = "/run/x-events.qmp"
heartbeat_listen = "{HOST}:{HB_PORT}"
peer_heartbeat = "{PEER}:{HB_PORT}"
incoming_uri = "tcp:{HOST}:{TCP_PORTS['migration']}"
peer_incoming_uri = "tcp:{PEER}:{TCP_PORTS['migration']}"
heartbeat_key_file = "/etc/colo/fw.key"
api_listen = "0.0.0.0:{TCP_PORTS['api']}"
proxy_socket = "/run/colo/proxy.sock"
proxy_primary_command = ["colo-proxy", "primary", "--metrics-listen", "{HOST}:7412"]
proxy_secondary_command = ["colo-proxy", "secondary", "--metrics-listen", "{HOST}:7412"]
nbd_port = {TCP_PORTS['nbd']}
[[disks]]
image = "/var/lib/colo/d.raw"
active = "/var/lib/colo/a.qcow2"
hidden = "/var/lib/colo/h.qcow2"
"""

# Listens on the given TCP ports and the UDP port, answers each TCP client "hi" and each
# datagram with itself.
SERVER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for p in map(int, sys.argv[2].split(",")):
    s = socket.create_server(("0.0.0.0", p)); sel.register(s, selectors.EVENT_READ, "tcp")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", int(sys.argv[1])))
sel.register(u, selectors.EVENT_READ, "udp")
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.data == "tcp":
            c, _ = key.fileobj.accept(); c.sendall(b"hi"); c.close()
        else:
            d, a = key.fileobj.recvfrom(100); key.fileobj.sendto(d, a)
"""

# From a source address: "ok" or "no" per TCP port, then the UDP port.
CLIENT = """
import socket, sys
src, dst = sys.argv[1], sys.argv[2]
out = []
for p in map(int, sys.argv[3].split(",")):
    try:
        with socket.create_connection((dst, p), timeout=1.0, source_address=(src, 0)) as c:
            out.append("ok" if c.recv(2) == b"hi" else "no")
    except OSError:
        out.append("no")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((src, 0)); u.settimeout(1.0)
u.sendto(b"hb", (dst, int(sys.argv[4])))
try:
    out.append("ok" if u.recvfrom(10)[0] == b"hb" else "no")
except OSError:
    out.append("no")
print(" ".join(out))
"""


@pytest.fixture
def link() -> Iterator[tuple[str, str]]:
    name = unique_name("fw")
    host, lan = f"colo-{name}-host", f"colo-{name}-lan"
    try:
        for ns in (host, lan):
            netns.add(ns)
        netns.veth(host, "eth0", lan, "eth0")
        netns.ip(host, "addr", "add", f"{HOST}/24", "dev", "eth0")
        for a in (PEER, STRANGER):
            netns.ip(lan, "addr", "add", f"{a}/24", "dev", "eth0")
        yield host, lan
    finally:
        for ns in (host, lan):
            if netns.exists(ns):
                netns.kill_all(ns)
                netns.delete(ns)


def _reach(ns: str, src: str) -> list[str]:
    ports = ",".join(str(p) for p in TCP_PORTS.values())
    out = netns.sh(ns, [sys.executable, "-c", CLIENT, src, HOST, ports, str(HB_PORT)],
                   timeout=30)
    return out.split()


def test_only_the_peer_reaches_the_pairs_ports(link: tuple[str, str], tmp_path: Path) -> None:
    host, lan = link
    cfg = tmp_path / "fw.toml"
    cfg.write_text(CONFIG)
    rules = tmp_path / "fw.nft"
    res = subprocess.run([sys.executable, "-m", "colo_orch.cli.orch", "firewall", "--config",
                          str(cfg)], capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0, res.stderr
    rules.write_text(res.stdout)
    server = netns.popen(host, [sys.executable, "-c", SERVER, str(HB_PORT),
                                ",".join(str(p) for p in TCP_PORTS.values())],
                         stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        everything = ["ok"] * (len(TCP_PORTS) + 1)
        wait_until(lambda: _reach(lan, STRANGER) == everything, 10, "the open ports")
        netns.sh(host, ["nft", "-f", str(rules)])
        assert _reach(lan, PEER) == everything
        assert _reach(lan, STRANGER) == ["no"] * (len(TCP_PORTS) + 1)
        assert _reach(host, HOST) == everything  # the host itself, over loopback
        # Loaded twice: the table is replaced, not doubled.
        netns.sh(host, ["nft", "-f", str(rules)])
        assert netns.sh(host, ["nft", "list", "tables"]).split().count("colo_fw") == 1
        assert _reach(lan, PEER) == everything
    finally:
        server.kill()
        server.wait()
