"""`xl remus -s ""` runs its <host> argument as a shell command whose stdin/stdout carry the
migration stream (xl_migrate.c: an empty ssh command makes the rune the host string). This is
that command: a pump between stdin/stdout and the secondary orchestrator's receiver port,
so that the receiving `xl migrate-receive` is a child of the secondary's orchestrator
(supervised there) instead of sshd's."""

from __future__ import annotations

import os
import socket
import sys
import threading


def main(argv: list[str]) -> int:
    host, port = argv[0], int(argv[1])
    sock = socket.create_connection((host, port), timeout=30)
    sock.settimeout(None)

    def upstream() -> None:
        while data := os.read(0, 65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, daemon=True).start()
    while data := sock.recv(65536):
        os.write(1, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
