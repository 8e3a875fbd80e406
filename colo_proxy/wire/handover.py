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
    """The offsets of a handover document; `DamagedHandover` if it is not one."""
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
        raise DamagedHandover(str(exc)) from exc
    except RecursionError:  # "[[[[..." past the interpreter's limit
        raise DamagedHandover("JSON nested too deeply") from None
