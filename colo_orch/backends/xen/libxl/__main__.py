"""`python -m colo_orch.backends.xen.libxl`: the libxl bridge alone, for a proxy that the
orchestrator does not own (docs/xen.md, "What runs where")."""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from colo_orch.backends.xen.libxl.bridge import LibxlBridge, log

EXAMPLES = """examples:
  python -m colo_orch.backends.xen.libxl --control /run/colo-proxy/primary.sock
  python -m colo_orch.backends.xen.libxl --listen 10.99.1.1:9911 \\
      --control /run/colo-proxy/primary.sock

Only --peer may connect (libxl runs on this host and connects to --listen, so by default
that address), only a socket of root's, and one connection at a time.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m colo_orch.backends.xen.libxl",
        description="Serve libxl's userspace COLO proxy protocol (xl remus -c -p) for a "
                    "running colo-proxy primary.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:9911",
                   help="ADDR:PORT = the first vif's colo_checkpoint_host:colo_checkpoint_port "
                        "(an IPv4 address of this host, not 0.0.0.0; default %(default)s)")
    p.add_argument("--peer", help="the only address libxl may connect from (default: the "
                                  "--listen address)")
    p.add_argument("--control", required=True, help="the colo-proxy control socket")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host, _, port = a.listen.rpartition(":")
    try:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"port {port!r} is not 1-65535")
        bridge = LibxlBridge((host, int(port)), a.control, peer=a.peer).start()
    except (ValueError, OSError) as exc:
        print(f"libxl bridge: error: --listen {a.listen}, --peer {a.peer or host}: {exc}; "
              "give the address the first vif names in colo_checkpoint_host, e.g. "
              "--listen 127.0.0.1:9911", file=sys.stderr)
        return 2
    log.info("serving libxl on %s:%d (from %s only) for the proxy at %s", *bridge.address,
             bridge.peer, a.control)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        bridge.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
