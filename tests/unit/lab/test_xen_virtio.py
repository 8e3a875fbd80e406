"""colo_lab.xen_virtio against a real QEMU's QMP (paused before its first instruction)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from colo_lab import xen_virtio
from colo_lab.wait import wait_until

QEMU = "qemu-system-x86_64"


@pytest.mark.skipif(shutil.which(QEMU) is None, reason="no qemu-system-x86_64")
def test_each_virtio_queue_s_indices_are_read_and_only_with_queries_that_cannot_break_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    sock = tmp_path / "qmp.sock"
    qemu = subprocess.Popen([QEMU, "-accel", "tcg", "-machine", "q35", "-S", "-nodefaults",
                             "-display", "none", "-qmp", f"unix:{sock},server=on,wait=off",
                             "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    asked: list[str] = []
    real_ask = xen_virtio._ask

    def ask(q: object, name: str, args: dict[str, object] | None = None) -> object:
        asked.append(name)
        return real_ask(q, name, args)  # type: ignore[arg-type]

    monkeypatch.setattr(xen_virtio, "_ask", ask)
    try:
        wait_until(sock.exists, 30.0, "QEMU's QMP socket")
        assert xen_virtio.main([str(sock)]) == 0
        got = json.loads(capsys.readouterr().out)
        assert xen_virtio.main(["--brief", str(sock)]) == 0
    finally:
        qemu.kill()
        qemu.wait()
    assert capsys.readouterr().out == f"{sock} virtio-net broken=False\n"
    assert got["status"]["status"] == "prelaunch"
    [dev] = got["devices"]
    assert dev["name"] == "virtio-net" and dev["status"]["broken"] is False
    # virtio-net without multiqueue: rx, tx and the control queue.
    assert [q["status"]["queue-index"] for q in dev["queues"]] == [0, 1, 2]
    assert all("last-avail-idx" in q["status"] and "used-idx" in q["status"]
               for q in dev["queues"])
    # x-query-virtio-queue-element walks a stale descriptor on an empty queue with the
    # device's own reader and marks the device broken (QEMU 7.2): never asked.
    assert set(asked) == {"query-status", "x-query-virtio", "x-query-virtio-status",
                          "x-query-virtio-queue-status"}, asked


def test_a_socket_nobody_listens_on_is_said_so(tmp_path: Path) -> None:
    got = xen_virtio.device_model(str(tmp_path / "gone.sock"), timeout=2.0)
    assert got["socket"].endswith("gone.sock")
    assert "FileNotFoundError" in got["error"]
    assert xen_virtio.brief(got) == [f"{got['socket']} error={got['error']}"]


def test_no_device_model_is_an_error_not_an_empty_success(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(xen_virtio, "SOCKETS", "/nonexistent/qmp-libxl-*")
    assert xen_virtio.main([]) == 1
    assert "no device model socket" in capsys.readouterr().err
