"""Protect the lab's pair with QEMU's own colo-compare instead of colo-proxy (the anchor).

`colo-lab up --qemu-compare` and `benchmarks/bench_vms.py` use it, so that anyone can set
the project's proxy beside the comparison it is measured against, on the same VMs.

The wiring is the one QEMU's docs/COLO-FT.txt describes, measured on this lab in
/work/shared/notes/MEASURED.md:

- the PVM mirrors what the client sends it (`filter-mirror`, queue tx) to the SVM over a
  socket chardev on the control link, and redirects its own output into `colo-compare`
  (a `filter-redirector` pair and two loopback sockets), which releases it to the tap
  once the SVM's matches, or asks for a checkpoint;
- the SVM takes the mirrored input from that socket (a `filter-redirector` with indev),
  sends its own output to the compare over the control link, and `filter-rewriter`
  keeps its TCP sequence numbers in step with the PVM's after each checkpoint;
- the guests' NIC is virtio-net on a tap, whose frames carry a virtio-net header: every
  filter and the compare need `vnet_hdr_support=on`, or colo-compare sees "unsupported
  packet" and passes everything uncompared.

No orchestrator runs: the lab enters COLO with QMP (colo_lab.colo) and QEMU checkpoints
on its own, periodically (`x-checkpoint-delay`) and whenever colo-compare finds a
difference. Nothing fails over. While colo-compare runs before COLO starts the PVM's
traffic waits, so `up` enters COLO right after the boot.
"""

from __future__ import annotations

from colo_lab.lab import CTL_PRIMARY, MIG_SECONDARY, MIGRATION_PORT, Lab
from colo_lab.wait import wait_until

# The chardev ports. MIRROR and SEC_OUT cross the control link (the SVM connects to the
# PVM's servers); PRI_OUT and RELEASE are the PVM host's loopback.
MIRROR_PORT = 9003
SEC_OUT_PORT = 9004
PRI_OUT_PORT = 9001
RELEASE_PORT = 9005
NETDEV = "hn0"  # colo_lab.vm's netdev id
# QEMU's periodic checkpoint, the same as the orchestrator's safety net
# (colo_orch.core.config.Timing.checkpoint_max_interval).
DEFAULT_DELAY_MS = 10_000
VNET = "vnet_hdr_support=on"


def _server(cid: str, host: str, port: int) -> list[str]:
    return ["-chardev", f"socket,id={cid},host={host},port={port},server=on,wait=off"]


def _client(cid: str, host: str, port: int, reconnect: bool = False) -> list[str]:
    return ["-chardev", f"socket,id={cid},host={host},port={port}"
            + (",reconnect=1" if reconnect else "")]


def _obj(kind: str, **opts: str) -> list[str]:
    return ["-object", ",".join([kind, *(f"{k}={v}" for k, v in opts.items()), VNET])]


def primary_args() -> list[str]:
    """The PVM's chardevs, filters and colo-compare (arguments after the -netdev)."""
    return [
        *_server("mirror0", CTL_PRIMARY, MIRROR_PORT),
        *_server("compare1", CTL_PRIMARY, SEC_OUT_PORT),
        *_server("compare0", "127.0.0.1", PRI_OUT_PORT),
        *_client("compare0-0", "127.0.0.1", PRI_OUT_PORT),
        *_server("compare_out", "127.0.0.1", RELEASE_PORT),
        *_client("compare_out0", "127.0.0.1", RELEASE_PORT),
        *_obj("filter-mirror", id="m0", netdev=NETDEV, queue="tx", outdev="mirror0"),
        *_obj("filter-redirector", id="redire0", netdev=NETDEV, queue="rx",
              indev="compare_out"),
        *_obj("filter-redirector", id="redire1", netdev=NETDEV, queue="rx",
              outdev="compare0"),
        "-object", "iothread,id=iothread1",
        *_obj("colo-compare", id="comp0", primary_in="compare0-0", secondary_in="compare1",
              outdev="compare_out0", iothread="iothread1"),
    ]


def secondary_args() -> list[str]:
    """The SVM's chardevs (clients of the PVM's, retried until it listens) and filters."""
    return [
        *_client("red0", CTL_PRIMARY, MIRROR_PORT, reconnect=True),
        *_client("red1", CTL_PRIMARY, SEC_OUT_PORT, reconnect=True),
        *_obj("filter-redirector", id="f1", netdev=NETDEV, queue="tx", indev="red0"),
        *_obj("filter-redirector", id="f2", netdev=NETDEV, queue="rx", outdev="red1"),
        *_obj("filter-rewriter", id="rew0", netdev=NETDEV, queue="all"),
    ]


def args(role: str) -> list[str]:
    return primary_args() if role == "primary" else secondary_args()


def protect(lab: Lab, *, delay_ms: int = DEFAULT_DELAY_MS, timeout: float = 60.0) -> float:
    """Enter COLO on a lab that is up with `qemu_compare` (its SVM incoming); returns the
    seconds until the PVM reported status colo."""
    from colo_lab.colo import enter_colo

    pvm, svm = lab.vms["primary"], lab.vms["secondary"]
    took = enter_colo(pvm, svm, f"tcp:{MIG_SECONDARY}:{MIGRATION_PORT}", delay_ms=delay_ms,
                      timeout=timeout)
    # The secondary's colo state: both sides agree before a client is let in.
    wait_until(lambda: svm.cmd("query-colo-status").get("mode") == "secondary", 10,
               "the SVM in COLO mode secondary", every=0.05)
    return took


def drain_events(lab: Lab, role: str = "primary") -> list[tuple[str, float]]:
    """The events a VM's events monitor holds, oldest first, as (name, QEMU's timestamp):
    with no orchestrator, its STOP and RESUME are the only sign of a checkpoint. QEMU
    keeps events in the socket until read, and stamps them with the host's wall clock
    (`g_get_real_time()` in qapi/qmp-event.c), the clock tcpdump's `-tt` prints too."""
    mon = lab.vms[role].events()
    out: list[tuple[str, float]] = []
    while True:
        try:
            ev = mon.pull_event(wait=0.01)
        except TimeoutError:
            return out
        if ev is None:
            return out
        ts = ev.get("timestamp", {})
        out.append((str(ev.get("event")), ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6))
