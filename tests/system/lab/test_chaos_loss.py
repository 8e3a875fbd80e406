"""colo_lab.chaos.loss: random loss on a device's egress with a tc BPF program, where
iptables cannot reach (the forward link's frames are redirected by tc, past netfilter)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from colo_lab import netns
from colo_lab.chaos.runner import _Ready
from colo_lab.wait import wait_until

pytestmark = pytest.mark.host
N = 400


@pytest.fixture
def ns() -> Iterator[str]:
    name = "colo-tloss" + uuid.uuid4().hex[:6]
    netns.add(name)
    try:
        netns.ip(name, "link", "add", "fwd0", "type", "veth", "peer", "name", "fwd0x")
        netns.ip(name, "link", "set", "fwd0", "up")
        netns.ip(name, "link", "set", "fwd0x", "up")
        yield name
    finally:
        netns.delete(name)


def _sent(ns: str) -> int:
    """Send N frames out of fwd0 through a packet socket; how many left it (veth counts a
    frame as transmitted when it hands it to its peer, after the egress hook)."""
    code = ("import socket\n"
            "def tx(): return int(open('/sys/class/net/fwd0/statistics/tx_packets').read())\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('fwd0', 0))\n"
            "before = tx()\n"
            f"for i in range({N}):\n"
            "    try: s.send(b'\\xff' * 6 + b'\\x02' * 6 + b'\\x88\\xb5' + b'x' * 50)\n"
            "    except OSError: pass  # ENOBUFS: the egress hook dropped it\n"
            "print(tx() - before)\n")
    res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    return int(res.stdout)


def _loss(ns: str, pct: float) -> _Ready:
    proc = _Ready(ns, "colo_lab.chaos.loss", "--dev", "fwd0", "--pct", str(pct))
    wait_until(lambda: proc.ready.is_set() or proc.proc.poll() is not None, 60,
               "the loss filter")
    assert proc.ready.is_set(), proc.proc.returncode
    return proc


def _stop(proc: _Ready) -> None:
    proc.proc.terminate()
    assert proc.proc.wait(timeout=30) == 0


def test_loss_drops_about_its_share_and_nothing_once_stopped(ns: str) -> None:
    assert _sent(ns) == N
    all_lost = _loss(ns, 100)
    try:
        assert _sent(ns) == 0
    finally:
        _stop(all_lost)
    half = _loss(ns, 50)
    try:
        got = _sent(ns)
    finally:
        _stop(half)
    # Binomial(400, 0.5): 200 +- 10 (one sigma); 120..280 is eight sigma either way.
    assert 120 <= got <= 280, got
    assert _sent(ns) == N
    assert "chaos_loss" not in netns.sh(ns, ["tc", "filter", "show", "dev", "fwd0", "egress"])
