"""`coloctl disk prepare|verify`: image preparation and comparison for replicated disks."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

from colo_orch.backends.qemu.blk.images import (
    RANGE,
    Comparison,
    ImageError,
    compare_sizes,
    parse_size,
    prepare,
)

EPILOG = """\
examples:
  coloctl disk prepare --image /var/lib/colo/web.raw --active /var/lib/colo/web-active.qcow2 \\
      --hidden /var/lib/colo/web-hidden.qcow2 --size 20G
  coloctl disk prepare --image /srv/sec.raw --active A.qcow2 --hidden H.qcow2 --copy-from /srv/pri.raw
  coloctl disk verify /srv/pri.raw /srv/sec.raw     exit 0 equal, 1 differ, 2 error
"""


BLOCK = 4096  # re-read unit for a range that differs: small enough to fall between writes


def _differing_blocks(a: bytes, b: bytes, base: int) -> list[int]:
    """Offsets of the BLOCK-sized pieces at which two reads of one range differ."""
    return [base + i for i in range(0, max(len(a), len(b)), BLOCK)
            if a[i:i + BLOCK] != b[i:i + BLOCK]]


def _settled(primary: str, secondary: str, range_size: int, settle: float,
             clock: Callable[[], float] = time.monotonic) -> Comparison:
    """Compare range by range; a range that differs is re-read until it agrees, or it
    differs for `settle` seconds.

    While the primary replicates, each guest write lands on both images within one
    write's latency; a range read in between differs for that long only. So the two
    copies of a range are read one right after the other (not whole image after whole
    image, which under load reads them seconds apart), and when they differ only the
    4 KiB blocks that differed are re-read, each pair within microseconds, so a steady
    stream of writes to the range cannot make every re-read straddle a write. A block
    that still differs after `settle` seconds is a real difference.
    """
    base = compare_sizes(primary, secondary, range_size)
    ranges = 0
    with open(primary, "rb") as a, open(secondary, "rb") as b:
        while True:
            off = ranges * range_size
            x, y = a.read(range_size), b.read(range_size)
            if not x and not y:
                break
            if x != y:
                blocks = _differing_blocks(x, y, off)
                deadline = clock() + settle
                while blocks and clock() < deadline:
                    time.sleep(0.01)
                    still = []
                    for blk in blocks:
                        a.seek(blk)
                        b.seek(blk)
                        if a.read(BLOCK) != b.read(BLOCK):
                            still.append(blk)
                    blocks = still
                if blocks:
                    return Comparison(base, range_size, -(-base // range_size), ranges)
                a.seek(off + range_size)
                b.seek(off + range_size)
            ranges += 1
    return Comparison(base, range_size, ranges, None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coloctl disk", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare", help="create/check a host's image and empty secondary layers")
    pr.add_argument("--image", required=True, help="this host's copy of the disk (raw)")
    pr.add_argument("--active", required=True, help="secondary's active layer (qcow2, recreated)")
    pr.add_argument("--hidden", required=True, help="secondary's hidden layer (qcow2, recreated)")
    pr.add_argument("--size", help="create a missing image of this size (e.g. 64M, 20G)")
    pr.add_argument("--copy-from", help="create a missing image as a copy of this one")
    pr.add_argument("--primary", help="the primary's image: check size and contents equal")
    ve = sub.add_parser("verify", help="compare the primary's and the secondary's images")
    ve.add_argument("primary")
    ve.add_argument("secondary")
    ve.add_argument("--range-size", default=str(RANGE), help="bytes per hashed range (1M)")
    ve.add_argument("--settle", type=float, default=2.0,
                    help="seconds to re-read ranges that differ while writes are in flight")
    for sp in (pr, ve):
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "prepare":
            for path in (args.copy_from, args.primary):
                if path is not None and not os.path.exists(path):
                    raise ImageError(f"image {path} is missing")
            done = prepare(args.image, args.active, args.hidden,
                           size=parse_size(args.size) if args.size else None,
                           copy_from=args.copy_from, primary=args.primary)
            print(json.dumps({"ok": True, "done": done}) if args.json else "\n".join(done))
            return 0
        cmp = _settled(args.primary, args.secondary, parse_size(args.range_size), args.settle)
    except (ImageError, OSError) as exc:
        msg = str(exc) if isinstance(exc, ImageError) else f"{exc.filename}: {exc.strerror}"
        if args.json:
            print(json.dumps({"ok": False, "error": msg}))
        else:
            print(f"coloctl disk: error: {msg}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"equal": cmp.equal, "size": cmp.size, "range_size": cmp.range_size,
                          "first_diff": cmp.first_diff, "message": cmp.sentence()}))
    else:
        print(cmp.sentence())
    return 0 if cmp.equal else 1
