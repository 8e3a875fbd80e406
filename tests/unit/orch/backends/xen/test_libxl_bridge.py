"""Real sockets, real time (short timeouts): the simulated libxl over TCP, the bridge, and the
proxy service's own control server, PrimaryProxy and loop (`serve`) in a child process whose
NFQUEUE and SVM socket are stand-ins fed by the test (tests/support/proxy_child.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_lab.wait import wait_until
from colo_orch.backends.xen.libxl import __main__ as standalone
from colo_orch.backends.xen.libxl.bridge import LibxlBridge
from tests.support.libxl_sim import INIT, SimulatedLibxl, forge, frame
from tests.support.packets import ACK, CLIENT_ISN, PSH, PVM_ISN, SVM_ISN, SYN, tcp
from tests.support.proxy_child import DEADLINE, ProxyChild


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ProxyChild]:
    p = ProxyChild(tmp_path)
    yield p
    p.stop()


@pytest.fixture
def bridge(proxy: ProxyChild) -> Iterator[LibxlBridge]:
    b = LibxlBridge(("127.0.0.1", 0), proxy.path, reconnect=0.05).start()
    assert b.wait(lambda: b.proxy_connected, DEADLINE)
    yield b
    b.stop()


def test_over_tcp_init_divergence_periodic_and_disconnect(proxy: ProxyChild,
                                                          bridge: LibxlBridge) -> None:
    sim = SimulatedLibxl(bridge.address, timeout=0.3).start()
    try:
        # INIT answered, initial sync's COLO_CHECKPOINT reached the proxy.
        assert bridge.wait_checkpoints(1, DEADLINE), bridge.status()
        wait_until(lambda: proxy.status()["checkpoints_done"] >= 1, DEADLINE,
                   "the first checkpoint_done", every=0.01)
        proxy.send("pvm", 1, tcp(PVM_ISN, CLIENT_ISN + 1, SYN | ACK))
        proxy.send("svm", 1, tcp(SVM_ISN, CLIENT_ISN + 1, SYN | ACK))
        assert proxy.wait_accepted(1) == [1]

        # Divergence: DO_CHECKPOINT goes out, libxl checkpoints on it, output is flushed.
        proxy.send("pvm", 2, tcp(PVM_ISN + 1, CLIENT_ISN + 1, ACK | PSH, b"hello"))
        proxy.send("svm", 2, tcp(SVM_ISN + 1, CLIENT_ISN + 1, ACK | PSH, b"hellx"))
        assert proxy.wait_accepted(2) == [1, 2]
        assert sim.wait_for(lambda: any(c.why == "do_checkpoint"
                                        for c in sim.model.checkpoints), DEADLINE)

        # Periodic: a packet with no twin yet goes out at libxl's own 0.3 s checkpoint.
        proxy.send("pvm", 3, tcp(PVM_ISN + 6, CLIENT_ISN + 1, ACK | PSH, b"alone"))
        assert proxy.wait_accepted(3) == [1, 2, 3]
        assert sim.wait_for(lambda: sum(c.why == "timeout"
                                        for c in sim.model.checkpoints) >= 2, DEADLINE)
        assert sim.error is None
    finally:
        sim.stop()  # libxl disconnects

    assert bridge.wait(lambda: not bridge.connected, DEADLINE)
    requests = bridge.session.stats.requests if bridge.session else 0
    # A second connection diverges while libxl is away.
    proxy.send("pvm", 4, tcp(PVM_ISN, CLIENT_ISN + 1, SYN | ACK, sport=81))
    proxy.send("svm", 3, tcp(SVM_ISN, CLIENT_ISN + 1, SYN | ACK, sport=81))
    assert proxy.wait_accepted(4)[-1] == 4
    proxy.send("pvm", 5, tcp(PVM_ISN + 1, CLIENT_ISN + 1, ACK | PSH, b"hello", sport=81))
    proxy.send("svm", 4, tcp(SVM_ISN + 1, CLIENT_ISN + 1, ACK | PSH, b"jello", sport=81))
    assert bridge.wait(lambda: bridge.session is not None
                       and bridge.session.stats.requests > requests, DEADLINE)
    assert proxy.status()["held_packets"] >= 1  # held: nobody can checkpoint now

    # xl remus again (re-protection): a new session serves the same proxy.
    sim2 = SimulatedLibxl(bridge.address, timeout=0.3).start()
    try:
        assert proxy.wait_accepted(5)[-1] == 5  # released by the new session's first sync
        assert bridge.sessions == 2 and sim2.error is None
    finally:
        sim2.stop()


def test_only_the_configured_peer_may_connect(proxy: ProxyChild,
                                              bridge: LibxlBridge) -> None:
    """A connection from another address (a LAN host, here 127.0.0.2) is closed unread: its
    COLO_CHECKPOINT releases nothing."""
    assert bridge.peer == "127.0.0.1"
    proxy.hold_one()
    assert forge(bridge.address, source="127.0.0.2") == b""
    assert bridge.refused == 1 and bridge.sessions == 0
    assert proxy.still_held()


def test_a_second_connection_is_refused_while_libxl_is_connected(
        proxy: ProxyChild, bridge: LibxlBridge) -> None:
    sim = SimulatedLibxl(bridge.address, timeout=0.3).start()
    try:
        assert bridge.wait_checkpoints(1, DEADLINE), bridge.status()
        assert forge(bridge.address) == b""  # from libxl's own address, even
        assert bridge.refused == 1 and bridge.sessions == 1
        # libxl's connection was not evicted: its next checkpoint arrives on it.
        n = bridge.checkpoints
        assert bridge.wait_checkpoints(n + 1, DEADLINE), bridge.status()
        assert bridge.connected and sim.error is None
    finally:
        sim.stop()


def test_a_libxl_that_hung_up_is_replaced_at_once(proxy: ProxyChild,
                                                  bridge: LibxlBridge) -> None:
    """`xl remus` again after a failover: the old connection is gone, whether or not the
    bridge has read its end yet, and the new one is taken."""
    for expected in (1, 2):
        with socket.create_connection(bridge.address, timeout=DEADLINE) as s:
            s.sendall(frame(INIT))
            assert s.recv(4096).endswith(b"COLO_COMPARE_GET_XEN_INIT\0")
        assert bridge.sessions == expected
    assert bridge.refused == 0


def test_a_socket_of_another_user_is_refused(proxy: ProxyChild) -> None:
    """The owner of the connecting socket, from /proc/net/tcp: here the bridge accepts only
    a uid that is not ours (the real other user: tests/system/orch/test_libxl_users.py)."""
    b = LibxlBridge(("127.0.0.1", 0), proxy.path, allowed_uids={os.geteuid() + 1}).start()
    try:
        assert forge(b.address) == b""
        assert b.refused == 1 and b.sessions == 0
    finally:
        b.stop()


@pytest.mark.parametrize("listen, peer", [(("0.0.0.0", 0), None), (("localhost", 0), None),
                                          (("127.0.0.1", 0), "0.0.0.0")])
def test_the_bridge_never_listens_on_every_interface(listen: tuple[str, int],
                                                     peer: str | None) -> None:
    with pytest.raises(ValueError, match=r"libxl bridge (listen|peer) address"):
        LibxlBridge(listen, None, peer=peer)


def test_the_standalone_bridge_listens_on_loopback_by_default(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert standalone.parser().parse_args(["--control", "/x.sock"]).listen == "127.0.0.1:9911"
    assert standalone.main(["--listen", "0.0.0.0:9911", "--control", "/x.sock"]) == 2
    err = capsys.readouterr().err
    assert "0.0.0.0 takes libxl's connection from any network" in err
    assert "--listen 127.0.0.1:9911" in err


def test_without_a_proxy_checkpoints_are_counted_and_no_delivery_fails() -> None:
    """colo-orch with hooks instead of a proxy (the nested Xen lab's dom0s): the bridge
    answers libxl alone; each COLO_CHECKPOINT is counted, and no checkpoint_done is owed
    to a proxy (the lab's primary logged "no proxy connected" at every checkpoint)."""
    b = LibxlBridge(("127.0.0.1", 0), None).start()
    sim = SimulatedLibxl(b.address, timeout=0.3).start()
    try:
        assert b.wait_checkpoints(3, DEADLINE), b.status()
        assert b.status()["control_failures"] == 0 and sim.error is None
    finally:
        sim.stop()
        b.stop()
