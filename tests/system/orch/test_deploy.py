"""docs/DEPLOY.md's path on the lab's two host namespaces, as if they were two machines.

Nothing of colo_lab.pair's ready-made orchestrator configs is used. The lab gives the
network only (links, bridges, taps, the etcd cluster: `up(vms=False)`); each "host" then
gets its own /etc/colo, /run/colo, /var/lib/colo and /var/log/colo under the run directory,
and the test does what the page says:
- keys and tokens (section 4);
- the configs: contrib/orch/web-*.toml and contrib/colo-proxy.toml with the lab's names and
  addresses, and the VM's keys from `coloctl import-libvirt` of a libvirt domain XML for
  the lab's guest with a qcow2 disk (sections 5 and 6);
- the disk: the `qemu-img convert` and `coloctl disk prepare` that import-libvirt prints
  (section 7);
- `colo-orch check` and `colo-proxy check` on each host, and `colo-orch firewall` loaded
  with nft (sections 8 and 9);
- each orchestrator started with contrib/systemd/colo-orch@.service's ExecStart, %i and %H
  substituted, with a NOTIFY_SOCKET as systemd gives a Type=notify unit (section 10);
and waits for `coloctl status` to show both hosts PROTECTED, then for the guest's answer
through the pair and a value kept on its replicated disk. 14-23 s here (TCG; both
PROTECTED 6.5-9.1 s after the units' start, two runs).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from colo_lab import etcd_net
from colo_lab.accel import choose_accel
from colo_lab.guest import Guest, ensure_guest
from colo_lab.lab import (
    CTL_PRIMARY,
    CTL_SECONDARY,
    FWD_MACS,
    LAN_PLEN,
    TCG_COMPARE_TIMEOUT,
    VM_IP,
    VM_MAC,
    Lab,
    qemu_binary,
)
from colo_lab.proxy_harness import unique_name
from colo_lab.qemu_build import FIRMWARE_ARGS
from colo_lab.smoke import HOME_PAGE
from colo_lab.wait import wait_until
from tests.support.paths import REPO

pytestmark = [pytest.mark.vm, pytest.mark.timeout(420),
              pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (nftables)")]

PAIR = "web"
HOSTS = {"primary": "pri", "secondary": "sec"}  # role -> the host's name (%H)
BIN = Path(sys.executable).parent  # where pip put colo-orch, coloctl, colo-proxy
UNIT = REPO / "contrib" / "systemd" / "colo-orch@.service"
DISK_SIZE = "64M"
# The lab's guest as libvirt would run it: direct kernel boot, the qcow2 disk libvirt had,
# a bridged virtio NIC, a serial console, a display; firmware paths of the lab's QEMU
# build (built without blobs) through libvirt's <qemu:commandline>.
DOMAIN_XML = """<domain type='{dom_type}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web</name>
  <uuid>3b1f0f4e-2d6c-4c55-9a0e-6f1c2b7d8e90</uuid>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 colo.ip={vm_ip}</cmdline>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{qcow2}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='br0'/>
      <target dev='vnet0'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <graphics type='vnc' port='-1' autoport='yes'/>
    <memballoon model='virtio'/>
  </devices>
  <qemu:commandline>
{firmware}
  </qemu:commandline>
</domain>
"""


class Host:
    """One "machine": its namespace and its own root for the paths DEPLOY.md uses."""

    def __init__(self, lab: Lab, role: str) -> None:
        self.role, self.name = role, HOSTS[role]
        self.ns = lab.hosts[role].ns
        self.tap = lab.hosts[role].tap
        self.root = lab.run_dir / f"host-{self.name}"
        self.dirs = {"/etc/colo": self.root / "etc", "/run/colo": self.root / "run",
                     "/var/lib/colo": self.root / "lib", "/var/log/colo": self.root / "log"}
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.dirs["/etc/colo"].chmod(0o700)

    def path(self, p: str) -> Path:
        """A DEPLOY.md path (/etc/colo/web.toml) on this host."""
        for real, here in self.dirs.items():
            if p == real or p.startswith(real + "/"):
                return here / p[len(real) + 1:]
        raise AssertionError(f"{p} is none of DEPLOY.md's directories")

    def localise(self, text: str) -> str:
        """A contrib/ file's paths and programs as they are on this host."""
        for real, here in self.dirs.items():
            text = text.replace(real + "/", f"{here}/")
        return text.replace("/usr/bin/colo-proxy", str(BIN / "colo-proxy"))

    def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True,
                              text=True, timeout=kw.pop("timeout", 120), check=False, **kw)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """The lab's network and etcd cluster, and no VM: the orchestrators start them."""
    lab = Lab(unique_name("dep"))
    lab.down()
    lab.up(vms=False)
    try:
        yield lab
    finally:
        lab.down()


def _keys(hosts: dict[str, Host]) -> None:
    """Section 4: one pair key, copied; a token per host; both mode 0600."""
    key = base64.b64encode(secrets.token_bytes(32)) + b"\n"
    for h in hosts.values():
        for name, data in (("web.key", key),
                           ("web-api.token", base64.b64encode(secrets.token_bytes(32)) + b"\n")):
            p = h.path(f"/etc/colo/{name}")
            p.write_bytes(data)
            p.chmod(0o600)


def _base_config(lab: Lab, h: Host) -> Path:
    """contrib/orch/web-<role>.toml with the lab's control link, etcd and uplink."""
    text = (REPO / "contrib" / "orch" / f"web-{h.role}.toml").read_text()
    text = text.replace("10.0.1.1:", f"{CTL_PRIMARY}:").replace("10.0.1.2:", f"{CTL_SECONDARY}:")
    text = re.sub(r"^etcd_endpoints = .*$",
                  "etcd_endpoints = " + json.dumps(etcd_net.endpoints(lab)), text, flags=re.M)
    text = text.replace('"enp1s0.100"', '"lan0"')  # the lab host's uplink on br0
    out = h.root / f"web-{h.role}.toml"
    out.write_text(h.localise(text))
    return out


def _proxy_config(lab: Lab, h: Host) -> None:
    """Section 5's web-proxy.toml, from contrib/colo-proxy.toml."""
    other = "secondary" if h.role == "primary" else "primary"
    values = {"tap": h.tap, "forward": "fwd0", "uplink": "lan0", "vm_mac": VM_MAC,
              "peer_mac": FWD_MACS[other], "key_file": str(h.path("/etc/colo/web.key")),
              "instance": f"{lab.name}{h.name}", "lock_dir": str(h.path("/run/colo/locks"))}
    text = (REPO / "contrib" / "colo-proxy.toml").read_text()
    for key, value in values.items():
        text, n = re.subn(rf'^{key} = "[^"]*"', f'{key} = "{value}"', text, flags=re.M)
        assert n == 1, key
    if lab.accel == "tcg":  # a fresh SVM under TCG lags (colo_lab.lab.TCG_COMPARE_TIMEOUT)
        text = re.sub(r"^compare_timeout = [0-9.]+", f"compare_timeout = {TCG_COMPARE_TIMEOUT}",
                      text, flags=re.M)
    h.path("/etc/colo/web-proxy.toml").write_text(text)


def _domain_xml(lab: Lab, guest: Guest, qcow2: Path) -> Path:
    firmware = "\n".join(f"    <qemu:arg value='{a}'/>" for a in FIRMWARE_ARGS)
    xml = DOMAIN_XML.format(dom_type="kvm" if lab.accel == "kvm" else "qemu",
                            kernel=guest.kernel, initrd=guest.initrd,
                            vm_ip=f"{VM_IP}/{LAN_PLEN}", qcow2=qcow2, mac=VM_MAC,
                            firmware=firmware)
    path = lab.run_dir / "web.xml"  # virsh dumpxml web > web.xml, copied to both hosts
    path.write_text(xml)
    return path


def _import(h: Host, xml: Path, base: Path, qemu: Path) -> str:
    """Section 6: coloctl import-libvirt --xml ... --base ... > /etc/colo/web.toml."""
    res = h.run([str(BIN / "coloctl"), "import-libvirt", "--xml", str(xml), "--base", str(base),
                 "--tap", h.tap, "--qemu", str(qemu), "--run-dir", str(h.path("/run/colo")),
                 "--log-dir", str(h.path("/var/log/colo")),
                 "--image-dir", str(h.path("/var/lib/colo"))])
    assert res.returncode == 0, res.stderr
    assert "not carried over: 1 x <graphics>" in res.stderr  # it says what it left behind
    h.path("/etc/colo/web.toml").write_text(res.stdout)
    return res.stdout


def _before_first_start(h: Host, imported: str) -> None:
    """Section 7: the commands import-libvirt printed, as DEPLOY.md says per host: the
    primary converts libvirt's image, the secondary makes an image of its size."""
    block = imported.split("# Before the first start", 1)[1].split("# Not carried over", 1)[0]
    commands = [shlex.split(line.removeprefix("#").split("    #")[0])
                for line in block.splitlines()[1:] if line.startswith("#   ")]
    assert [c[0] for c in commands] == ["qemu-img", "coloctl"], commands
    convert, prepare = commands
    prepare[0] = str(BIN / "coloctl")
    if h.role == "primary":
        res = h.run(convert)
        assert res.returncode == 0, res.stderr
    else:
        prepare += ["--size", DISK_SIZE]
    res = h.run(prepare)
    assert res.returncode == 0, res.stdout + res.stderr


def _checks_and_firewall(h: Host) -> None:
    """Sections 8 and 9."""
    cfg = str(h.path("/etc/colo/web.toml"))
    res = h.run([str(BIN / "colo-orch"), "check", "--config", cfg])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ok   config" in res.stdout and "ok   arbiter" in res.stdout, res.stdout
    res = h.run([str(BIN / "colo-proxy"), "check", "-c", str(h.path("/etc/colo/web-proxy.toml")),
                 "--role", h.role])
    assert res.returncode == 0, res.stdout + res.stderr
    rules = h.path("/etc/colo/web.nft")
    res = h.run([str(BIN / "colo-orch"), "firewall", "--config", cfg])
    assert res.returncode == 0, res.stderr
    rules.write_text(res.stdout)
    res = h.run(["nft", "-f", str(rules)])
    assert res.returncode == 0, res.stderr


def exec_start(h: Host) -> list[str]:
    """The unit's ExecStart for instance `web` on this host: %i, %H and the paths put in."""
    m = re.search(r"^ExecStart=(.*)$", UNIT.read_text(), re.M)
    assert m is not None
    argv = shlex.split(m.group(1).replace("%i", PAIR).replace("%H", h.name))
    assert argv[0] == "/usr/bin/colo-orch", argv
    return [str(BIN / "colo-orch"), *(str(h.path(a)) if a.startswith("/") else a
                                      for a in argv[1:])]


class NotifySocket:
    """What systemd gives a Type=notify unit: a datagram socket named by NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def received(self) -> list[str]:
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return self.messages

    def ready(self) -> bool:
        return any("READY=1" in m.split("\n") for m in self.received())


def _start(h: Host) -> tuple[subprocess.Popen[bytes], NotifySocket]:
    notify = NotifySocket(h.root / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    with open(h.path("/var/log/colo/journal.log"), "ab") as log:
        proc = subprocess.Popen(["ip", "netns", "exec", h.ns, *exec_start(h)], stdout=log,
                                stderr=log, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    return proc, notify


def _status(h: Host) -> dict[str, Any]:
    """`coloctl --config /etc/colo/web.toml status --json`, on the host."""
    res = h.run([str(BIN / "coloctl"), "--config", str(h.path("/etc/colo/web.toml")),
                 "status", "--json"], timeout=20)
    try:
        data = json.loads(res.stdout) if res.returncode == 0 else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def test_deploy_md_on_two_host_namespaces_reaches_protected(lab: Lab) -> None:
    qemu, guest = qemu_binary(), ensure_guest()
    lab.accel = choose_accel(qemu, guest)
    hosts = {role: Host(lab, role) for role in HOSTS}
    _keys(hosts)
    qcow2 = lab.run_dir / "libvirt-web.qcow2"  # the image libvirt ran the VM from
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), DISK_SIZE],
                   check=True, timeout=30)
    xml = _domain_xml(lab, guest, qcow2)
    for h in hosts.values():
        _proxy_config(lab, h)
        imported = _import(h, xml, _base_config(lab, h), qemu)
        _before_first_start(h, imported)
        _checks_and_firewall(h)

    t0 = time.monotonic()
    started = {role: _start(h) for role, h in hosts.items()}
    try:
        for role, (proc, notify) in started.items():
            wait_until(lambda p=proc, n=notify: n.ready() or p.poll() is not None, 60,
                       f"READY=1 from the {role} unit")
            assert proc.poll() is None, hosts[role].path("/var/log/colo/journal.log").read_text()
        seen: dict[str, Any] = {}

        def both_protected() -> bool:
            for role, h in hosts.items():
                seen[role] = _status(h).get("state")
            return all(s == "PROTECTED" for s in seen.values())

        wait_until(both_protected, 240, "both hosts PROTECTED (coloctl status)", every=1.0,
                   detail=lambda: f"states {seen}; logs under {lab.run_dir}/host-*/log")
        print(f"both PROTECTED {time.monotonic() - t0:.1f} s after the units' start")
        table = hosts["primary"].run([str(BIN / "coloctl"), "--config",
                                      str(hosts["primary"].path("/etc/colo/web.toml")), "status"])
        print(table.stdout)
        assert table.returncode == 0 and "pri*" in table.stdout and "sec " in table.stdout
        pri = _status(hosts["primary"])
        assert pri.get("role") == "primary" and pri.get("protection_verified") is True, pri
        # The VM the orchestrators started answers a client through the pair (once its
        # guest has booted: protection may come first), and keeps what it is given on the
        # replicated disk.
        lab.wait_http("/", HOME_PAGE, timeout=60)
        assert lab.http("/kv/deploy", method="PUT", data=b"by DEPLOY.md")[0] == 200
        assert lab.http("/kv/deploy") == (200, b"by DEPLOY.md")
        # The unit's status line (STATUS=) followed the state.
        for role, (_, notify) in started.items():
            assert any(m.startswith(f"STATUS=PROTECTED ({role})") for m in notify.received())
    finally:
        for proc, notify in started.values():
            if proc.poll() is None:
                proc.terminate()
            notify.sock.close()
        for proc, _ in started.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
