"""The handover file: the offsets a secondary-role proxy leaves for the primary-role one.

Its document and purpose are `colo_proxy.wire.handover`; here it is written whole or not
at all, taken once, and voided.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from colo_proxy.wire.handover import DamagedHandover, decode, encode
from colo_proxy.wire.offset import Offset

log = logging.getLogger("colo-proxy")


def path_for(control_socket: str | Path) -> Path:
    return Path(f"{control_socket}.handover.json")


def write(path: Path, offsets: list[Offset]) -> int:
    """Write the offsets that move a flow (complete, non-zero); returns how many."""
    keep = [o for o in offsets if o.shifts]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(encode(keep))
    os.replace(tmp, path)  # a reader sees the whole file or none
    return len(keep)


def take(path: Path) -> list[Offset]:
    """Read and remove the file; [] if there is none. A damaged file is reported and
    dropped: its flows then break, as without a handover, but nothing else does."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    finally:
        discard(path)
    try:
        return decode(text)
    except DamagedHandover as exc:
        log.error("handover file %s is damaged (%s): the connections it held are not "
                  "carried over", path, exc)
        return []


def discard(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
