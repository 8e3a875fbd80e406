"""colo_lab.xen_colo's secondary: it takes over (XenBackend.take_over) once told the primary
is lost, and ends when its `xl migrate-receive` has failed over. The `xl` is the stand-in
(tests/support/standin_xl.py), which fails over on the end of its stream as libxl does."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
import threading
from pathlib import Path

import pytest

from colo_lab import xen_colo
from colo_lab.wait import wait_until
from tests.support.paths import REPO as ROOT

XL = [sys.executable, "-m", "tests.support.standin_xl"]


@pytest.fixture(autouse=True)
def _standin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    monkeypatch.setenv("XL_STANDIN_DIR", str(tmp_path))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_secondary_takes_over_when_told_and_ends_failed_over(tmp_path: Path) -> None:
    port, flag = _free_port(), tmp_path / "take-over"
    out = io.StringIO()
    result: list[int] = []

    def run() -> None:
        with contextlib.redirect_stdout(out):
            result.append(xen_colo.secondary("web", f"tcp:127.0.0.1:{port}", XL, str(flag)))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_until(lambda: "waiting for xl remus" in out.getvalue(), 10, "the receiver to listen",
               every=0.05)
    # A primary that streams, then dies without closing: only the take-over ends the stream.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as primary:
        primary.sendall(b"checkpoint stream")
        assert t.is_alive() and "took over" not in out.getvalue()
        flag.touch()
        t.join(30)
    said = out.getvalue()
    assert not t.is_alive() and result == [0], said
    assert "took over: domain running" in said, said
    assert "xl migrate-receive ended (failed_over)" in said, said
    assert (tmp_path / "web").exists() and not (tmp_path / "web--incoming").exists()
