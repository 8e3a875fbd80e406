"""Disk images: preparation for replication, and range-hash comparison.

Raw images only for the replicated disk itself (the secondary's copy is written
by the primary through NBD and read by QEMU as the base of the secondary's
chain); the active and hidden layers are qcow2 (`qemu-img`), as QEMU's block
replication requires a backing chain there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

RANGE = 1 << 20  # bytes per compared range


class ImageError(Exception):
    """An image problem; str() says what is wrong and what to do."""


def qemu_img() -> str:
    """qemu-img: $COLO_QEMU_IMG, next to $COLO_QEMU, or on PATH."""
    env = os.environ.get("COLO_QEMU_IMG")
    if env:
        return env
    q = os.environ.get("COLO_QEMU")
    if q and os.access(Path(q).with_name("qemu-img"), os.X_OK):
        return str(Path(q).with_name("qemu-img"))
    found = shutil.which("qemu-img")
    if found is None:
        raise ImageError("qemu-img not found: install qemu-utils or set COLO_QEMU_IMG")
    return found


def size_of(path: str) -> int:
    """Virtual size of a raw image (its file size); a missing image is an ImageError."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        raise ImageError(f"image {path} is missing: create it (coloctl disk prepare)") from None
    except OSError as exc:
        raise ImageError(f"image {path}: {exc.strerror}") from None


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = units.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in units else t
    if not num.isdigit() or int(num) <= 0:
        raise ImageError(f"size {text!r} is not a positive size (e.g. 64M, 2G)")
    return int(num) * mult


def create_raw(path: str, size: int) -> None:
    with open(path, "xb") as f:  # never truncate an existing disk by accident
        f.truncate(size)


def create_layer(path: str, size: int) -> None:
    """(Re)create an empty qcow2 layer of `size` bytes; an existing one is replaced."""
    Path(path).unlink(missing_ok=True)
    proc = subprocess.run([qemu_img(), "create", "-q", "-f", "qcow2", path, str(size)],
                          capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise ImageError(f"qemu-img create {path}: {proc.stderr.strip()}")


def copy_sparse(src: str, dst: str) -> None:
    """Copy a raw image, leaving all-zero ranges as holes."""
    size = size_of(src)
    tmp = dst + ".part"
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        fo.truncate(size)
        while chunk := fi.read(RANGE):
            if chunk.count(0) != len(chunk):
                fo.write(chunk)
            else:
                fo.seek(len(chunk), os.SEEK_CUR)
        fo.flush()
        os.fsync(fo.fileno())
    os.replace(tmp, dst)


def check_layers(image: str, active: str, hidden: str) -> int:
    """Sizes of the secondary's chain agree; returns the image size."""
    size = size_of(image)
    for layer in (active, hidden):
        got = layer_size(layer)
        if got != size:
            raise ImageError(f"layer {layer} is {got} bytes but image {image} is {size}: "
                             "recreate it with coloctl disk prepare")
    return size


def layer_size(path: str) -> int:
    if not os.path.exists(path):
        raise ImageError(f"layer {path} is missing: create it (coloctl disk prepare)")
    proc = subprocess.run([qemu_img(), "info", "--output=json", "-U", path],
                          capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise ImageError(f"qemu-img info {path}: {proc.stderr.strip()}")
    return int(json.loads(proc.stdout)["virtual-size"])


@dataclass(frozen=True)
class Comparison:
    size: int
    range_size: int
    ranges: int
    first_diff: int | None  # index of the first differing range, None if equal

    @property
    def equal(self) -> bool:
        return self.first_diff is None

    def sentence(self) -> str:
        if self.first_diff is None:
            return (f"equal: {self.size} bytes in {self.ranges} ranges of "
                    f"{self.range_size} bytes")
        lo = self.first_diff * self.range_size
        hi = min(lo + self.range_size, self.size) - 1
        return f"differ: first differing range #{self.first_diff} (bytes {lo}-{hi})"


def range_hashes(path: str, range_size: int = RANGE) -> list[bytes]:
    """SHA-256 of each range of a raw image, read through the page cache."""
    out = []
    with open(path, "rb") as f:
        while chunk := f.read(range_size):
            out.append(hashlib.sha256(chunk).digest())
    return out


def compare_sizes(primary: str, secondary: str, range_size: int = RANGE) -> int:
    """The images' common size; an ImageError if they differ or the range size is bad."""
    a, b = size_of(primary), size_of(secondary)
    if a != b:
        raise ImageError(f"sizes differ: {primary} is {a} bytes, {secondary} is {b}: "
                         "the secondary's copy must be the same size (coloctl disk prepare)")
    if range_size <= 0:
        raise ImageError("range size must be positive")
    return a


def compare(primary: str, secondary: str, range_size: int = RANGE) -> Comparison:
    a = compare_sizes(primary, secondary, range_size)
    ha, hb = range_hashes(primary, range_size), range_hashes(secondary, range_size)
    first = next((i for i, (x, y) in enumerate(zip(ha, hb, strict=True)) if x != y), None)
    return Comparison(a, range_size, len(ha), first)


def prepare(image: str, active: str, hidden: str, *, size: int | None = None,
            copy_from: str | None = None, primary: str | None = None) -> list[str]:
    """Make a host ready to be either role; returns what was done, one sentence each.

    - image missing: created from `copy_from` (sparse copy) or empty of `size` bytes;
      an existing image is never overwritten.
    - `primary` given: the image must have its size and, for an initial pairing
      without a resync, its contents (compared by range hashes).
    - active and hidden layers are (re)created empty with the image's size.
    """
    done = []
    if not os.path.exists(image):
        if copy_from is not None:
            copy_sparse(copy_from, image)
            done.append(f"copied {copy_from} to {image}")
        elif size is not None:
            create_raw(image, size)
            done.append(f"created {image} ({size} bytes)")
        else:
            raise ImageError(f"image {image} is missing: give --size or --copy-from")
    have = size_of(image)
    if size is not None and have != size:
        raise ImageError(f"image {image} is {have} bytes, not {size}: sizes must match")
    if copy_from is not None and size_of(copy_from) != have:
        raise ImageError(f"image {image} is {have} bytes but {copy_from} is "
                         f"{size_of(copy_from)}: sizes must match")
    if primary is not None:
        cmp = compare(primary, image)
        done.append(f"compared with {primary}: {cmp.sentence()}")
        if not cmp.equal:
            raise ImageError(f"{image} differs from {primary} ({cmp.sentence()}); the "
                             "orchestrator resyncs it before replication, or copy it again")
    for layer in (active, hidden):
        create_layer(layer, have)
    done.append(f"created empty layers {active} and {hidden} ({have} bytes)")
    return done
