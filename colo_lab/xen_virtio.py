"""Every virtio device's state in this dom0's device models, read over libxl's QMP sockets.

A failed Xen test keeps it: run BH's former SVM said `virtio: zero sized buffers are not
allowed` after its take-over and the connection died, but QEMU's `virtio_error` only marks
the device broken (hw/virtio/virtio.c), so nothing was left to tell why. Its queues'
indices (the device's `last-avail-idx` and `used-idx` beside the guest's avail and used
rings) say whether the device and the guest's memory disagree, as a checkpoint's memory
without its device state would.

QMP commands (QEMU 7.2's qapi/virtio.json, unstable `x-` ones): `x-query-virtio` lists the
devices, `x-query-virtio-status` one's flags (`broken` among them), `x-query-virtio-queue-
status` a queue's indices. Never `x-query-virtio-queue-element`: QEMU 7.2 walks the
element's descriptor chain with the device's own reader, which calls `virtio_error` on a
`next` index out of range, and without an index it reads the slot at `last-avail-idx`,
which on an empty queue is a stale descriptor, not an element: the query itself broke
the NIC it looked at (runs BO-BQ: `Desc next is 65535` even in the boot test's domain,
which never ran COLO). libxl's socket is `/var/run/xen/qmp-libxl-<domid>` (libxl_qmp.c).

  python3 -m colo_lab.xen_virtio                  # every device model in this dom0
  python3 -m colo_lab.xen_virtio /var/run/xen/qmp-libxl-3
  python3 -m colo_lab.xen_virtio --brief          # a line a device: broken or not
"""

from __future__ import annotations

import glob
import json
import sys
from typing import Any

from colo_orch.backends.qemu.qmp import QmpClient, QmpError

SOCKETS = "/var/run/xen/qmp-libxl-*"
# A device model answering libxl's COLO (or busy in a dom0 compiling bcc) is slow.
TIMEOUT_S = 20.0


def _ask(q: QmpClient, name: str, args: dict[str, Any] | None = None) -> Any:
    reply = q.cmd_raw(name, args)
    return reply["return"] if "return" in reply else {"error": reply.get("error")}


def device_model(path: str, timeout: float = TIMEOUT_S, queues: bool = True) -> dict[str, Any]:
    """One device model's virtio devices: status and, per queue, its indices (`queues`;
    without them three commands: libxl's own QMP calls give up after 5 s on a monitor
    another client holds, libxl_qmp.c)."""
    q = QmpClient(path, timeout)
    try:
        q.connect()
        found: dict[str, Any] = {"socket": path, "status": _ask(q, "query-status")}
        devices = _ask(q, "x-query-virtio")
        if not isinstance(devices, list):
            found["x-query-virtio"] = devices
            return found
        found["devices"] = []
        for dev in devices:
            status = _ask(q, "x-query-virtio-status", {"path": dev["path"]})
            vqs = int(status.get("num-vqs", 0)) if queues and "error" not in status else 0
            read = []
            for i in range(vqs):
                at = {"path": dev["path"], "queue": i}
                read.append({"status": _ask(q, "x-query-virtio-queue-status", at)})
            found["devices"].append({**dev, "status": status, "queues": read})
        return found
    except (QmpError, OSError) as exc:
        return {"socket": path, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        q.close()


def brief(found: dict[str, Any]) -> list[str]:
    """One line per device (or the socket's error): few bytes for a slow console."""
    if "devices" not in found:
        return [f"{found['socket']} error={found.get('error') or found.get('x-query-virtio')}"]
    return [f"{found['socket']} {dev['name']} broken={dev['status'].get('broken')}"
            for dev in found["devices"]]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    short = "--brief" in args
    paths = [a for a in args if a != "--brief"] or sorted(glob.glob(SOCKETS))
    if not paths:
        print(f"no device model socket ({SOCKETS})", file=sys.stderr)
        return 1
    for path in paths:
        found = device_model(path, queues=not short)
        print("\n".join(brief(found)) if short else json.dumps(found, indent=1, default=str),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
