"""Sequence offsets handed from the secondary-role proxy to the primary-role proxy.

After a failover the old SVM serves; connections it opened after the last checkpoint
run in its own sequence and timestamp spaces, and the secondary's datapath shifts them
for the clients. At re-protection the orchestrator restarts the proxy of this host as
primary, and the offsets would go with the old process. So the secondary writes them to
a file next to its control socket when it fails over, and the primary loads them at
start into its uplink rewrite (datapath.Datapath.carry). Nothing else writes the file;
a checkpoint or a resume of protection makes it void (the VMs share one space again).

This module holds the file's document, without I/O; `colo_proxy.service.handover_file`
reads and writes the file, and `colo_proxy.wire.carry` the announcements that tell the
secondary about the carried flows.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from colo_proxy.wire.offset import Offset

VERSION = 1


class DamagedHandover(ValueError):
    pass


def encode(offsets: list[Offset]) -> str:
    """The handover document of these offsets."""
    doc: dict[str, Any] = {"version": VERSION, "offsets": [
        {"vm_ip": o.vm_ip, "vm_port": o.vm_port, "peer_ip": o.peer_ip,
         "peer_port": o.peer_port, "pvm_isn": o.pvm_isn, "svm_isn": o.svm_isn,
         "offset": o.offset, "ts_offset": o.ts_offset} for o in offsets]}
    return json.dumps(doc, indent=1)


def decode(text: str) -> list[Offset]:
    """The offsets of a handover document; `DamagedHandover` if it is not one, or if an
    offset could not be loaded into the datapath's maps (`Datapath.carry`)."""
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} handover document")
        entries = doc["offsets"]
        if not isinstance(entries, list) or not all(isinstance(d, dict) for d in entries):
            raise ValueError("offsets is not a list of objects")
        return [Offset(_ip(d, "vm_ip"), _int(d, "vm_port", 0, PORT),
                       _ip(d, "peer_ip"), _int(d, "peer_port", 0, PORT),
                       _int(d, "pvm_isn", 0, U32), _int(d, "svm_isn", 0, U32),
                       _int(d, "offset", S32, U32), True,
                       None if d.get("ts_offset") is None else _int(d, "ts_offset", S32, U32))
                for d in entries]
    except (ValueError, KeyError) as exc:
        raise DamagedHandover(str(exc)) from exc
    except RecursionError:  # "[[[[..." past the interpreter's limit
        raise DamagedHandover("JSON nested too deeply") from None


# The datapath's fields: 16-bit ports, 32-bit sequence numbers; an offset is a 32-bit
# difference, written signed or not.
PORT, U32, S32 = 2**16 - 1, 2**32 - 1, -(2**31)


def _int(d: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = d[key]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{key} {v!r:.40} is not an integer from {lo} to {hi}")
    return v


def _ip(d: dict[str, Any], key: str) -> str:
    v = d[key]
    if not isinstance(v, str):
        raise ValueError(f"{key} {v!r:.40} is not an address")
    return str(ipaddress.ip_address(v))  # ValueError names it
