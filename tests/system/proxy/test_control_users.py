"""Another local user and the proxy's control sockets (issue 15): a forged command from
uid 65534 changes nothing, whatever the socket's mode; status stays open to it.

The real ControlServer, PrimaryProxy and loop in a child process with stand-in sources
(tests/support/proxy_child.py); the other user is a forked child that drops to uid 65534
with gid 0, which the old mode 0660 (group root) let in."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_proxy.service import control_socket as control
from tests.support.proxy_child import ControlClient, ProxyChild
from tests.support.users import NOBODY

pytestmark = pytest.mark.host


@pytest.fixture
def proxy() -> Iterator[ProxyChild]:
    # pytest's tmp_path is root's alone (0700): the other user must reach the sockets, so
    # that only their own modes and the peer check stand in its way.
    d = Path(tempfile.mkdtemp(prefix="colo-ctl-"))
    d.chmod(0o755)
    p = ProxyChild(d)
    yield p
    p.stop()
    shutil.rmtree(d)


def test_another_user_cannot_command_the_proxy(proxy: ProxyChild) -> None:
    proxy.hold_one()
    nobody = ControlClient(proxy.path, uid=NOBODY, gid=0)
    try:
        # The mode: 0600, so even a member of the socket's group cannot connect.
        assert nobody.ask({"type": "checkpoint_done"}) == {
            "oserror": errno.EACCES, "strerror": "Permission denied"}
        assert proxy.still_held()
    finally:
        nobody.kill()
    # The peer check: with the mode loosened by hand, the connection is refused anyway.
    os.chmod(proxy.path, 0o666)
    nobody = ControlClient(proxy.path, uid=NOBODY, gid=0)
    try:
        reply = nobody.ask({"type": "checkpoint_done"})
        assert reply["type"] == "error", reply
        assert f"uid {NOBODY} may not use {proxy.path}" in reply["error"]
        assert nobody.ask({"type": "failover"}) == {"closed": True}
        assert proxy.still_held()
    finally:
        nobody.kill()
    # Root's command still works, and releases the packet.
    assert control.request(proxy.path, {"type": "checkpoint_done"})["type"] == "ok"
    assert proxy.wait_accepted(2) == [1, 2]


def test_another_user_reads_the_status(proxy: ProxyChild) -> None:
    proxy.hold_one()
    nobody = ControlClient(proxy.status_path, uid=NOBODY, gid=NOBODY)
    try:
        assert nobody.ask({"type": "status"})["held_packets"] == 1
        assert nobody.ask({"type": "hello"})["role"] == "primary"
        reply = nobody.ask({"type": "checkpoint_done"})
        assert reply["type"] == "error" and "commands go to" in reply["error"]
        assert proxy.still_held()
    finally:
        nobody.kill()
