"""COLO's description of a protected disk and of its replication state (pure).

Every backend replicates the same four things: a disk's id, this host's image
and the secondary's active and hidden layers (QEMU's block replication and
Xen's `colo` disk keys alike), so the config can check them without knowing the
backend. How a backend names them on its own side stays in the backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ID_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")


@dataclass(frozen=True)
class Disk:
    id: str  # short name, e.g. "disk0"; a backend's node names derive from it
    image: str  # this host's copy of the disk (raw)
    active: str  # the secondary's active layer (qcow2, recreated empty at each start)
    hidden: str  # the secondary's hidden layer (qcow2, recreated empty at each start)


@dataclass(frozen=True)
class DiskStatus:
    """What `/state` and the metrics show about disk replication."""

    state: str  # none, exported, resyncing, replicating, broken, committed, alone
    problem: str = ""
    bytes_replicated: int = 0
    errors: int = 0
    # The hypervisor's disk error events since the orchestrator started, by name (QEMU:
    # QUORUM_REPORT_BAD, BLOCK_IO_ERROR), whatever the replication's state, and the last.
    error_events: dict[str, int] = field(default_factory=dict)
    last_error_event: str = ""


# The disk error events a backend reports (DiskStatus.error_events), named as QEMU does.
ERROR_EVENTS = ("QUORUM_REPORT_BAD", "BLOCK_IO_ERROR")
STATES = ("none", "exported", "resyncing", "replicating", "broken", "committed", "alone")
