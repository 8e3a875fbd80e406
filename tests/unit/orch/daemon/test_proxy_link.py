"""colo_orch.daemon.proxy_link: the proxy counts as there only once its serving loop answers."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from colo_lab.wait import wait_until
from colo_orch.daemon.proxy_link import ProxyLink
from tests.support.proxy_child import DEADLINE, ControlClient, ProxyChild


def test_connected_only_after_the_proxy_answers_hello(tmp_path: Path) -> None:
    path = str(tmp_path / "proxy.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)  # like colo-proxy before its datapath is attached: listening, not serving
    link = ProxyLink(path, timeout=0.2)
    link.start()
    try:
        conn, _ = srv.accept()
        hello = json.loads(conn.makefile("rb").readline())
        assert hello["type"] == "hello"
        # Accepted by the kernel, but no answer yet: not ready, and requests fail.
        time.sleep(0.3)  # a window in which a wrong link would have said "connected"
        assert not link.connected
        assert link.send({"type": "status"}) is False
        # Read the unanswered request now: answered below, its "ok" could land before the
        # next send clears the replies, and that send would then wait in vain.
        assert json.loads(conn.recv(4096))["type"] == "status"
        conn.sendall(b'{"type": "hello", "role": "secondary", "mode": "protected"}\n')
        wait_until(lambda: link.connected, 10, "the link to connect", every=0.01)
        # A reply to a request is not mistaken for the hello, nor the hello for a reply.
        # The short timeout made the unanswered request fail fast; this answer comes from
        # another thread, which a loaded machine may run late.
        link.timeout = 10.0
        threading.Thread(target=lambda: (conn.recv(4096), conn.sendall(
            b'{"type": "ok", "for": "status"}\n')), daemon=True).start()
        assert link.send({"type": "status"}) is True
        conn.close()
        wait_until(lambda: not link.connected, 10, "the link to notice the close", every=0.01)
    finally:
        link.stop()
        srv.close()


def test_a_proxy_that_hangs_up_at_once_is_retried(tmp_path: Path) -> None:
    """A proxy on its way out accepts, then closes: the link connects again. (In CI the
    close came before the hello was sent, and the BrokenPipeError killed the reader
    thread; that ordering cannot be forced from here, the retry path can.)"""
    path = str(tmp_path / "proxy.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    srv.settimeout(10)  # a link that stopped trying fails the test, not hangs it
    link = ProxyLink(path, timeout=0.5)
    link.start()
    try:
        for _ in range(3):  # hang up on the first attempts
            conn, _ = srv.accept()
            conn.close()
        conn, _ = srv.accept()
        assert json.loads(conn.makefile("rb").readline())["type"] == "hello"
        conn.sendall(b'{"type": "hello", "role": "primary", "mode": "protected"}\n')
        wait_until(lambda: link.connected, 10, "the link to connect again", every=0.01)
    finally:
        link.stop()
        srv.close()


def test_each_connection_keeps_its_hello_and_counts_a_generation(tmp_path: Path) -> None:
    path = str(tmp_path / "proxy.sock")
    link = ProxyLink(path, timeout=0.5)
    assert not link.listening()  # no socket: no proxy
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    srv.settimeout(10)
    assert link.listening()
    srv.accept()[0].close()  # the probe: connected, and gone at once
    link.start()
    try:
        for gen, pid in ((1, 4711), (2, 4712)):  # the proxy restarts: a new hello
            conn, _ = srv.accept()
            assert json.loads(conn.makefile("rb").readline())["type"] == "hello"
            conn.sendall(json.dumps({"type": "hello", "role": "primary", "mode": "protected",
                                     "pid": pid, "instance": "web"}).encode() + b"\n")
            wait_until(lambda gen=gen: link.generation == gen and link.connected, 10,
                       f"generation {gen}", every=0.01)
            assert link.hello is not None and link.hello["pid"] == pid
            conn.close()
            wait_until(lambda: not link.connected, 10, "the close", every=0.01)
            assert link.hello is None
    finally:
        link.stop()
        srv.close()
    Path(path).unlink()
    assert not link.listening()


def test_the_link_commands_a_real_proxy_alone_and_frees_it_when_it_stops(
        tmp_path: Path) -> None:
    """Against the proxy's own control server and loop: the orchestrator's link holds
    the command channel, another process is refused meanwhile, and after the link is
    gone (a restarted orchestrator) the next process commands at once."""
    proxy = ProxyChild(tmp_path)
    link = ProxyLink(proxy.path, timeout=DEADLINE)
    other = ControlClient(proxy.path)
    try:
        link.start()
        wait_until(lambda: link.connected, DEADLINE, "the link's hello", every=0.01)
        assert link.hello is not None and link.hello["role"] == "primary"
        assert link.send({"type": "pause"}) is True
        refused = other.ask({"type": "resume"})
        assert refused["type"] == "error" and f"pid {os.getpid()}" in refused["error"]
        assert proxy.status()["mode"] == "passthrough"
        other.kill()  # a refused process does not hold the channel either
        reader = ControlClient(proxy.status_path)
        assert reader.ask({"type": "status"})["mode"] == "passthrough"
        reader.kill()
        assert link.send({"type": "resume"}) is True
        link.stop()
        wait_until(lambda: not link.connected, DEADLINE, "the link to close", every=0.01)
        successor = ControlClient(proxy.path)
        try:
            assert successor.ask({"type": "pause"})["type"] == "ok"
        finally:
            successor.kill()
    finally:
        link.stop()
        other.kill()
        proxy.stop()


def test_a_checkpoint_request_wakes_the_loop_at_once(tmp_path: Path) -> None:
    """The orchestrator's loop sleeps up to loop_wait between cycles; a divergence must
    not wait that out (docs/BENCHMARKS.md): the link calls on_request as it reads one."""
    path = str(tmp_path / "proxy.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(10)
    link = ProxyLink(path, timeout=0.5)
    woken = threading.Event()
    link.on_request = woken.set
    link.start()
    try:
        conn, _ = srv.accept()
        assert json.loads(conn.makefile("rb").readline())["type"] == "hello"
        conn.sendall(b'{"type": "hello", "role": "primary", "mode": "protected"}\n')
        wait_until(lambda: link.connected, 10, "the link to connect", every=0.01)
        assert not woken.is_set()  # a hello is no request
        conn.sendall(b'{"type": "checkpoint_request", "reason": "tcp_flags", '
                     b'"held_since": 5.5, "detected_at": 5.75}\n')
        assert woken.wait(10)
        assert link.take_requests() == ["tcp_flags"]
        # Its marks for the step timing (core.timeline), on the host's monotonic clock.
        marks = link.take_marks()
        assert marks is not None and (marks["held_since"], marks["detected_at"]) == (5.5, 5.75)
        assert 5.75 < marks["received"] <= time.monotonic()
        assert link.take_marks() is None
    finally:
        link.stop()
        srv.close()


def test_release_permits_go_unanswered_and_their_answers_renew_the_token(
        tmp_path: Path) -> None:
    """Against the proxy's own loop: a permit does not wait, the reader keeps the newest
    token, and a request sent meanwhile still gets its own answer."""
    proxy = ProxyChild(tmp_path)
    link = ProxyLink(proxy.path, timeout=DEADLINE)
    try:
        link.start()
        wait_until(lambda: link.connected, DEADLINE, "the link's hello", every=0.01)
        assert link.permit_token == 0  # its hello says it takes permits; no token yet
        assert link.permit(30.0, 0) is True  # arms it (auto), grants nothing: no token
        wait_until(lambda: link.permit_token != 0, DEADLINE, "the permit's answer",
                   every=0.01)
        assert not proxy.status()["permit"]["allows"]
        assert link.permit(30.0, link.permit_token or 0) is True
        wait_until(lambda: proxy.status()["permit"]["allows"], DEADLINE, "the permit",
                   every=0.01)
        st = proxy.status()["permit"]
        assert st["enforced"] and st["allows"] and 0 < st["remaining_s"] <= 30.0
        for _ in range(20):  # answers to permits are not taken for this one's
            assert link.permit(30.0, link.permit_token or 0) is True
        assert link.send({"type": "status"}) is True
        assert link.permit(0.0, link.permit_token or 0) is True  # revoked
        wait_until(lambda: not proxy.status()["permit"]["allows"], DEADLINE,
                   "the revocation", every=0.01)
        assert link.permits_sent == 23
    finally:
        link.stop()
        proxy.stop()
