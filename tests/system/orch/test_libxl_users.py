"""Another local user on the libxl bridge's port (issue 15): its INIT and COLO_CHECKPOINT,
from libxl's own address, change nothing.

libxl's protocol carries no credentials; the bridge asks the kernel who owns the connecting
socket (/proc/net/tcp). The real bridge, the proxy service in a child with stand-in sources
(tests/support/proxy_child.py), and a forked child as uid 65534."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_orch.backends.xen.libxl.bridge import LibxlBridge
from tests.support.libxl_sim import SimulatedLibxl, forge
from tests.support.proxy_child import DEADLINE, ProxyChild
from tests.support.users import NOBODY, run_as

pytestmark = pytest.mark.host


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ProxyChild]:
    p = ProxyChild(tmp_path)
    yield p
    p.stop()


def test_another_user_cannot_speak_for_libxl(proxy: ProxyChild) -> None:
    bridge = LibxlBridge(("127.0.0.1", 0), proxy.path, reconnect=0.05).start()
    try:
        assert bridge.wait(lambda: bridge.proxy_connected, DEADLINE)
        proxy.hold_one()
        assert run_as(NOBODY, NOBODY, forge, bridge.address) == b""
        assert bridge.refused == 1 and bridge.sessions == 0
        assert proxy.still_held()
        # libxl itself (root) is taken, and its first COLO_CHECKPOINT releases the packet.
        sim = SimulatedLibxl(bridge.address, timeout=0.3).start()
        try:
            assert proxy.wait_accepted(2) == [1, 2]
            assert bridge.sessions == 1 and sim.error is None
        finally:
            sim.stop()
    finally:
        bridge.stop()
