"""The hypervisor interface the orchestrator drives; QEMU and Xen implement it.

Every method returns within its stated bound or raises `BackendError`; none may
block forever (a hung hypervisor must become a clear degraded state, never a
hung orchestrator). `observe` is called from the observer thread, the others
from the single-slot action executor, never concurrently with each other.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

from colo_orch.core.decide import VmObs
from colo_orch.core.disks import DiskStatus
from colo_orch.core.progress import Progress


class BackendError(Exception):
    pass


class Backend(ABC):
    # True when the hypervisor path itself tells the primary's proxy that a checkpoint is
    # done (Xen: libxl's COLO_CHECKPOINT through the libxl bridge). The runner then must not
    # send its own checkpoint_done there, which would release output produced after the
    # resume. The secondary's proxy is told by the runner on both backends (`wait_resume`).
    notifies_proxy_of_checkpoints = False
    # True when the VM's tap exists only once the hypervisor has made the VM (Xen: its
    # device model opens `vif<domid>.<n>-emu`, which libxl's vif-bridge hotplug script
    # renames to `<vifname>-emu`, and fails if a device of that name already exists). A
    # proxy waits for its tap before it answers, so the runner starts it without waiting,
    # makes the VM, then waits for its answer (a primary's: its VM is created paused) or
    # not at all (a secondary's VM appears with the primary's COLO migration).
    tap_comes_with_vm = False
    # Called (from the action thread) when the PVM has stopped for a checkpoint: from then
    # on the proxy can tell pre-snapshot output from what the PVM sends after it resumes.
    on_checkpoint_stop: Callable[[], object] | None = None
    # Called (from the action thread) once the hypervisor has been told to checkpoint and
    # before its STOP: what is only announced to the proxy goes here, off the path from
    # the decision to the STOP.
    on_checkpoint_triggered: Callable[[], object] | None = None

    def __init__(self) -> None:
        # Set by the loop when the peer is lost while a checkpoint runs: `checkpoint` then
        # fails within a fraction of a second instead of its 30 s bound. QEMU's COLO
        # stream to a peer behind a cut link blocks until TCP gives up; the take-over that
        # follows (x-colo-lost-heartbeat, docs/COLO-FT.txt) shuts that stream down.
        self.checkpoint_abort = threading.Event()
        # Secondary: this host's wall-clock time (time.time()) at which the VM last resumed
        # with a checkpoint, as the hypervisor stamped it, or None when it stamps nothing:
        # the proxy's recorder tells the SVM's output after it from the output before.
        self.last_resume_wall: float | None = None

    def abort_checkpoint(self) -> None:
        """From the loop thread: make a running `checkpoint` fail soon (the peer is lost)."""
        self.checkpoint_abort.set()

    def progress(self) -> Progress | None:
        """How far the resync or the first memory copy of a running `enter_colo` has come,
        or None when none runs. Any thread."""
        return None

    @abstractmethod
    def observe(self) -> VmObs:
        """The VM's state now. Bound: qmp_timeout. Never raises: unreachable is a value."""

    @abstractmethod
    def start_vm(self, incoming_uri: str | None) -> str:
        """Start our VM (as a COLO secondary waiting on incoming_uri if given). Bound: 60 s."""

    @abstractmethod
    def enter_colo(self, uri: str) -> str:
        """From the primary: start COLO toward the secondary VM at uri; return once in COLO.

        Bound: timing.resync_timeout plus timing.sync_timeout. Atomic: on failure the
        primary VM keeps running unprotected.
        """

    @abstractmethod
    def checkpoint(self) -> str:
        """Take one checkpoint now; return once both VMs run again. Bound: 30 s, or about
        0.1 s after `abort_checkpoint` (raises BackendError)."""

    @abstractmethod
    def take_over(self, was_role: str) -> str:
        """Leave COLO and run alone; return once our VM runs. Bound: 10 s."""

    def announce(self) -> str:
        """Tell the LAN's switches where our VM now is (gratuitous RARPs from its device
        model), after a take-over from a lost primary and after the on_takeover hook, which
        may be what connects this host to the clients. Until then the switches send the
        clients' frames to the dead primary's port, and an idle VM sends nothing that would
        move them. Best effort, and it must not hold the take-over up: a note for the
        take-over's result, "" if nothing was asked."""
        return ""

    @abstractmethod
    def stop_vm(self) -> str:
        """Stop our VM. Bound: 10 s."""

    def unpause_vm(self) -> str:
        """Let our VM, created paused and never run, run (it serves alone); a VM that runs
        already is left as it is. Bound: 10 s. Only backends that create a VM paused."""
        raise BackendError("this hypervisor creates no VM paused")

    def cancel_migration(self) -> str:
        """Cancel a migration our VM still runs that no action owns (an abandoned
        `enter_colo`), and return once it ended. Bound: 10 s. Only hypervisors whose
        `observe` reports a migration under way outside `enter_colo` need it."""
        raise BackendError("this hypervisor reports no migration to cancel")

    @abstractmethod
    def wait_resume(self, timeout: float) -> bool:
        """Secondary: True when our VM resumed with a newly loaded checkpoint.

        Blocks for up to `timeout` while the VM does not resume: the secondary's watcher
        calls it in a loop while PROTECTED (an early False makes that loop spin) and tells
        its proxy `checkpoint_done` at each True. A resume is reported once, at the first
        call after it. QEMU: the SVM's RESUME event (any other event ends the wait with
        False); Xen: libxl's CHECKPOINT_SVM_RESUMED record on the back channel to the
        primary (resumes between two calls give one True). Called only from that watcher's
        thread, which no action waits for: it may run alongside one (take_over).
        """

    def disk_status(self) -> tuple[DiskStatus | None, int]:
        """Replication state of the protected disks and how many there are (metrics).

        Called from the loop thread: must only read what the other threads set.
        """
        return None, 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
