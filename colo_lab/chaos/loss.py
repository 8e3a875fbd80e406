"""Random packet loss on a device's egress with a tc BPF program, until SIGTERM.

usage (inside the device's namespace): python -m colo_lab.chaos.loss --dev fwd0 --pct 5

Prints {"ready": true} once the filter is attached, and removes it on SIGTERM or SIGINT.
The filter runs first (prio 1) on the clsact egress hook, before any of colo-proxy's (which
leaves a clsact that holds filters not its own in place).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

SRC = Path(__file__).with_name("loss.bpf.c")
EGRESS = 0xFFFFFFF3  # clsact egress ("ffff:fff3")
PRIO = 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="colo_lab.chaos.loss", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dev", required=True)
    p.add_argument("--pct", type=float, required=True, help="drop probability, per cent")
    a = p.parse_args(argv)
    from bcc import BPF
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    bpf = BPF(src_file=str(SRC).encode(),
              cflags=[f"-DLOSS_PER_MILLION={int(a.pct * 10000)}U"])
    fn = bpf.load_func(b"chaos_loss", BPF.SCHED_CLS)
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=a.dev)[0]
        try:
            ipr.tc("add", "clsact", idx)
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST: the proxy's clsact serves ours too
                raise
        ipr.tc("add-filter", "bpf", idx, ":1", fd=fn.fd, name="chaos_loss", parent=EGRESS,
               classid=1, direct_action=True, prio=PRIO)
        print(json.dumps({"ready": True}), flush=True)
        stop.wait()
        try:
            ipr.tc("del-filter", "bpf", idx, parent=EGRESS, prio=PRIO)
        except NetlinkError as exc:
            if exc.code != 2:  # ENOENT: the device or its clsact went meanwhile
                raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
