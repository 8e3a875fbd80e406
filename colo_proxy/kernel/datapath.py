"""Load the BPF programs of colo_proxy/kernel/bpf with bcc and attach them to tc clsact hooks.

The only module that imports bcc and pyroute2. Every filter we add is named
`colo_<program>` (TCA_BPF_NAME), so `cleanup()` finds and removes them after a crash
without any state from the process that added them; the programs themselves are freed
by the kernel once no filter and no process holds them.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from colo_proxy.wire.offset import Offset

BPF_DIR = Path(__file__).resolve().parent / "bpf"
NAME_PREFIX = "colo_"
INGRESS = 0xFFFFFFF2  # clsact ingress ("ffff:fff2")
EGRESS = 0xFFFFFFF3
CLSACT_HANDLE = 0xFFFF0000
# One preference for all our filters so that they never collide with an operator's.
PRIO = 0xC010

# Mirrors enum colo_counter in bpf/colo.h (same order).
COUNTERS = (
    "mirror_packets", "mirror_bytes", "clone_failures", "isn_clones",
    "svm_out_packets", "svm_out_bytes", "fwd_in_packets", "fwd_in_bytes",
    "tap_out_packets", "tap_out_bytes", "redirect_failures",
    "ack_rewrites", "sack_rewrites", "seq_rewrites", "pvm_isn_learned", "svm_isn_learned",
    "non_ip", "tsecr_rewrites", "tsval_rewrites", "ip6_ext_headers", "svm_solicits",
    "mirror_refused", "fwd_foreign", "svm_foreign",
)
MODE_PROTECTED = 0
MODE_PASSTHROUGH = 1

# (program, interface role, direction) per host role.
HOOKS = {
    "primary": (("colo_mirror", "tap", EGRESS), ("colo_pvm_out", "tap", INGRESS),
                ("colo_svm_in", "fwd", INGRESS)),
    "secondary": (("colo_fwd_in", "fwd", INGRESS), ("colo_tap_eg", "tap", EGRESS),
                  ("colo_tap_in", "tap", INGRESS)),
}
# Primary with an uplink: flows carried over a role swap are rewritten at the host's edge.
UPLINK_HOOKS = (("colo_up_in", "uplink", INGRESS), ("colo_up_eg", "uplink", EGRESS))
IFF_PROMISC = 0x100  # linux/if.h


def mac_to_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


class Datapath:
    """The programs of one host role, attached while the context is open.

    `peer_mac` is the other host's forward-link MAC: the secondary takes ISN copies and
    announcements only from it, the primary SVM output (see the programs' comments).
    """

    def __init__(self, role: str, *, tap: str, fwd: str, vm_mac: str, peer_mac: str,
                 uplink: str = "") -> None:
        if role not in HOOKS:
            raise ValueError(f"role must be primary or secondary, not {role!r}")
        self.role, self.tap, self.fwd, self.vm_mac = role, tap, fwd, vm_mac
        self.peer_mac = peer_mac
        self.uplink = uplink if role == "primary" else ""
        self._bpf: Any = None
        self._ipr: IPRoute | None = None
        self.attached: list[tuple[str, str, int]] = []
        self.promisc_set = False  # we turned the forward link's promiscuous mode on

    def __enter__(self) -> Datapath:
        try:
            self.attach()
        except BaseException:
            self.detach()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Fail closed: only an orderly exit removes the filters. After an exception they
        # stay attached (the kernel keeps their programs and maps), so the datapath goes on
        # steering as before and the next proxy replaces them (attach).
        if t is None:
            self.detach()
        else:
            self.release()

    def attach(self) -> None:
        self._ipr = ipr = IPRoute()
        names = {"tap": self.tap, "fwd": self.fwd}
        hooks = list(HOOKS[self.role])
        if self.uplink:
            names["uplink"] = self.uplink
            hooks += UPLINK_HOOKS
        idx = {which: _ifindex(ipr, name) for which, name in names.items()}
        fwd = ipr.get_links(idx["fwd"])[0]
        fwd_mac = fwd.get_attr("IFLA_ADDRESS")
        if fwd_mac == self.peer_mac.lower():
            raise RuntimeError(f"peer_mac {self.peer_mac} is this host's own {self.fwd}: "
                               f"give the forward-link MAC of the other host")
        # Frames on the forward link keep the addresses they had (the mirror's are for the
        # VMs' MAC, the SVM's output for the clients'; the programs tell them by their
        # source), so the link must take frames not addressed to it. A veth does; a real
        # NIC, or a VM's (the nested Xen lab's dom0s), drops them in its address filter
        # unless it is promiscuous: run AU saw none of the mirror reach the secondary.
        if not fwd["flags"] & IFF_PROMISC:
            ipr.link("set", index=idx["fwd"], flags=IFF_PROMISC, change=IFF_PROMISC)
            self.promisc_set = True
        self._bpf = load(self.role, fwd_ifindex=idx["fwd"], tap_ifindex=idx["tap"],
                         vm_mac=self.vm_mac, fwd_mac=fwd_mac, peer_mac=self.peer_mac,
                         uplink_ifindex=idx.get("uplink", 0))
        # A predecessor that crashed or failed closed left its filters: each is replaced
        # in place (same prio and handle), never stacked on and never deleted first, so
        # its hook is not one moment without a program.
        kept = set()
        for prog, which, parent in hooks:
            fn = self._bpf.load_func(prog.encode(), self._bpf.SCHED_CLS)
            _ensure_clsact(ipr, idx[which])
            ipr.tc("replace-filter", "bpf", idx[which], ":1", fd=fn.fd, name=prog,
                   parent=parent, classid=1, direct_action=True, prio=PRIO)
            kept.add((idx[which], parent, PRIO))
            self.attached.append((prog, names[which], parent))
        # Any other filter of ours on these devices (a predecessor in another role) goes.
        cleanup(ifnames=list(names.values()), ipr=ipr, keep=kept)

    def detach(self) -> None:
        """Remove the filters (an orderly stop), end the forward link's promiscuous mode
        if we began it, and let go of the programs."""
        if self._ipr is not None:
            cleanup(ifnames=[n for n in (self.tap, self.fwd, self.uplink) if n], ipr=self._ipr)
            if self.promisc_set:
                try:
                    self._ipr.link("set", index=_ifindex(self._ipr, self.fwd), flags=0,
                                   change=IFF_PROMISC)
                except (RuntimeError, NetlinkError):
                    pass  # the link went away with its flags
                self.promisc_set = False
        self.release()

    def release(self) -> None:
        """Let go of our handles, leaving the filters attached (failing closed)."""
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
        self.attached.clear()

    # Maps ------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        table = self._bpf[b"counters"]
        out = {}
        for i, name in enumerate(COUNTERS):
            out[name] = int(sum(table[ctypes.c_int(i)]))
        return out

    def set_mode(self, mode: int) -> None:
        self._bpf[b"mode"][ctypes.c_int(0)] = ctypes.c_uint32(mode)

    def mode(self) -> int:
        return int(self._bpf[b"mode"][ctypes.c_int(0)].value)

    def reset_offsets(self) -> int:
        """Forget every offset (after a checkpoint the SVM has the PVM's TCP state)."""
        if self.role != "secondary":
            return 0
        table = self._bpf[b"offsets"]
        n = len(list(table.keys()))
        table.clear()
        return n

    def svm_filter(self) -> int:
        """Primary: the descriptor of `colo_svm_sock`, the filter of the comparator's packet
        socket (only the secondary host's frames are the SVM's output)."""
        return int(self._bpf.load_func(b"colo_svm_sock", self._bpf.SOCKET_FILTER).fd)

    def carry(self, offsets: list[Offset]) -> int:
        """Write these flows into `carried`. Primary with an uplink: flows handed over by
        the proxy that ran as secondary here before the role swap, rewritten at the host's
        edge. Secondary: flows its primary announced (authenticated), shifted after a
        failover. Returns how many."""
        if self.role == "primary" and not self.uplink:
            return 0
        table = self._bpf[b"carried"]
        n = 0
        for o in offsets:
            if not o.shifts:
                continue
            k = table.Key()
            _set_ip(k.vm_ip, o.vm_ip)
            _set_ip(k.peer_ip, o.peer_ip)
            k.vm_port, k.peer_port = _port(o.vm_port), _port(o.peer_port)
            v = table.Leaf()
            v.have, v.offset, v.pvm_isn, v.svm_isn = 7, o.offset, o.pvm_isn, o.svm_isn
            v.ts_have, v.ts_offset = (3, o.ts_offset) if o.ts_offset is not None else (0, 0)
            table[k] = v
            n += 1
        return n

    def carried(self) -> int:
        """How many carried flows are still rewritten (a SYN on their addresses ends one):
        on a primary with an uplink, or announced to a secondary by its primary."""
        if self.role == "primary" and not self.uplink:
            return 0
        return len(list(self._bpf[b"carried"].keys()))

    def carried_offsets(self) -> list[Offset]:
        return self._read(b"carried") if self.role == "secondary" or self.uplink else []

    def offsets(self) -> list[Offset]:
        return self._read(b"offsets") if self.role == "secondary" else []

    def _read(self, table: bytes) -> list[Offset]:
        out = []
        for k, v in self._bpf[table].items():
            ts = v.ts_offset if v.have & 3 == 3 and v.ts_have & 3 == 3 else None
            out.append(Offset(_ip(k.vm_ip), _port(k.vm_port), _ip(k.peer_ip), _port(k.peer_port),
                              v.pvm_isn, v.svm_isn, v.offset, v.have & 3 == 3, ts))
        return out


def load(role: str, *, fwd_ifindex: int, tap_ifindex: int, vm_mac: str, fwd_mac: str,
         peer_mac: str, uplink_ifindex: int = 0) -> Any:
    """Compile and load one host role's programs (a bcc `BPF`); nothing is attached.
    fwd_mac: this host's forward-link MAC; peer_mac: the other host's."""
    from bcc import BPF  # imported here: bcc is slow to import and needs root

    cflags = [f"-I{BPF_DIR}", f"-DFWD_IFINDEX={fwd_ifindex}", f"-DTAP_IFINDEX={tap_ifindex}",
              f"-DVM_MAC={mac_to_int(vm_mac):#x}ULL", f"-DFWD_MAC={mac_to_int(fwd_mac):#x}ULL",
              f"-DPEER_MAC={mac_to_int(peer_mac):#x}ULL",
              f"-DUPLINK_IFINDEX={uplink_ifindex}"]
    # bcc wants bytes for file, table and function names (str is deprecated).
    return BPF(src_file=str(BPF_DIR / f"{role}.bpf.c").encode(), cflags=cflags)


def _ip(raw: Any) -> str:
    """A key's 16-byte address (network order) as text; IPv4 is stored v4-mapped."""
    addr = ipaddress.IPv6Address(bytes(raw))
    return str(addr.ipv4_mapped or addr)


def _port(raw: int) -> int:
    """A key's port (network order, read as a little-endian u16) as a number, and back."""
    return int.from_bytes(raw.to_bytes(2, "little"), "big")


def _set_ip(field: Any, ip: str) -> None:
    """Fill a key's 16-byte address field (4 x u32) from text; IPv4 goes v4-mapped."""
    addr = ipaddress.ip_address(ip)
    raw = (ipaddress.IPv6Address(f"::ffff:{addr}") if addr.version == 4 else addr).packed
    ctypes.memmove(ctypes.addressof(field), raw, 16)


def _ifindex(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise RuntimeError(f"no interface named {name!r} in this network namespace")
    return int(found[0])


def _ensure_clsact(ipr: IPRoute, index: int) -> None:
    try:
        ipr.tc("add", "clsact", index)
    except NetlinkError as exc:
        if exc.code != 17:  # EEXIST: one clsact serves every filter on the device
            raise


def _filters(ipr: IPRoute, index: int) -> Iterator[tuple[int, str, int, int]]:
    """(parent, name, prio, bpf prog id) of every bpf filter on a clsact hook."""
    for parent in (INGRESS, EGRESS):
        try:
            msgs = ipr.get_filters(index=index, parent=parent)
        except NetlinkError:
            continue  # no clsact on this device
        for m in msgs:
            opts = m.get_attr("TCA_OPTIONS")
            if m.get_attr("TCA_KIND") != "bpf" or opts is None:
                continue
            name = opts.get_attr("TCA_BPF_NAME") or ""
            prio = m["info"] >> 16
            yield parent, name, prio, int(opts.get_attr("TCA_BPF_ID") or 0)


def attached(ifnames: list[str] | None = None) -> list[dict[str, Any]]:
    """Our filters in this namespace: interface, hook, name and BPF program id.

    Read with `tc -j` because pyroute2 0.9 does not decode TCA_BPF_ID.
    """
    out = []
    with IPRoute() as ipr:
        names = [lk.get_attr("IFLA_IFNAME") for lk in ipr.get_links()]
    for name in names:
        if ifnames is not None and name not in ifnames:
            continue
        for hook in ("ingress", "egress"):
            proc = subprocess.run(["tc", "-j", "filter", "show", "dev", name, hook],
                                  capture_output=True, text=True, check=False)
            try:
                rows = json.loads(proc.stdout or "[]")
            except ValueError:
                continue
            for row in rows:
                opts = row.get("options") or {}
                fname = str(opts.get("bpf_name", ""))
                if fname.startswith(NAME_PREFIX):
                    out.append({"ifname": name, "hook": hook, "name": fname.split(":")[0],
                                "prog_id": int(opts.get("prog", {}).get("id", 0))})
    return out


def cleanup(ifnames: list[str] | None = None, ipr: IPRoute | None = None,
            keep: set[tuple[int, int, int]] | None = None) -> list[str]:
    """Remove our filters (by name prefix) and any clsact left empty; returns what went.
    `keep`: (ifindex, parent, prio) of filters to leave (the ones just attached)."""
    own = ipr is None
    ipr = ipr or IPRoute()
    removed = []
    try:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if ifnames is not None and name not in ifnames:
                continue
            idx = link["index"]
            had_ours = False
            others = 0
            for parent, fname, prio, _id in list(_filters(ipr, idx)):
                if not fname.startswith(NAME_PREFIX) or (idx, parent, prio) in (keep or ()):
                    others += 1
                    continue
                had_ours = True
                try:
                    ipr.tc("del-filter", "bpf", idx, parent=parent, prio=prio)
                    removed.append(f"tc filter {fname} on {name}")
                except NetlinkError as exc:
                    if exc.code != 2:
                        raise
            if had_ours and others == 0:
                try:
                    ipr.tc("del", "clsact", idx)
                    removed.append(f"clsact qdisc on {name}")
                except NetlinkError as exc:
                    if exc.code not in (2, 22):
                        raise
    finally:
        if own:
            ipr.close()
    return removed


def prog_exists(prog_id: int) -> bool:
    """Whether a BPF program id is still loaded (BPF_PROG_GET_FD_BY_ID)."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint8 * 128)()
    ctypes.c_uint32.from_buffer(attr, 0).value = prog_id
    sys_bpf, cmd = 321, 13  # __NR_bpf on x86_64, BPF_PROG_GET_FD_BY_ID
    fd = libc.syscall(sys_bpf, cmd, attr, 128)
    if fd < 0:
        return False
    os.close(fd)
    return True
