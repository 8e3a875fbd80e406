"""The packet socket's read errors: counted, logged once per burst (the socket itself,
on a link that goes down, is tested in tests/system/proxy/test_packet_socket.py)."""

from __future__ import annotations

import errno
import logging

import pytest

from colo_proxy.kernel.packet_socket import SocketErrors


def test_errors_are_counted_and_logged_once_per_burst(caplog: pytest.LogCaptureFixture) -> None:
    errs = SocketErrors("fwd0")
    with caplog.at_level(logging.WARNING, logger="colo-proxy"):
        errs.failed(OSError(errno.ENETDOWN, "Network is down"))
        errs.failed(OSError(errno.EIO, "Input/output error"))
        errs.received()
        errs.failed(OSError(errno.ENODEV, "No such device"))
    assert errs.total == 3 and errs.in_burst
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("packet socket on fwd0: ENETDOWN Network is down")
    assert lines[1].startswith("packet socket on fwd0: ENODEV No such device")
