"""`xl remus -s ""` runs its <host> argument as a shell command whose stdin/stdout carry the
migration stream (xl_migrate.c: an empty ssh command makes the rune the host string). This is
that command: a pump between stdin/stdout and the secondary orchestrator's receiver port,
so that the receiving `xl migrate-receive` is a child of the secondary's orchestrator
(supervised there) instead of sshd's.

    python -m colo_orch.backends.xen.connect HOST PORT [--tls-dir DIR [--tls-hostname NAME]]

With --tls-dir the connection is TLS (colo_orch.backends.xen.tls): our client certificate
from DIR, and the receiver's certificate checked against NAME (default HOST)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading

from colo_orch.backends.xen.tls import client_context, relay


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="colo_orch.backends.xen.connect")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--tls-dir", default="")
    p.add_argument("--tls-hostname", default="")
    args = p.parse_args(argv)
    sock = socket.create_connection((args.host, args.port), timeout=30)
    sock.settimeout(None)
    if args.tls_dir:
        sock = relay(sock, client_context(args.tls_dir), server_side=False,
                     hostname=args.tls_hostname or args.host)

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
