"""`python -m colo_orch.backends.xen.libxl`: the libxl bridge alone, for a proxy that the
orchestrator does not own (docs/xen.md, "What runs where")."""

from __future__ import annotations

import argparse
import logging
import threading

from colo_orch.backends.xen.libxl.bridge import LibxlBridge, log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m colo_orch.backends.xen.libxl",
        description="Serve libxl's userspace COLO proxy protocol (xl remus -c -p) for a "
                    "running colo-proxy primary.")
    p.add_argument("--listen", default="0.0.0.0:9911",
                   help="ADDR:PORT = the first vif's colo_checkpoint_host:colo_checkpoint_port")
    p.add_argument("--control", required=True, help="the colo-proxy control socket")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host, _, port = a.listen.rpartition(":")
    bridge = LibxlBridge((host, int(port)), a.control).start()
    log.info("serving libxl on %s:%d for the proxy at %s", *bridge.address, a.control)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        bridge.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
