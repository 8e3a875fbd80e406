"""The hypervisor interface the orchestrator drives; QEMU and Xen implement it.

Every method returns within its stated bound or raises `BackendError`; none may
block forever (a hung hypervisor must become a clear degraded state, never a
hung orchestrator). `observe` is called from the observer thread, the others
from the single-slot action executor, never concurrently with each other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from colo_orch.backends.qemu.blk.graph import DiskStatus
from colo_orch.core.decide import VmObs


class BackendError(Exception):
    pass


class Backend(ABC):
    # True when the hypervisor path itself tells the proxy that a checkpoint is done
    # (Xen: libxl's COLO_CHECKPOINT through the libxl bridge). The runner then must not
    # send its own checkpoint_done, which would release output produced after the resume.
    notifies_proxy_of_checkpoints = False
    # Called (from the action thread) when the PVM has stopped for a checkpoint: from then
    # on the proxy can tell pre-snapshot output from what the PVM sends after it resumes.
    on_checkpoint_stop: Callable[[], object] | None = None

    @abstractmethod
    def observe(self) -> VmObs:
        """The VM's state now. Bound: qmp_timeout. Never raises: unreachable is a value."""

    @abstractmethod
    def start_vm(self, incoming_uri: str | None) -> str:
        """Start our VM (as a COLO secondary waiting on incoming_uri if given). Bound: 60 s."""

    @abstractmethod
    def enter_colo(self, uri: str) -> str:
        """From the primary: start COLO toward the secondary VM at uri; return once in COLO.

        Bound: 60 s. Atomic: on failure the primary VM keeps running unprotected.
        """

    @abstractmethod
    def checkpoint(self) -> str:
        """Take one checkpoint now; return once both VMs run again. Bound: 30 s."""

    @abstractmethod
    def take_over(self, was_role: str) -> str:
        """Leave COLO and run alone; return once our VM runs. Bound: 10 s."""

    @abstractmethod
    def stop_vm(self) -> str:
        """Stop our VM. Bound: 10 s."""

    def wait_resume(self, timeout: float) -> bool:
        """Secondary: True when our VM resumed (a checkpoint was loaded) within timeout.

        Called only from the secondary's event watcher, never while an action runs.
        """
        return False

    def disk_status(self) -> tuple[DiskStatus | None, int]:
        """Replication state of the protected disks and how many there are (metrics).

        Called from the loop thread: must only read what the other threads set.
        """
        return None, 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
