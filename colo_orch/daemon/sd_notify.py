"""systemd's readiness protocol (sd_notify(3)), without libsystemd.

Under `Type=notify` systemd sets NOTIFY_SOCKET to a unix datagram socket (a path, or an
abstract name written with a leading "@") and waits for "READY=1" before it counts the
unit started; "STATUS=..." shows in `systemctl status`, "STOPPING=1" says the service is
shutting down. Outside systemd NOTIFY_SOCKET is unset and every call does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        addr = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr

    def __call__(self, message: str) -> bool:
        """Send `message` (lines of KEY=VALUE); False when not under systemd or when the
        socket is gone (a notification is never worth failing the service for)."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.sendall(message.encode())
        except OSError:
            return False
        return True
