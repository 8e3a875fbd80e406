"""The COLO lab: namespaces, bridges, taps and the two VMs of ARCHITECTURE.md's testbed.

```
  client ns ── lan ns (bridge "lan") ──┬── pri ns: br0 ── tapP ── PVM
                                       │     ├─ fwd0 ──────── fwd0 ─┐
                                       │     ├─ ctl0 ──────── ctl0 ─┤
                                       │     └─ mig0 ──────── mig0 ─┤
                                       └── sec ns: br0 ── tapS ── SVM
  pri ns: etcd0 ──┐
  sec ns: etcd0 ──┴── etcdnet ns (bridge "etcd") ── etcd1, etcd2, etcd3 ns (colo_lab.etcd_net)
```
- PVM and SVM have the same MAC and IP (the SVM takes over the PVM's identity).
- `fwd0` is the forward link (mirrored input, SVM output; no addresses; fixed MACs,
  `FWD_MACS`, which each host's colo-proxy is given as its peer's).
- `ctl0` is the hosts' private control link (addresses CTL_PRIMARY/CTL_SECONDARY):
  heartbeats, the orchestrators' API and metrics.
- `mig0` is the migration link (addresses MIG_PRIMARY/MIG_SECONDARY): the COLO migration
  stream, which carries every checkpoint, and the disk replication's NBD. Its own link,
  as a deployment keeps bulk state transfer off the heartbeats' path, so that a fault
  can cut one without the other.
- The secondary host's uplink (`lan0` in the sec ns) starts down: while the pair
  is protected the SVM must never talk to the LAN directly. `set_uplink` flips it
  (failover, or a test reaching the SVM alone).
- `etcd0` is each host's own link to the lab's 3-member etcd cluster (colo_lab.etcd_net).

Everything lives in namespaces named `colo-<name>-*` and a run directory
`/run/colo-lab/<name>`; `down()` removes all of it, also after a crash, without
needing anything from the process that created it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colo_lab import etcd_net, netns
from colo_lab.accel import choose_accel
from colo_lab.cmd import need
from colo_lab.errors import LabError
from colo_lab.guest import Guest, ensure_guest
from colo_lab.paths import run_root
from colo_lab.qemu_build import ensure_qemu
from colo_lab.vm import VM, VMSpec
from colo_lab.wait import wait_until
from colo_orch.backends.qemu.blk.images import create_raw, prepare
from colo_orch.backends.qemu.blk.spec import drive_args
from colo_orch.core.disks import Disk

VM_MAC = "52:54:00:c0:10:01"
VM_IP = "10.99.0.10"
CLIENT_IP = "10.99.0.100"
LAN_PLEN = 24
# The same service over IPv6 (the chaos campaign's ipv6 workload); unique local addresses.
VM_IP6 = "fd99::10"
CLIENT_IP6 = "fd99::100"
LAN_PLEN6 = 64
# Each host's end of the forward link: fixed, so that each host's colo-proxy can be told
# its peer's (`--peer-mac`; the proxies take the link's trusted frames from it only).
FWD_MACS = {"primary": "02:c0:10:f0:00:01", "secondary": "02:c0:10:f0:00:02"}
CTL_PRIMARY = "10.99.1.1"
CTL_SECONDARY = "10.99.1.2"
MIG_PRIMARY = "10.99.3.1"
MIG_SECONDARY = "10.99.3.2"
MIGRATION_PORT = 4444
# colo-proxy's compare_timeout for the lab's VMs when they run under TCG. The proxy's
# default (1 s) suits KVM. Under TCG a freshly loaded SVM starts with an empty translation
# cache: it never ran guest code before the COLO migration. Its first answers can then lag
# the PVM's by more than a second on two shared CPUs (seen: the first SYN-ACK after
# protection began). That is slowness, not divergence. QEMU's colo-compare defaults to
# 3000 ms (qemu-options.hx, compare_timeout).
TCG_COMPARE_TIMEOUT = 5.0
DISK_SIZE = 64 << 20  # the optional replicated disk (ext4, the guest's /data)
NAME_RE = re.compile(r"^[a-z0-9]{1,10}$")
# Labs brought up by this process and not yet down: a failing test shows their logs.
LIVE: set[Lab] = set()
ROLES = ("primary", "secondary")
# A host's links by what they are for, and their names in the host's namespace
# (colo_lab.faults cuts them; `colo-lab status` shows them).
LINKS = {"control": "ctl0", "forward": "fwd0", "migration": "mig0", "uplink": "lan0",
         "etcd": etcd_net.HOST_LINK}
# How long `up` waits for the etcd cluster after the VMs are ready. The members start
# before the VMs and have elected a leader by then (about 2.5 s after their start here).
ETCD_START_S = 30.0


@dataclass(frozen=True)
class Host:
    role: str
    ns: str
    tap: str
    ctl_ip: str
    mig_ip: str  # on the migration link: the COLO migration's and NBD's address


def host_links(pri_ns: str, sec_ns: str) -> None:
    """The two hosts' private links: forward (fixed MACs, FWD_MACS), control and
    migration."""
    netns.veth(pri_ns, "fwd0", sec_ns, "fwd0", a_mac=FWD_MACS["primary"],
               b_mac=FWD_MACS["secondary"])
    netns.veth(pri_ns, "ctl0", sec_ns, "ctl0")
    netns.ip(pri_ns, "addr", "add", f"{CTL_PRIMARY}/24", "dev", "ctl0")
    netns.ip(sec_ns, "addr", "add", f"{CTL_SECONDARY}/24", "dev", "ctl0")
    netns.veth(pri_ns, "mig0", sec_ns, "mig0")
    netns.ip(pri_ns, "addr", "add", f"{MIG_PRIMARY}/24", "dev", "mig0")
    netns.ip(sec_ns, "addr", "add", f"{MIG_SECONDARY}/24", "dev", "mig0")


class Lab:
    """One lab instance. Safe to construct for an existing lab (to inspect or tear down)."""

    def __init__(self, name: str = "lab") -> None:
        if not NAME_RE.match(name):
            raise LabError(
                f"bad lab name '{name}'", "use 1-10 lower-case letters or digits, e.g. --name lab2"
            )
        self.name = name
        self.prefix = f"colo-{name}-"
        self.client_ns = self.prefix + "client"
        self.lan_ns = self.prefix + "lan"
        self.hosts = {
            "primary": Host("primary", self.prefix + "pri", "tapP", CTL_PRIMARY,
                            MIG_PRIMARY),
            "secondary": Host("secondary", self.prefix + "sec", "tapS", CTL_SECONDARY,
                              MIG_SECONDARY),
        }
        self.run_dir = run_root() / name
        self.vms: dict[str, VM] = {}
        self.qemu: Path | None = None
        self.guest: Guest | None = None
        self.accel = "tcg"
        self.disk = False  # VMs get a replicated virtio disk (colo_orch.backends.qemu.blk)
        # The VMs carry QEMU's own colo-compare and filters (colo_lab.qemu_compare).
        self.qemu_compare = False

    # Building --------------------------------------------------------------
    def up(self, *, secondary: str = "standalone", build_only: bool = False,
           disk: bool = False, vms: bool = True, qemu_compare: bool = False) -> None:
        """Create the topology, start the etcd cluster and start the VMs.

        secondary: "standalone" boots the SVM as an independent guest, "incoming"
        starts it waiting for the PVM's COLO migration, "none" starts no SVM.
        disk: give both VMs a virtio disk (one image per host, equal ext4 at start)
        wired for COLO block replication; the guest keeps its key-value store on it.
        vms=False: the network and the etcd cluster only (no QEMU, no guest needed).
        qemu_compare: the VMs are wired for QEMU's colo-compare (colo_lab.qemu_compare);
        the SVM must then be incoming.
        """
        if secondary not in ("standalone", "incoming", "none"):
            raise LabError(f"bad secondary mode '{secondary}'", "use standalone, incoming or none")
        if qemu_compare and secondary != "incoming":
            raise LabError("QEMU's colo-compare pairs a PVM with an incoming SVM",
                           "use secondary='incoming' (colo-lab up --qemu-compare does)")
        if disk and not vms:
            raise LabError("a disk needs the VMs", "leave out --disk or --no-vms")
        _require_root()
        for tool in ("ip", "curl", etcd_net.ETCD, etcd_net.ETCDCTL):
            need(tool)
        if vms or build_only:
            self.qemu = qemu_binary()
            self.guest = ensure_guest()
        if build_only:
            return
        busy = netns.list_ns(self.prefix)
        if busy or self.run_dir.exists():
            raise LabError(
                f"lab '{self.name}' is busy ({', '.join(busy) or self.run_dir} exists)",
                f"run 'colo-lab down --name {self.name}' first, or use another --name",
            )
        if vms:
            assert self.qemu is not None and self.guest is not None
            self.accel = choose_accel(self.qemu, self.guest)
        else:
            self.accel = "none"
        self.run_dir.mkdir(parents=True)
        LIVE.add(self)
        self.disk = disk
        self.qemu_compare = qemu_compare
        self._save_state()
        try:
            if disk:
                self._make_disks()
            self._topology()
            # Before the VMs: the members' election overlaps the guests' boot.
            etcd_net.start(self)
            if vms:
                self.start_vm("primary")
                if secondary != "none":
                    self.start_vm("secondary", incoming=secondary == "incoming")
                self.vms["primary"].wait_ready()
                if secondary == "standalone":
                    self.vms["secondary"].wait_ready()
            etcd_net.wait_healthy(self, ETCD_START_S)
        except BaseException:
            self.down()
            raise

    def _topology(self) -> None:
        for ns in (self.client_ns, self.lan_ns, *(h.ns for h in self.hosts.values())):
            netns.add(ns)
        netns.bridge(self.lan_ns, "lan", [])
        netns.veth(self.lan_ns, "p-client", self.client_ns, "eth0")
        netns.ip(self.lan_ns, "link", "set", "p-client", "master", "lan")
        netns.ip(self.client_ns, "addr", "add", f"{CLIENT_IP}/{LAN_PLEN}", "dev", "eth0")
        # nodad: usable at once (the guests skip duplicate address detection too).
        netns.ip(self.client_ns, "addr", "add", f"{CLIENT_IP6}/{LAN_PLEN6}", "dev", "eth0",
                 "nodad")
        pri, sec = self.hosts["primary"], self.hosts["secondary"]
        for h in (pri, sec):
            port = "p-" + h.role[:3]
            netns.veth(self.lan_ns, port, h.ns, "lan0")
            netns.ip(self.lan_ns, "link", "set", port, "master", "lan")
            netns.tap(h.ns, h.tap)
            netns.bridge(h.ns, "br0", ["lan0", h.tap])
            # br_netfilter is built in and defaults to on: bridged frames would
            # traverse iptables in every namespace. Off, as on a host that keeps its
            # bridges out of iptables: the proxy turns on its tap's bridge's own
            # nf_call_iptables, and nothing else.
            _try_sysctl(h.ns, "net.bridge.bridge-nf-call-iptables", "0")
            _try_sysctl(h.ns, "net.bridge.bridge-nf-call-ip6tables", "0")
        host_links(pri.ns, sec.ns)
        self.set_uplink("secondary", False)
        etcd_net.build(self)

    def disks(self, role: str) -> tuple[Disk, ...]:
        """The replicated disk of a host: its image and its secondary layers."""
        if not self.disk:
            return ()
        p = self.run_dir / role[:3]
        return (Disk("disk0", f"{p}-disk.raw", f"{p}-active.qcow2", f"{p}-hidden.qcow2"),)

    def _make_disks(self) -> None:
        # Formatted here (the guest's busybox has no ext4 mkfs); the secondary host's
        # copy starts equal, as `coloctl disk prepare --copy-from` would make it.
        pri, sec = self.disks("primary")[0], self.disks("secondary")[0]
        create_raw(pri.image, DISK_SIZE)
        subprocess.run(["mkfs.ext4", "-q", "-F", pri.image], check=True, capture_output=True)
        prepare(sec.image, sec.active, sec.hidden, copy_from=pri.image)
        prepare(pri.image, pri.active, pri.hidden)

    def vm_spec(self, role: str, *, incoming: bool = False, with_disk: bool = True) -> VMSpec:
        """with_disk=False leaves out the drive arguments (an orchestrator adds its own)."""
        h = self.hosts[role]
        disk_args = drive_args(self.disks(role), secondary=incoming) if with_disk else []
        if self.qemu_compare:
            from colo_lab import qemu_compare

            disk_args = [*disk_args, *qemu_compare.args(role)]
        return VMSpec(
            name="pvm" if role == "primary" else "svm",
            ns=h.ns,
            tap=h.tap,
            mac=VM_MAC,
            ip_cidr=f"{VM_IP}/{LAN_PLEN}",
            ip6_cidr=f"{VM_IP6}/{LAN_PLEN6}",
            incoming=f"tcp:{h.mig_ip}:{MIGRATION_PORT}" if incoming else None,
            accel=self.accel,
            extra_args=disk_args,
        )

    def start_vm(self, role: str, *, incoming: bool = False, spec: VMSpec | None = None) -> VM:
        """Start (or restart) the VM of one host; the old one, if any, is killed first."""
        self._ensure_built()
        assert self.qemu is not None and self.guest is not None
        old = self.vms.pop(role, None)
        if old is not None:
            old.kill()
        if incoming:
            for d in self.disks(role):  # a secondary starts from empty layers
                prepare(d.image, d.active, d.hidden)
        vm = VM(spec or self.vm_spec(role, incoming=incoming), self.run_dir, self.qemu, self.guest)
        vm.start()
        self.vms[role] = vm
        self._save_state()
        return vm

    def vm(self, role: str) -> VM:
        """The VM of a host, also in a process that did not start it (from the run dir)."""
        if role not in self.vms:
            self._ensure_built()
            assert self.qemu is not None and self.guest is not None
            self.vms[role] = VM(self.vm_spec(role), self.run_dir, self.qemu, self.guest)
        return self.vms[role]

    def _ensure_built(self) -> None:
        if self.qemu is None or self.guest is None:
            from colo_lab.guest import cached_guest
            from colo_lab.qemu_build import cached_binary

            self.qemu = self.qemu or _override_qemu() or cached_binary() or ensure_qemu()
            self.guest = self.guest or cached_guest() or ensure_guest()

    # Operating -------------------------------------------------------------
    def set_uplink(self, role: str, up: bool) -> None:
        """Connect or disconnect a host's bridge from the LAN (the VM keeps running)."""
        netns.ip(self.hosts[role].ns, "link", "set", "lan0", "up" if up else "down")
        # A port going down flushes the LAN bridge's entries for it, so the
        # shared MAC is learned again on whichever port carries it next.

    def client(self, argv: list[str], *, timeout: float = 30.0, check: bool = True) -> str:
        return netns.sh(self.client_ns, argv, timeout=timeout, check=check)

    def http(
        self, path: str, *, method: str = "GET", data: bytes | None = None, timeout: float = 10.0
    ) -> tuple[int, bytes]:
        """One HTTP request from the client namespace to the VM's service: (status, body)."""
        argv = ["curl", "-sS", "-m", str(timeout), "-o", "-", "-w", "\n%{http_code}", "-X", method]
        if data is not None:
            argv += ["--data-binary", "@-", "-H", "Content-Type: application/octet-stream"]
        argv.append(f"http://{VM_IP}{path}")
        proc = subprocess.run(
            ["ip", "netns", "exec", self.client_ns, *argv],
            input=data, capture_output=True, timeout=timeout + 5, check=False,
        )
        if proc.returncode != 0:
            raise LabError(f"curl {method} {path} failed: {proc.stderr.decode().strip()}")
        body, _, code = proc.stdout.rpartition(b"\n")
        return int(code), body

    def wait_http(self, path: str, expect: bytes, timeout: float = 30.0, *,
                  attempt: float = 3.0) -> None:
        """Ask until the service answers `expect`, each request given `attempt` s (more
        where its output is held long: colo-proxy on nested Xen)."""
        last = ""

        def answered() -> bool:
            nonlocal last
            try:
                code, body = self.http(path, timeout=attempt)
            except (LabError, subprocess.TimeoutExpired) as exc:
                last = str(exc)
                return False
            last = f"{code} {body[:60]!r}"
            return code == 200 and body == expect

        wait_until(answered, timeout, f"the service at {VM_IP}{path} to answer {expect!r}",
                   every=0.2, detail=lambda: f"last answer: {last}")

    # Inspecting and tearing down ------------------------------------------
    def status(self) -> dict[str, Any]:
        namespaces = netns.list_ns(self.prefix)
        vms = {}
        for role in ROLES:
            pid_file = self.run_dir / ("pvm.pid" if role == "primary" else "svm.pid")
            pid = _read_pid(pid_file)
            vms[role] = {"pid": pid, "running": pid is not None and _pid_alive(pid)}
        return {
            "name": self.name,
            "up": bool(namespaces),
            "namespaces": namespaces,
            "run_dir": str(self.run_dir) if self.run_dir.exists() else None,
            "vms": vms,
            "vm_ip": VM_IP,
            "accel": self._saved_state().get("accel"),
        }

    def down(self) -> list[str]:
        """Remove every namespace, process and file of this lab; returns what was removed."""
        removed: list[str] = []
        for vm in self.vms.values():
            vm.close_monitors()
        namespaces = netns.list_ns(self.prefix)
        for ns in namespaces:
            netns.kill_all(ns)
        # Processes of the lab outside its namespaces (none by design, but a
        # crashed run could leave a QEMU whose namespace was already deleted).
        for pid in _pids_using(self.run_dir):
            try:
                os.kill(pid, 9)
                removed.append(f"process {pid}")
            except ProcessLookupError:
                pass
        for ns in namespaces:
            netns.delete(ns)
            removed.append(f"namespace {ns}")
        LIVE.discard(self)
        keep = os.environ.get("COLO_LAB_KEEP_LOGS")
        if keep and self.run_dir.exists():
            self.keep_logs(Path(keep))
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)
            removed.append(f"run dir {self.run_dir}")
        self.vms.clear()
        return removed

    def logs(self) -> list[Path]:
        """The lab's logs, generated configs and core dumps taken out of a nested host (no
        images, sockets or pid files)."""
        if not self.run_dir.is_dir():
            return []
        return sorted(p for p in self.run_dir.iterdir()
                      if p.is_file() and p.suffix in (".log", ".toml", ".json", ".core"))

    def keep_logs(self, dest: Path) -> Path:
        """Copy logs() to dest/<name>-<time>/ (COLO_LAB_KEEP_LOGS does this at every down)."""
        out = dest / f"{self.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        out.mkdir(parents=True, exist_ok=True)
        for p in self.logs():
            shutil.copy2(p, out / p.name)
        return out

    def leftovers(self) -> list[str]:
        """What of this lab still exists (empty after a clean down)."""
        left = [f"namespace {ns}" for ns in netns.list_ns(self.prefix)]
        left += [f"process {pid}" for pid in _pids_using(self.run_dir)]
        if self.run_dir.exists():
            left.append(f"run dir {self.run_dir}")
        return left

    def _save_state(self) -> None:
        if self.run_dir.exists():
            state = {
                "name": self.name,
                "accel": self.accel,
                "disk": self.disk,
                "qemu": str(self.qemu),
                "kernel": str(self.guest.kernel) if self.guest else None,
                "vms": {r: v.pid() for r, v in self.vms.items()},
            }
            (self.run_dir / "state.json").write_text(json.dumps(state, indent=1))

    def _saved_state(self) -> dict[str, Any]:
        try:
            data = json.loads((self.run_dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def _override_qemu() -> Path | None:
    env = os.environ.get("COLO_QEMU")
    if not env:
        return None
    path = Path(env)
    if not os.access(path, os.X_OK):
        raise LabError(f"COLO_QEMU={env} is not an executable", "unset it or fix the path")
    return path


def qemu_binary() -> Path:
    """$COLO_QEMU if set, else the lab's patched build (built on first use)."""
    return _override_qemu() or ensure_qemu()


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (namespaces, taps, bridges)", "run it with sudo")


def _try_sysctl(ns: str, key: str, value: str) -> None:
    try:
        netns.sysctl(ns, key, value)
    except LabError:
        pass  # the key exists only once br_netfilter is active in that namespace


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pids_using(run_dir: Path) -> list[int]:
    """Processes whose command line names the run directory (the lab's QEMUs)."""
    needle = str(run_dir).encode() + b"/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found
