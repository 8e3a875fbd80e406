"""Sequence offsets handed from the secondary-role proxy to the primary-role proxy.

After a failover the old SVM serves; connections it opened after the last checkpoint
run in its own sequence and timestamp spaces, and the secondary's datapath shifts them
for the clients. At re-protection the orchestrator restarts the proxy of this host as
primary, and the offsets would go with the old process. So the secondary writes them to
a file next to its control socket when it fails over, and the primary loads them at
start into its uplink rewrite (datapath.Datapath.carry). Nothing else writes the file;
a checkpoint or a resume of protection makes it void (the VMs share one space again).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

from colo_proxy.wire.offset import Offset

log = logging.getLogger("colo-proxy")
VERSION = 1
# struct colo_carry_msg in bpf/colo.h: the primary repeats one per carried flow on the
# forward link, so that the secondary keeps the flows going after the next failover too.
ETH_P_CARRY = 0x88B5
CARRY_MAGIC = 0x434F4C4F  # "COLO"
ANNOUNCE_EVERY = 2.0  # seconds; a secondary that (re)starts hears them within this
_MSG = struct.Struct("!II16s16sHHIII")


def path_for(control_socket: str | Path) -> Path:
    return Path(f"{control_socket}.handover.json")


def write(path: Path, offsets: list[Offset]) -> int:
    """Write the offsets that move a flow (complete, non-zero); returns how many."""
    keep = [o for o in offsets if o.shifts]
    doc: dict[str, Any] = {"version": VERSION, "offsets": [
        {"vm_ip": o.vm_ip, "vm_port": o.vm_port, "peer_ip": o.peer_ip,
         "peer_port": o.peer_port, "pvm_isn": o.pvm_isn, "svm_isn": o.svm_isn,
         "offset": o.offset, "ts_offset": o.ts_offset} for o in keep]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)  # a reader sees the whole file or none
    return len(keep)


def take(path: Path) -> list[Offset]:
    """Read and remove the file; [] if there is none. A damaged file is reported and
    dropped: its flows then break, as without a handover, but nothing else does."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    finally:
        discard(path)
    try:
        doc = json.loads(text)
        if doc.get("version") != VERSION:
            raise ValueError(f"version {doc.get('version')!r}, expected {VERSION}")
        return [Offset(str(d["vm_ip"]), int(d["vm_port"]), str(d["peer_ip"]),
                       int(d["peer_port"]), int(d["pvm_isn"]), int(d["svm_isn"]),
                       int(d["offset"]), True,
                       None if d.get("ts_offset") is None else int(d["ts_offset"]))
                for d in doc["offsets"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.error("handover file %s is damaged (%s): the connections it held are not "
                  "carried over", path, exc)
        return []


def discard(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _ip16(ip: str) -> bytes:
    addr = ipaddress.ip_address(ip)
    return (ipaddress.IPv6Address(f"::ffff:{addr}") if addr.version == 4 else addr).packed


def announcement(o: Offset) -> bytes:
    """The payload (after the Ethernet header) announcing one carried flow."""
    return _MSG.pack(CARRY_MAGIC, 1, _ip16(o.vm_ip), _ip16(o.peer_ip), o.vm_port, o.peer_port,
                     o.offset % 2**32, (o.ts_offset or 0) % 2**32, int(o.ts_offset is not None))
