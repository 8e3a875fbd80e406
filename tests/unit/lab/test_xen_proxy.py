"""The dom0's stand-in proxy and the standalone libxl bridge as the nested Xen lab runs
them: separate processes under a Python with no site-packages but prometheus_client (the
dom0 has python3 and python3-prometheus-client, nothing else), the libxl side the
simulation."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest

from colo_lab.wait import wait_until
from colo_proxy.service import control_socket as control
from tests.support.libxl_sim import SimulatedLibxl

ROOT = Path(__file__).resolve().parents[3]
DEADLINE = 20.0


@pytest.fixture(scope="module")
def dom0_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """PYTHONPATH for `python -S` (no site-packages): the source tree and, alone in a
    directory of its own, prometheus_client: what the dom0's Python can import."""
    extra = tmp_path_factory.mktemp("dom0-site")
    (extra / "prometheus_client").symlink_to(Path(prometheus_client.__file__).parent)
    return f"{ROOT}:{extra}"


def _dom0_env(path: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": path,
            "PYTHONDONTWRITEBYTECODE": "1", "COLO_COMPARE_PURE": "1"}


def _dom0_python(path: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-S", "-m", *args], env=_dom0_env(path),
                            cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(p: subprocess.Popen[bytes]) -> str:
    p.terminate()
    try:
        out, _ = p.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return out.decode(errors="replace")


@pytest.fixture
def pair(tmp_path: Path, dom0_path: str) -> Iterator[tuple[str, tuple[str, int], str]]:
    sock = str(tmp_path / "proxy.sock")
    proxy = _dom0_python(dom0_path, "colo_lab.xen_proxy", "serve", "--control", sock)
    wait_until(lambda: proxy.poll() is not None or control.status_path_for(sock).exists(),
               DEADLINE, "the stand-in proxy's sockets", every=0.02)
    assert proxy.poll() is None, _stop(proxy)
    address = ("127.0.0.1", _free_port())
    bridge = _dom0_python(dom0_path, "colo_orch.backends.xen.libxl", "--listen",
                          f"{address[0]}:{address[1]}", "--control", sock)

    def listening() -> bool:
        assert bridge.poll() is None, _stop(bridge)
        with socket.socket() as s:
            return s.connect_ex(address) == 0

    # The bridge refuses that probe (no socket of a user of its own holds it once closed);
    # it is counted, harmless.
    wait_until(listening, DEADLINE, "the bridge's listener", every=0.02)
    try:
        yield sock, address, dom0_path
    finally:
        print(_stop(bridge))
        print(_stop(proxy))


def test_a_divergence_fed_to_the_standin_goes_through_the_bridge_to_libxl(
        pair: tuple[str, tuple[str, int], str]) -> None:
    sock, address, dom0_path = pair
    sim = SimulatedLibxl(address, timeout=30.0).start()
    try:
        # The initial sync's COLO_CHECKPOINT reaches the stand-in through the bridge.
        wait_until(lambda: control.request(control.status_path_for(sock), {"type": "status"})
                   .get("checkpoints_done", 0) >= 1, DEADLINE, "the first checkpoint_done")
        diverge = subprocess.run(
            [sys.executable, "-S", "-m", "colo_lab.xen_proxy", "diverge", "--control", sock,
             "--timeout", str(DEADLINE)],
            env=_dom0_env(dom0_path),
            capture_output=True, text=True, timeout=2 * DEADLINE)
        assert diverge.returncode == 0, diverge.stdout + diverge.stderr
        assert "released by checkpoint 2" in diverge.stdout
        # libxl's wait is 30 s: only the bridge's DO_CHECKPOINT can have ended it so soon.
        assert [c.why for c in sim.model.checkpoints] == ["do_checkpoint"]
        assert sim.error is None
    finally:
        sim.stop()
