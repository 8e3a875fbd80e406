"""QEMU's events, read as they come by a thread of the QEMU backend.

Before, the events monitor was read only while an action waited for an event (a
checkpoint's STOP and RESUME, the start of COLO, the SVM's RESUME), and each checkpoint
began by discarding what had come since. A `QUORUM_REPORT_BAD` between two checkpoints
(a write that reached our image but not the secondary's) therefore went unseen, and the
pair stayed PROTECTED with disks that differ.

Now `EventReader` reads every event when QEMU sends it. Each goes first to `on_event`
(the backend: disk errors are counted at once, whoever waits for what), then to the
queue that `pull_event` and `clear_events` serve as the monitor did before: clearing
forgets what waits for the actions, never what the disk tally has seen.

Split as the rest of the backend: `DiskEvents` is pure (which events are disk errors,
counted by name, and a sentence for the last one); `EventReader` owns the socket and the
thread.

QEMU facts (qapi/block-core.json, qapi/block.json): `QUORUM_REPORT_BAD` names the quorum
child's node (`node-name`), the request's `type` (read, write or flush), `sector`,
`sectors-count` and `error`; `BLOCK_IO_ERROR` names the `device` or `node-name`, the
`operation`, the `action` taken (report, ignore or stop) and a `reason`.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from colo_orch.backends.qemu.qmp import QmpClient, QmpError
from colo_orch.core.disks import ERROR_EVENTS as DISK_ERROR_EVENTS

log = logging.getLogger("colo_orch.qemu")

# How long the reader waits in select before looking at its stop flag; and between two
# attempts to connect while QEMU has no events socket (no VM, or one starting).
POLL_S = 0.2
RETRY_S = 0.5


def describe(event: dict[str, Any]) -> str:
    """One line about a disk error event, for the state API and the log."""
    name, data = event.get("event", "?"), event.get("data") or {}
    if name == "QUORUM_REPORT_BAD":
        what = str(data.get("type", "request"))
        if "sector" in data:  # a flush has none
            what += f" of {data.get('sectors-count', '?')} sector(s) at {data['sector']}"
        err = f": {data['error']}" if data.get("error") else ""
        return f"QUORUM_REPORT_BAD on {data.get('node-name', '?')}: {what} failed{err}"
    where = data.get("node-name") or data.get("device") or "?"
    reason = f": {data['reason']}" if data.get("reason") else ""
    return (f"{name} on {where}: {data.get('operation', 'request')} failed, "
            f"action {data.get('action', '?')}{reason}")


@dataclass
class DiskEvents:
    """The disk error events seen since the backend started, by name (pure)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DISK_ERROR_EVENTS, 0))
    last: str = ""

    def note(self, event: dict[str, Any]) -> bool:
        """Count `event` if it is a disk error; True if it was."""
        name = event.get("event")
        if name not in self.counts:
            return False
        self.counts[str(name)] += 1
        self.last = describe(event)
        return True


class EventReader:
    """The events monitor of one QEMU, read continuously by a thread of its own.

    `pull_event`, `clear_events` and `drop` keep the meaning they had on the monitor: the
    oldest event not yet taken (waiting up to `wait`), forget every event received so far
    (also those still in the socket), and let the connection go (the VM is replaced). The
    thread reconnects by itself once QEMU listens again. A callback that raises is logged
    and does not stop the reading.
    """

    def __init__(self, path: str, timeout: float,
                 on_event: Callable[[dict[str, Any]], object]) -> None:
        self.path = path
        self.timeout = timeout
        self._on_event = on_event
        self._client: QmpClient | None = None
        self._io = threading.Lock()  # the client: connecting, reading, closing
        self._ready = threading.Condition()
        self._queue: deque[dict[str, Any]] = deque(maxlen=1000)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qmp-events", daemon=True)
        self._thread.start()

    # For the backend's actions ------------------------------------------------------
    def pull_event(self, wait: float) -> dict[str, Any] | None:
        """The oldest event not yet taken, waiting up to `wait` seconds for one. Raises,
        as the monitor did, when there is no event and QEMU cannot be reached."""
        with self._ready:
            if self._queue:
                return self._queue.popleft()
        with self._io:
            self._connected()
        with self._ready:
            self._ready.wait_for(lambda: bool(self._queue), timeout=max(0.0, wait))
            return self._queue.popleft() if self._queue else None

    def clear_events(self) -> None:
        """Forget the events received so far, and those already waiting in the socket
        (after the disk tally has seen them)."""
        with self._io:
            try:
                self._drain(self._connected(), keep=False)
            except (QmpError, OSError):  # a connection to a QEMU that has gone: once more
                self._close()
                self._drain(self._connected(), keep=False)
            with self._ready:
                self._queue.clear()

    def drop(self) -> None:
        with self._io:
            self._close()
            with self._ready:
                self._queue.clear()

    def close(self) -> None:
        """Stop the thread and let the connection go."""
        self._stopping.set()
        self.drop()
        self._thread.join(timeout=POLL_S + self.timeout + 1.0)

    # The thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            client = self._client
            if client is None:
                try:
                    with self._io:
                        client = self._connected()
                except (QmpError, OSError):
                    self._stopping.wait(RETRY_S)
                    continue
            try:
                ready = select.select([client.fileno()], [], [], POLL_S)[0]
            except (QmpError, OSError, ValueError):
                continue  # dropped meanwhile: take the next connection
            if not ready:
                continue
            with self._io:
                if self._client is client:
                    try:
                        self._drain(client, keep=True)
                    except (QmpError, OSError) as exc:
                        log.info("QMP events %s: %s; reconnecting", self.path, exc)
                        self._close()

    def _connected(self) -> QmpClient:
        """The connection (under `_io`), opened if there is none."""
        if self._client is None or not self._client.connected:
            if not os.path.exists(self.path):
                raise ConnectionError(f"no QMP socket at {self.path}")
            client = QmpClient(self.path, self.timeout)
            client.connect()
            self._client = client
            # An event that came with the answer to qmp_capabilities is already in the
            # client's buffer, where the thread's select would never see it.
            self._drain(client, keep=True)
        return self._client

    def _drain(self, client: QmpClient, *, keep: bool) -> None:
        """Every event that has arrived (under `_io`): to the callback, and to the
        queue if `keep`."""
        while (ev := client.pull_event(0)) is not None:
            try:
                self._on_event(ev)
            except Exception:
                log.exception("QMP event %s: handling it failed", ev.get("event"))
            if keep:
                with self._ready:
                    self._queue.append(ev)
                    self._ready.notify_all()

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
