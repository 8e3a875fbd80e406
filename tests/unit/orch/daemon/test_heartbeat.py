"""colo_orch.daemon.heartbeat: stray datagrams on the port never stop the peer being heard."""

from __future__ import annotations

import socket

from colo_lab.wait import wait_until
from colo_orch.core.heartbeat_msg import encode
from colo_orch.daemon.heartbeat import Heartbeat

KEY = b"the pair's secret"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_peer_is_still_heard_after_garbage_on_the_port() -> None:
    pa, pb = _free_port(), _free_port()
    a = Heartbeat(f"127.0.0.1:{pa}", f"127.0.0.1:{pb}", 0.05, "web", KEY)
    b = Heartbeat(f"127.0.0.1:{pb}", f"127.0.0.1:{pa}", 0.05, "web", KEY)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stray:
        # Queued before the first heartbeat, so the receiver reads them first. "[]" killed
        # its thread ('list' object has no attribute 'get'): the peer was never heard again.
        for data in (b"[]", b"{", b'{"v": 1, "pair": "web", "seq": 1, "state": []}',
                     # a forgery without the key, claiming the peer is a healthy secondary
                     encode(b"not the pair's key", "web", 1, 1, {"role": "secondary"}, None)):
            stray.sendto(data, ("127.0.0.1", pb))
        b.start()
        try:
            a.set_payload({"state": 4, "role": "primary", "vm_ok": True})
            a.start()
            wait_until(lambda: b.last() is not None, 10, "a heartbeat after the garbage")
            rep = b.last()
            assert rep is not None and rep.payload["role"] == "primary"
            assert b.rejected == 4
            # A recording of the peer's heartbeats cannot stand in for it.
            got = rep.payload
            a.stop()
            stray.sendto(encode(KEY, "web", a.boot, 1, {"role": "secondary"}, None),
                         ("127.0.0.1", pb))
            wait_until(lambda: b.replayed == 1, 10, "the replayed heartbeat to be refused")
            last = b.last()
            assert last is not None and last.payload == got
        finally:
            a.stop()  # again if the test stopped it: stopping twice is harmless
            b.stop()
