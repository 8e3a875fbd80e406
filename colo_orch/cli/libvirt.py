"""`coloctl import-libvirt`: the orchestrator's VM keys from a libvirt domain's XML.

libvirt describes a VM as a domain XML (`virsh dumpxml`); the orchestrator starts QEMU
itself from `vm_command` and adds the replicated drives of `[[disks]]` (docs/DISKS.md).
This writes both from the XML, with what COLO needs of the command line (the two QMP
sockets, the pidfile, `-nodefaults`, the VM's NIC on the tap colo-proxy watches), and says
what it cannot carry over and why, so that nothing is dropped silently.

The conversion is a pure function of the XML text and the options (`convert`); the
command line around it runs virsh, merges the keys into a config (--base) and checks the
result with the orchestrator's own loader before printing it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colo_orch.core.config import ConfigError, from_dict
from colo_orch.core.disks import Disk

EPILOG = """\
examples:
  coloctl import-libvirt web                      the domain "web" of qemu:///system (virsh dumpxml)
  coloctl import-libvirt --xml web.xml            a saved domain XML (virsh dumpxml web > web.xml)
  coloctl import-libvirt web --base contrib/orch/web-primary.toml > /etc/colo/web.toml
                                                  a whole config: the example's keys, this VM's

It prints TOML: qmp, qmp_events, vm_pidfile, vm_log, vm_command and [[disks]], or with
--base the whole config with those keys replaced (checked by the orchestrator's loader).
What it cannot carry over is listed on stderr and in the output's comments, with the
commands that make the disk images (qemu-img convert). Stop the domain in libvirt first
(virsh shutdown, virsh autostart --disable): the orchestrator starts the VM from now on.
Exit status: 0 written, 1 the domain cannot be protected (nothing written), 2 usage.
"""
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
# What the orchestrator's paths default to; the same as contrib/orch/*.toml.
RUN_DIR = "/run/colo"
LOG_DIR = "/var/log/colo"
IMAGE_DIR = "/var/lib/colo"
# libvirt's memory units (formatdomain.html, "Memory Allocation"): bytes each.
_UNITS = {"b": 1, "bytes": 1, "kb": 10**3, "k": 2**10, "kib": 2**10, "mb": 10**6,
          "m": 2**20, "mib": 2**20, "gb": 10**9, "g": 2**30, "gib": 2**30, "tb": 10**12,
          "t": 2**40, "tib": 2**40}
# NIC models QEMU knows by the same name as libvirt, as QEMU device names.
_NIC_MODELS = {"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e",
               "rtl8139": "rtl8139", "vmxnet3": "vmxnet3"}
# Devices without state COLO must keep equal, which a server VM does without:
# left out, with the reason printed once per kind.
_LEFT_OUT = {
    "graphics": "no display: the VM runs with -display none (the serial log is kept)",
    "video": "no display adapter (-nodefaults)",
    "input": "no input devices (-nodefaults)",
    "sound": "no sound device",
    "channel": "no guest channels (the guest agent's socket is libvirt's)",
    "redirdev": "no USB redirection",
    "smartcard": "no smartcard",
    "memballoon": "no balloon: the VM keeps all of its memory, as COLO migrates all of it",
    "rng": "no virtio-rng (the guest seeds from its own sources)",
    "watchdog": "no watchdog (not tried with COLO here)",
    "panic": "no panic notifier",
    "tpm": "no TPM: its emulator (swtpm) is a process beside QEMU that the orchestrator "
           "does not run",
    "console": "",  # the serial port below covers it
    "serial": "",
    "controller": "",  # QEMU adds the buses the devices we carry need
    "emulator": "",
    "disk": "", "interface": "",  # handled one by one
}
# Never carried: the VM cannot be migrated with them, and COLO migrates it at every
# checkpoint (QEMU refuses migration with a passthrough device: a migration blocker).
_BLOCKERS = {
    "hostdev": "a passthrough device (migration blocker: remove it from the guest)",
    "filesystem": "a shared host filesystem (virtiofs/9p: its state is on the host, not "
                  "migrated; move the data onto a replicated disk)",
    "shmem": "shared memory with the host (not migrated)",
    "vsock": "a vsock device (its connections do not follow the VM)",
}


class ImportProblem(ValueError):
    """The XML is not a domain this can protect: str() says why and what to do."""


@dataclass
class Imported:
    """The orchestrator's VM keys for one domain, and what did not come along."""

    name: str
    vm_command: list[str]
    disks: list[Disk]
    qmp: str
    qmp_events: str
    vm_pidfile: str
    vm_log: str
    mac: str = ""
    bridge: str = ""
    tap: str = ""
    commands: list[str] = field(default_factory=list)  # to run before the first start
    notes: list[str] = field(default_factory=list)  # not carried over, and why

    def keys(self) -> dict[str, Any]:
        return {"qmp": self.qmp, "qmp_events": self.qmp_events, "vm_pidfile": self.vm_pidfile,
                "vm_log": self.vm_log, "vm_command": self.vm_command,
                "disks": [{"id": d.id, "image": d.image, "active": d.active,
                           "hidden": d.hidden} for d in self.disks]}


def _bytes(el: ET.Element | None, what: str) -> int:
    text = (el.text or "").strip() if el is not None else ""
    if el is None or not text:
        raise ImportProblem(f"the domain has no <{what}>: not a libvirt domain XML?")
    unit = el.get("unit", "KiB").lower()
    if unit not in _UNITS or not text.isdigit():
        raise ImportProblem(f"<{what} unit='{el.get('unit')}'>{text}: not a size")
    return int(text) * _UNITS[unit]


def _cpu(root: ET.Element, notes: list[str]) -> list[str]:
    cpu = root.find("cpu")
    if cpu is None:
        return []  # libvirt then leaves QEMU's default model, and so do we
    mode = cpu.get("mode", "custom")
    if mode in ("host-passthrough", "maximum"):
        return ["-cpu", "host" if mode == "host-passthrough" else "max"]
    if mode == "host-model":
        notes.append("cpu mode='host-model' has no QEMU equivalent: -cpu host instead "
                     "(both hosts must have the same CPU model: the CPU state moves at "
                     "every checkpoint)")
        return ["-cpu", "host"]
    model = (cpu.findtext("model") or "").strip()
    if not model:
        return ["-cpu", "host"]
    flags = []
    for f in cpu.findall("feature"):
        policy, name = f.get("policy", "require"), f.get("name", "")
        if policy in ("require", "force"):
            flags.append(f"+{name}")
        elif policy in ("disable", "forbid"):
            flags.append(f"-{name}")
        else:
            notes.append(f"cpu feature {name} (policy '{policy}'): not carried, it "
                         "depends on the host libvirt ran on")
    return ["-cpu", ",".join([model, *flags])]


def _smp(root: ET.Element) -> list[str]:
    vcpus = (root.findtext("vcpu") or "1").strip()
    if not vcpus.isdigit():
        raise ImportProblem(f"<vcpu>{vcpus}</vcpu> is not a number")
    topo = root.find("cpu/topology")
    if topo is None:
        return ["-smp", vcpus]
    parts = [vcpus] + [f"{k}={topo.get(k)}" for k in ("sockets", "dies", "cores", "threads")
                       if topo.get(k) and not (k == "dies" and topo.get(k) == "1")]
    return ["-smp", ",".join(parts)]


def _boot(root: ET.Element, pair: str, image_dir: str, notes: list[str],
          commands: list[str]) -> list[str]:
    os_el = root.find("os")
    if os_el is None:
        raise ImportProblem("the domain has no <os>: not a libvirt domain XML?")
    argv = []
    for tag, flag in (("kernel", "-kernel"), ("initrd", "-initrd"), ("cmdline", "-append")):
        text = (os_el.findtext(tag) or "").strip()
        if text:
            argv += [flag, text]
    loader = os_el.find("loader")
    if loader is not None and (loader.text or "").strip():
        code = (loader.text or "").strip()
        if loader.get("type") == "pflash":
            argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={_esc(code)}"]
            nvram = (os_el.findtext("nvram") or "").strip()
            if nvram:
                ours = f"{image_dir}/{pair}-vars.fd"
                argv += ["-drive", f"if=pflash,format=raw,file={_esc(ours)}"]
                commands.append(f"cp {nvram} {ours}    # the UEFI variables, on both hosts "
                                "(not replicated: only [[disks]] are)")
        else:
            argv += ["-bios", code]
    elif os_el.get("firmware"):
        notes.append(f"os firmware='{os_el.get('firmware')}' (libvirt picks the files): "
                     "not carried; dump the running domain's XML, which names the loader")
    for boot in os_el.findall("boot"):
        if boot.get("dev") not in (None, "hd"):
            notes.append(f"boot dev='{boot.get('dev')}': not carried (the VM boots from "
                         "its first disk)")
    return argv


def _esc(value: str) -> str:
    """QEMU option values double a comma to mean a literal one."""
    return value.replace(",", ",,")


def _disks(devices: ET.Element, pair: str, image_dir: str, notes: list[str],
           commands: list[str]) -> list[Disk]:
    disks: list[Disk] = []
    for el in devices.findall("disk"):
        target = el.find("target")
        dev = target.get("dev", "?") if target is not None else "?"
        kind, device = el.get("type", "file"), el.get("device", "disk")
        if device != "disk":
            notes.append(f"{dev}: a {device}: not carried (only disks are replicated; "
                         "attach install media by hand when needed)")
            continue
        src_el = el.find("source")
        src = (src_el.get("file") or src_el.get("dev") or "") if src_el is not None else ""
        driver = el.find("driver")
        fmt = driver.get("type", "raw") if driver is not None else "raw"
        if kind not in ("file", "block") or not src:
            notes.append(f"{dev}: a disk of type '{kind}' (network or pool storage): not "
                         "carried; copy it into a raw image (qemu-img convert -O raw) and "
                         "add it as a [[disks]] entry")
            continue
        if el.find("readonly") is not None or el.find("shareable") is not None:
            notes.append(f"{dev}: {src} is read-only or shared: not carried (a replicated "
                         "disk belongs to this VM alone)")
            continue
        if fmt not in ("raw", "qcow2"):
            notes.append(f"{dev}: {src} is {fmt}: not carried; convert it to raw "
                         "(qemu-img convert -O raw) and add it as a [[disks]] entry")
            continue
        i = len(disks)
        base = f"{image_dir}/{pair}-disk{i}"
        if fmt == "raw" and kind == "file":
            image = src  # used in place: libvirt must no longer start the domain
        else:
            image = f"{base}.raw"
            commands.append(f"qemu-img convert -p -f {fmt} -O raw {src} {image}")
            if fmt == "qcow2":
                notes.append(f"{dev}: {src} is qcow2: replicated disks are raw, so it is "
                             f"converted to {image}; its internal snapshots and backing "
                             "chain are not kept (the raw image holds the current contents)")
            else:
                notes.append(f"{dev}: the block device {src} is copied to {image} (the "
                             "replicated image is a file)")
        bus = target.get("bus", "virtio") if target is not None else "virtio"
        if bus != "virtio":
            notes.append(f"{dev}: bus '{bus}' becomes virtio-blk (the orchestrator's drive); "
                         "the guest needs virtio drivers and should mount by UUID or label")
        disks.append(Disk(f"disk{i}", image, f"{base}-active.qcow2", f"{base}-hidden.qcow2"))
    for d in disks:  # the same paths on both hosts; the secondary's image only needs the size
        commands.append(f"coloctl disk prepare --image {d.image} --active {d.active} "
                        f"--hidden {d.hidden}    # on both hosts; on the secondary add "
                        "--size (the image's size): the primary copies the contents in")
    return disks


def _nic(devices: ET.Element, tap: str, notes: list[str]) -> tuple[list[str], str, str]:
    nics = devices.findall("interface")
    if not nics:
        notes.append("no network interface: colo-proxy compares the VM's network output, "
                     "so add one (a tap on the bridge) before protecting it")
        return [], "", ""
    for extra in nics[1:]:
        other = extra.find("mac")
        notes.append(f"interface {other.get('address') if other is not None else '?'}: not "
                     "carried (colo-proxy compares one NIC's output)")
    el = nics[0]
    kind = el.get("type", "")
    mac_el, src, model_el = el.find("mac"), el.find("source"), el.find("model")
    mac = mac_el.get("address", "") if mac_el is not None else ""
    bridge = ""
    if src is not None:
        bridge = src.get("bridge") or (f"the bridge of libvirt network '{src.get('network')}'"
                                       if src.get("network") else "")
    if kind not in ("bridge", "network", "ethernet"):
        notes.append(f"the interface of type '{kind}' (macvtap, passthrough or user "
                     "networking) becomes a tap: put the tap on the bridge of the client "
                     "LAN (docs/DEPLOY.md)")
    model = model_el.get("type", "virtio") if model_el is not None else "virtio"
    device = _NIC_MODELS.get(model)
    if device is None:
        notes.append(f"NIC model '{model}': not known here, virtio-net-pci instead")
        device = "virtio-net-pci"
    if not mac:
        notes.append("the interface has no MAC: give -device ... mac= the address both VMs "
                     "share (libvirt's dumpxml always names one)")
    argv = ["-netdev", f"tap,id=hn0,ifname={tap},script=no,downscript=no,vhost=off",
            "-device", f"{device},netdev=hn0" + (f",mac={mac}" if mac else "")]
    return argv, mac, bridge


def convert(xml_text: str, *, pair: str = "", tap: str = "", qemu: str = "",
            run_dir: str = RUN_DIR, log_dir: str = LOG_DIR,
            image_dir: str = IMAGE_DIR) -> Imported:
    """The orchestrator's VM keys for the domain of `xml_text`. pair: the pair's name
    (paths derive from it; default the domain's name), tap: the VM's tap (default
    PAIR-tap), qemu: the QEMU binary (default the domain's emulator)."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ImportProblem(f"not XML: {exc}; give virsh dumpxml's output") from exc
    if root.tag != "domain":
        raise ImportProblem(f"the document is a <{root.tag}>, not a libvirt <domain>")
    dom_type = root.get("type", "")
    if dom_type not in ("kvm", "qemu"):
        raise ImportProblem(f"a domain of type '{dom_type}': only QEMU/KVM domains "
                            "(type 'kvm' or 'qemu') are carried; see docs/xen.md for Xen")
    name = (root.findtext("name") or "").strip()
    pair = pair or re.sub(r"[^A-Za-z0-9-]", "-", name) or "vm"
    tap = tap or f"{pair}-tap"[:15]
    os_type = root.find("os/type")
    arch = os_type.get("arch", "x86_64") if os_type is not None else "x86_64"
    if arch != "x86_64":
        raise ImportProblem(f"arch '{arch}': only x86_64 guests are carried")
    devices = root.find("devices")
    if devices is None:
        raise ImportProblem("the domain has no <devices>: not a libvirt domain XML?")
    notes: list[str] = []
    commands: list[str] = []
    blockers = [f"<{el.tag}>: {_BLOCKERS[el.tag]}" for el in devices if el.tag in _BLOCKERS]
    if blockers:
        raise ImportProblem("cannot be protected: " + "; ".join(blockers))
    qemu = qemu or (devices.findtext("emulator") or "").strip() or "qemu-system-x86_64"
    mem = _bytes(root.find("memory"), "memory")
    argv = [qemu, "-accel", "kvm" if dom_type == "kvm" else "tcg", "-name", _esc(pair)]
    uuid = (root.findtext("uuid") or "").strip()
    if uuid:
        argv += ["-uuid", uuid]
    if os_type is not None and os_type.get("machine"):
        argv += ["-machine", os_type.get("machine", "")]
    argv += _cpu(root, notes)
    argv += ["-m", str(math.ceil(mem / 2**20)), *_smp(root)]
    clock = root.find("clock")
    offset = clock.get("offset", "utc") if clock is not None else "utc"
    if offset in ("utc", "localtime"):
        argv += ["-rtc", f"base={offset}"]
    else:
        notes.append(f"clock offset='{offset}': not carried, the clock runs in UTC")
    argv += _boot(root, pair, image_dir, notes, commands)
    if (root.findtext("on_reboot") or "").strip() == "destroy":
        argv.append("-no-reboot")  # libvirt's own translation of on_reboot=destroy
    # <qemu:commandline> (libvirt's escape hatch: arguments passed to QEMU as they are).
    extra = [a.get("value", "") for a in root.findall(f"{{{QEMU_NS}}}commandline/"
                                                      f"{{{QEMU_NS}}}arg")]
    if extra:
        argv += extra
        notes.append(f"<qemu:commandline> {' '.join(extra)}: carried as it is; check that "
                     "it adds no device with state outside the VM")
    disks = _disks(devices, pair, image_dir, notes, commands)
    nic, mac, bridge = _nic(devices, tap, notes)
    qmp, events = f"{run_dir}/{pair}-qmp.sock", f"{run_dir}/{pair}-qmp-events.sock"
    pidfile = f"{run_dir}/{pair}-qemu.pid"
    # What the orchestrator relies on (docs/DEPLOY.md, "The configs"): no default devices,
    # the serial console in a file, one NIC on the proxy's tap, its two monitors, a pidfile.
    argv += ["-display", "none", "-nodefaults", "-serial", f"file:{log_dir}/{pair}-serial.log",
             *nic, "-qmp", f"unix:{qmp},server=on,wait=off",
             "-qmp", f"unix:{events},server=on,wait=off", "-pidfile", pidfile]
    kinds = Counter(el.tag for el in devices if _LEFT_OUT.get(el.tag))
    notes += [f"{n} x <{tag}>: {_LEFT_OUT[tag]}" for tag, n in sorted(kinds.items())]
    for tag in sorted({el.tag for el in devices} - set(_LEFT_OUT) - set(_BLOCKERS)):
        notes.append(f"<{tag}>: not carried (not known to this import)")
    if root.find("memoryBacking") is not None:
        notes.append("<memoryBacking> (hugepages, locked or shared memory): not carried")
    if root.find("cputune") is not None or root.find("numatune") is not None:
        notes.append("CPU pinning and NUMA tuning: not carried (pin the unit with systemd's "
                     "CPUAffinity= if needed)")
    if not disks:
        notes.append("no disk is replicated: the VM's state on disk would not survive a "
                     "failover")
    return Imported(pair, argv, disks, qmp, events, pidfile, f"{log_dir}/{pair}-qemu.log",
                    mac=mac, bridge=bridge, tap=tap, commands=commands, notes=notes)


# TOML output --------------------------------------------------------------------------
def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{v} has no TOML form here")
        return repr(v)
    if isinstance(v, str):
        # JSON's escapes are TOML's (\", \\, \n, \uXXXX); non-ASCII stays as it is, since
        # JSON would write characters past U+FFFF as surrogate pairs, which TOML refuses.
        # DEL is a control character to TOML, not to JSON.
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        inline = "[" + ", ".join(_value(x) for x in v) + "]"
        if len(inline) <= 80 or not all(isinstance(x, str) for x in v):
            return inline
        # A long argv: a line per option and its value, as one would write it.
        lines, i = [], 0
        while i < len(v):
            n = 2 if (str(v[i]).startswith("-") and i + 1 < len(v)
                      and not str(v[i + 1]).startswith("-")) else 1
            lines.append("  " + ", ".join(_value(x) for x in v[i:i + n]) + ",\n")
            i += n
        return "[\n" + "".join(lines) + "]"
    raise ValueError(f"{type(v).__name__} has no TOML form here")


def toml_document(data: dict[str, Any]) -> str:
    """`data` (the shape of an orchestrator config: values, tables, arrays of tables) as
    TOML that tomllib reads back equal."""
    lines: list[str] = []
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in data.items()
              if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)}
    for k, v in data.items():
        if k not in tables and k not in arrays:
            lines.append(f"{k} = {_value(v)}")
    for k, v in tables.items():
        lines += ["", f"[{k}]", *(f"{kk} = {_value(vv)}" for kk, vv in v.items())]
    for k, items in arrays.items():
        for item in items:
            lines += ["", f"[[{k}]]", *(f"{kk} = {_value(vv)}" for kk, vv in item.items())]
    return "\n".join(lines) + "\n"


def render(imp: Imported, base: dict[str, Any] | None = None, source: str = "") -> str:
    """The TOML to print: the VM keys (with `base`: the whole config), headed by comments
    that say what to do before the first start and what was not carried over."""
    head = [f"# Written by coloctl import-libvirt from {source or 'a domain XML'}."]
    if imp.tap:
        head += [f"# Its NIC: the tap {imp.tap}" + (f" on {imp.bridge}" if imp.bridge else "")
                 + (f", MAC {imp.mac}" if imp.mac else "") + ". In colo-proxy's config: "
                 f'tap = "{imp.tap}"' + (f', vm_mac = "{imp.mac}"' if imp.mac else "") + "."]
    if imp.commands:
        head += ["# Before the first start (the domain stopped in libvirt):"]
        head += [f"#   {c}" for c in imp.commands]
    if imp.notes:
        head += ["# Not carried over:"] + [f"#   - {n}" for n in imp.notes]
    data = dict(base or {})
    data.update(imp.keys())
    if not imp.disks:
        data.pop("disks", None)
    return "\n".join(head) + "\n" + toml_document(data)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coloctl import-libvirt", description=__doc__.split("\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("domain", nargs="?", help="a libvirt domain (read with virsh dumpxml)")
    p.add_argument("--xml", metavar="FILE", help="read the domain XML from FILE instead")
    p.add_argument("--connect", metavar="URI", default="qemu:///system",
                   help="virsh's connection (default qemu:///system)")
    p.add_argument("--base", metavar="CONFIG",
                   help="an orchestrator config whose VM keys are replaced: print it whole")
    p.add_argument("--pair", help="the pair's name, for the paths (default: --base's name, "
                                  "else the domain's)")
    p.add_argument("--tap", help="the VM's tap, as colo-proxy's tap (default PAIR-tap)")
    p.add_argument("--qemu", metavar="PATH",
                   help="the QEMU binary (default the domain's emulator); it must run COLO")
    p.add_argument("--run-dir", default=RUN_DIR, help=f"sockets and pidfile (default {RUN_DIR})")
    p.add_argument("--log-dir", default=LOG_DIR, help=f"QEMU's logs (default {LOG_DIR})")
    p.add_argument("--image-dir", default=IMAGE_DIR,
                   help=f"raw images and the secondary's layers (default {IMAGE_DIR})")
    return p


def _virsh(args: list[str]) -> str:
    try:
        res = subprocess.run(["virsh", *args], capture_output=True, text=True, timeout=30,
                             check=False)
    except FileNotFoundError:
        raise ImportProblem("virsh is not installed: apt-get install libvirt-clients, or "
                            "give the XML with --xml FILE") from None
    except subprocess.TimeoutExpired:
        raise ImportProblem(f"virsh {' '.join(args)} did not answer in 30 s") from None
    if res.returncode != 0:
        raise ImportProblem(f"virsh {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def main(argv: list[str]) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if bool(args.domain) == bool(args.xml):
        p.error("give a DOMAIN or --xml FILE (one of them)")
    base: dict[str, Any] | None = None
    snapshots: list[str] | None = None
    try:
        if args.base:
            base = tomllib.loads(Path(args.base).read_text(encoding="utf-8"))
        if args.xml:
            text, source = Path(args.xml).read_text(encoding="utf-8"), args.xml
        else:
            text = _virsh(["--connect", args.connect, "dumpxml", args.domain])
            source = f"virsh dumpxml {args.domain}"
            snapshots = _virsh(["--connect", args.connect, "snapshot-list", "--name",
                                args.domain]).split()
        pair = args.pair or (str(base["name"]) if base and "name" in base else "")
        imp = convert(text, pair=pair, tap=args.tap or "", qemu=args.qemu or "",
                      run_dir=args.run_dir, log_dir=args.log_dir, image_dir=args.image_dir)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"coloctl import-libvirt: error: {exc}", file=sys.stderr)
        return 2
    except ImportProblem as exc:
        print(f"coloctl import-libvirt: {exc}", file=sys.stderr)
        return 1
    if snapshots:
        imp.notes.append(f"libvirt snapshots ({', '.join(snapshots)}): not carried (the "
                         "raw image holds the current contents only)")
    elif snapshots is None:
        imp.notes.append("snapshots: not checked with --xml (virsh snapshot-list DOMAIN); "
                         "none is carried")
    out = render(imp, base, source)
    if base is not None:
        try:  # the orchestrator's own loader: what colo-orch run would say of it
            from_dict(tomllib.loads(out), args.base)
        except ConfigError as exc:
            print(f"coloctl import-libvirt: the merged config does not load: {exc}",
                  file=sys.stderr)
            return 1
    for n in imp.notes:
        print(f"coloctl import-libvirt: not carried over: {n}", file=sys.stderr)
    sys.stdout.write(out)
    return 0
