"""The domain configuration of a COLO-protected Xen HVM guest, for `xl create`.

What we generate and why (facts from xen.git: docs/man/xl.1.pod.in, xl-disk-configuration.5,
tools/xl/xl_parse.c, tools/libs/light/libxl_colo_save.c, libxl_colo_restore.c, libxl_dm.c):

- COLO is HVM only (libxl_colo_save.c refuses other types).
- Disks: `colo`, `colo-host`, `colo-port`, `colo-export`, `active-disk`, `hidden-disk` are all
  mandatory when COLO is on (xl-disk-configuration.5). libxl turns them into QEMU block
  replication inside qemu-xen (libxl_dm.c): quorum + NBD client on the primary, an NBD server
  on colo-host:colo-port exporting colo-export and active/hidden overlays on the secondary.
  `target=` comes last: libxlutil's grammar makes it swallow the rest of the string (seen
  with its own parser, see tests/unit/orch/backends/xen).
- NICs, userspace proxy mode (`xl remus -c -p`): libxl adds no vif checkpoint device
  (device_kind_flags is VBD only) and runs no colo-proxy-setup script, so `forwarddev` is not
  needed. It reads `colo_checkpoint_host`/`colo_checkpoint_port` from the *first* NIC only and
  connects there with inet_addr (an IPv4 literal). libxl_dm.c adds QEMU's filter-mirror,
  filter-redirector, filter-rewriter and colo-compare only when the `colo_sock_*`,
  `colo_filter_*` and `colo_compare_*` keys are given: we never give them, so QEMU's filters
  stay out of the path and colo-proxy (eBPF mirror/rewrite, NFQUEUE comparator) does that work.
- `vifname=` fixes the host-side names on both hosts (the secondary's domain is created from
  the same configuration, with another domid): the emulated NIC's tap is `<vifname>-emu`,
  the PV backend `<vifname>`. `type=ioemu` keeps the guest on the emulated NIC (model e1000),
  the device the proxy's tc and iptables rules are bound to.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

# Every key parse_nic_config (tools/xl/xl_parse.c) accepts in a vif specification.
XL_VIF_KEYS = frozenset("""
type mac bridge netdev gatewaydev ip script backend vifname model rate forwarddev accel devid
mtu colo_checkpoint_host colo_checkpoint_port
colo_sock_mirror_id colo_sock_mirror_ip colo_sock_mirror_port colo_sock_compare_sec_in_id
colo_sock_compare_sec_in_ip colo_sock_compare_sec_in_port colo_sock_redirector0_id
colo_sock_redirector0_ip colo_sock_redirector0_port colo_sock_redirector1_id
colo_sock_redirector1_ip colo_sock_redirector1_port colo_sock_redirector2_id
colo_sock_redirector2_ip colo_sock_redirector2_port colo_sock_compare_pri_in_id
colo_sock_compare_pri_in_ip colo_sock_compare_pri_in_port colo_sock_compare_notify_id
colo_sock_compare_notify_ip colo_sock_compare_notify_port colo_filter_mirror_queue
colo_filter_mirror_outdev colo_filter_redirector0_queue colo_filter_redirector0_indev
colo_filter_redirector0_outdev colo_filter_redirector1_queue colo_filter_redirector1_indev
colo_filter_redirector1_outdev colo_compare_pri_in colo_compare_sec_in colo_compare_out
colo_compare_notify_dev colo_sock_sec_redirector0_id colo_sock_sec_redirector0_ip
colo_sock_sec_redirector0_port colo_sock_sec_redirector1_id colo_sock_sec_redirector1_ip
colo_sock_sec_redirector1_port colo_filter_sec_redirector0_queue
colo_filter_sec_redirector0_indev colo_filter_sec_redirector0_outdev
colo_filter_sec_redirector1_queue colo_filter_sec_redirector1_indev
colo_filter_sec_redirector1_outdev colo_filter_sec_rewriter0_queue
""".split())
# The keys that would put QEMU's own COLO filters into the guest's network path.
QEMU_FILTER_KEY = re.compile(r"^colo_(sock|filter|compare)_")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_VIFNAME = re.compile(r"^[A-Za-z0-9_.]{1,11}$")  # "<vifname>-emu" must fit IFNAMSIZ (15)


class DomainConfigError(ValueError):
    pass


def _plain(what: str, value: str) -> str:
    """A value inside a comma-separated spec in a quoted list item."""
    if not value or any(c in value for c in ',"\n\\'):
        raise DomainConfigError(f"{what}={value!r}: empty, or has a comma, quote or newline")
    return value


@dataclass(frozen=True)
class ColoDisk:
    target: str  # the primary's image (on the secondary: its copy of the same image)
    colo_host: str  # secondary host address, where its NBD server listens
    colo_port: int
    colo_export: str  # NBD export name
    active_disk: str  # secondary: buffers the SVM's writes (qcow2)
    hidden_disk: str  # secondary: keeps what the PVM's writes overwrote (qcow2)
    vdev: str = "hda"
    format: str = "raw"

    def spec(self) -> str:
        if not 0 < self.colo_port < 65536:
            raise DomainConfigError(f"colo-port {self.colo_port} is not a TCP port")
        parts = [f"format={_plain('format', self.format)}", f"vdev={_plain('vdev', self.vdev)}",
                 "access=rw", "colo", f"colo-host={_plain('colo-host', self.colo_host)}",
                 f"colo-port={self.colo_port}",
                 f"colo-export={_plain('colo-export', self.colo_export)}",
                 f"active-disk={_plain('active-disk', self.active_disk)}",
                 f"hidden-disk={_plain('hidden-disk', self.hidden_disk)}",
                 f"target={_plain('target', self.target)}"]  # last: it takes the rest
        return ",".join(parts)


@dataclass(frozen=True)
class ColoNic:
    mac: str
    bridge: str
    vifname: str
    model: str = "e1000"

    def spec(self, checkpoint: tuple[str, int] | None) -> str:
        if not _MAC.match(self.mac.lower()):
            raise DomainConfigError(f"mac {self.mac!r} is not a MAC address")
        if not _VIFNAME.match(self.vifname):
            raise DomainConfigError(f"vifname {self.vifname!r}: 1-11 of [A-Za-z0-9_.] "
                                    "(the tap is '<vifname>-emu', at most 15 characters)")
        kv = {"mac": self.mac.lower(), "bridge": _plain("bridge", self.bridge),
              "vifname": self.vifname, "type": "ioemu", "model": _plain("model", self.model)}
        if checkpoint is not None:
            host, port = checkpoint
            try:
                ipaddress.IPv4Address(host)
            except ValueError as exc:
                raise DomainConfigError(f"colo_checkpoint_host {host!r}: libxl connects with "
                                        "inet_addr, so it must be an IPv4 address") from exc
            if not 0 < port < 65536:
                raise DomainConfigError(f"colo_checkpoint_port {port} is not a TCP port")
            kv["colo_checkpoint_host"] = host
            kv["colo_checkpoint_port"] = str(port)
        return ",".join(f"{k}={v}" for k, v in kv.items())

    @property
    def tap(self) -> str:
        return f"{self.vifname}-emu"


@dataclass(frozen=True)
class XenDomain:
    name: str
    memory_mb: int
    vcpus: int
    disks: tuple[ColoDisk, ...]
    nics: tuple[ColoNic, ...]
    checkpoint: tuple[str, int]  # where colo-proxy's libxl bridge listens (primary host)
    extra: dict[str, str] = field(default_factory=dict)  # more xl.cfg lines, values verbatim

    def render(self) -> str:
        if not self.nics:
            raise DomainConfigError("a COLO domain needs a NIC: libxl finds the userspace "
                                    "proxy through the first NIC's colo_checkpoint_* keys")
        if not self.disks:
            raise DomainConfigError("a COLO domain needs at least one replicated disk")
        if not re.match(r"^[A-Za-z0-9_.-]+$", self.name):
            raise DomainConfigError(f"name {self.name!r}: use letters, digits, '_', '.', '-'")
        lines = [
            "# Generated by colo_orch.backends.xen.domain: COLO (xl remus -c -p) with colo-proxy.",
            f'name = "{self.name}"',
            'type = "hvm"',
            f"memory = {int(self.memory_mb)}",
            f"maxmem = {int(self.memory_mb)}",  # no ballooning: COLO copies all of memory
            f"vcpus = {int(self.vcpus)}",
            'on_crash = "destroy"',
            "disk = [",
            *(f"    '{d.spec()}'," for d in self.disks),
            "]",
            "vif = [",
            *(f"    '{n.spec(self.checkpoint if i == 0 else None)}',"
              for i, n in enumerate(self.nics)),
            "]",
        ]
        for k, v in sorted(self.extra.items()):
            if k in ("name", "type", "memory", "maxmem", "vcpus", "disk", "vif"):
                raise DomainConfigError(f"extra key {k!r} is generated; set it in the fields")
            lines.append(f"{k} = {v}")
        return "\n".join(lines) + "\n"


def check_vif(spec: str) -> dict[str, str]:
    """Split a vif spec as xl does (strtok on ','; key=value) and check it for COLO.

    Raises DomainConfigError for keys xl does not know or keys that would bring QEMU's
    filters back into the path.
    """
    out: dict[str, str] = {}
    for token in filter(None, spec.split(",")):
        key, eq, value = token.partition("=")
        if not eq:
            raise DomainConfigError(f"vif token {token!r} is not key=value")
        if key not in XL_VIF_KEYS:
            raise DomainConfigError(f"vif key {key!r} is unknown to xl (xl_parse.c)")
        if QEMU_FILTER_KEY.match(key):
            raise DomainConfigError(f"vif key {key!r} would put QEMU's colo filters in the "
                                    "path; colo-proxy does that work")
        out[key] = value
    return out
