"""Wait for network interfaces to exist, on rtnetlink's link events (no polling).

On a real host the proxy starts before QEMU (systemd, or the orchestrator at boot), and
QEMU creates the VM's tap only when it starts the VM: the proxy waits for it and says so,
rather than failing on a missing device.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence

RTMGRP_LINK = 1
REMIND_S = 30.0  # how often the log repeats what is still missing


def exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def bridged(name: str) -> bool:
    """`name` is a port of a bridge (or of another master device)."""
    return os.path.exists(f"/sys/class/net/{name}/master")


def wait_for(names: Sequence[str], log: logging.Logger,
             why: Callable[[str], str] = lambda n: "", *,
             timeout: float | None = None, clock: Callable[[], float] = time.monotonic,
             ports: Sequence[str] = ()) -> None:
    """Return once every interface of `names` exists, and each of `ports` is also a
    bridge's port; TimeoutError after `timeout` s.

    Subscribes to link events before it looks, so an interface created (or given to its
    bridge) in between is not missed; each event (or REMIND_S of none) triggers a new
    look. `ports`: a Xen tap appears under its final name before libxl's hotplug script
    adds it to the bridge."""
    wanted = [n for n in names if n]

    def ready(n: str) -> bool:
        return exists(n) and (n not in ports or bridged(n))

    missing = [n for n in wanted if not ready(n)]
    if not missing:
        return
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.bind((0, RTMGRP_LINK))
        start = clock()
        said = -REMIND_S
        while True:
            missing = [n for n in wanted if not ready(n)]
            if not missing:
                log.info("%s appeared after %.1f s: starting", ", ".join(wanted), clock() - start)
                return
            now = clock()
            if timeout is not None and now - start >= timeout:
                raise TimeoutError(f"{', '.join(missing)} did not appear in {timeout:g} s")
            if now - said >= REMIND_S:
                said = now
                log.warning("waiting for %s to appear%s", ", ".join(
                    f"{n}{why(n)}" for n in missing), f" ({now - start:.0f} s so far)"
                    if now > start else "")
            left = REMIND_S if timeout is None else min(REMIND_S, timeout - (now - start))
            nl.settimeout(max(left, 0.001))
            try:
                nl.recv(65536)  # any link event: look again
            except TimeoutError:
                pass
