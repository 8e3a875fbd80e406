"""Symbol tables read from the nested hosts' own images, for the hang reports: Xen's
(its symbols, xen/tools/symbols.c) and the dom0 kernel's (kallsyms, Linux 6.1's
scripts/kallsyms.c). A stalled host's registers and Xen's dumps give bare addresses
(run BP: dom0 vCPU 1 at ffffffff81a39075, Xen at ffff82d04033deba); with these they read
`xen_hypercall_pv+0x5` and `flush_area_mask+0xca`.

Both tools write the same compressed table into the image's read-only data, in this
order: each symbol's address (Xen: 32-bit offsets from XEN_VIRT_START; Linux: 32-bit
offsets then a 64-bit base), the symbol count, the names (each a length byte then token
numbers; Linux 6.1 writes a length of 128 or more in two bytes), a marker every 256
names (the offset of that name), the 256 tokens (NUL-terminated strings), and each
token's offset in that table (16-bit). A name's first character is its type ('t', 'T').
The images carry no ELF symbols (both are stripped), so the table is found by its shape.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import lzma
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from colo_lab.cmd import need
from colo_lab.errors import LabError

# xen/arch/x86/include/asm/config.h: SYMBOLS_ORIGIN is XEN_VIRT_START.
XEN_ORIGIN = 0xFFFF82D040000000
# Where a non-relocated x86-64 Linux puts its text (a PV dom0 is never relocated).
LINUX_TEXT = 0xFFFFFFFF81000000
# The digits as single-character tokens, in a row: both tools keep every character used
# in a name as a token of its own, in byte order, so this is inside the token table.
DIGIT_TOKENS = b"".join(bytes([c]) + b"\0" for c in b"0123456789")
# The lz4 tool's legacy frame, which Linux's lz4 payload uses.
LZ4_LEGACY = b"\x02\x21\x4c\x18"
# How far past a symbol an address is still named after it: farther is a gap (user
# space, between per-CPU offsets and the kernel's text) or not code at all.
MAX_OFFSET = 0x10000


@dataclass(frozen=True)
class SymbolTable:
    addresses: tuple[int, ...]  # sorted
    names: tuple[str, ...]
    types: str  # nm's letter of each: 't' or 'T' for code

    def name(self, address: int, code_only: bool = False) -> str | None:
        """`symbol+0xoffset` of the symbol an address falls in; None outside the table
        (or, with `code_only`, in data: a stack holds pointers to both)."""
        i = bisect.bisect_right(self.addresses, address) - 1
        if i < 0 or address - self.addresses[i] > MAX_OFFSET:
            return None
        if code_only and self.types[i] not in "tT":
            return None
        return f"{self.names[i]}+{address - self.addresses[i]:#x}"

    def lookup(self, name: str) -> int | None:
        for address, n in zip(self.addresses, self.names, strict=True):
            if n == name:
                return address
        return None


def _u16(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", data, at)[0])


def _u32(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", data, at)[0])


def _tokens(data: bytes) -> tuple[int, list[str]]:
    """(where the token table starts, its 256 tokens)."""
    digits = data.find(DIGIT_TOKENS)
    while digits >= 0:  # the same bytes are in other tables of a kernel (seen: five)
        # The index (256 offsets, the first 0, rising) follows the table within a few
        # KiB; the digit '0' is the token numbered 0x30: the table's start plus its offset.
        for at in range(digits & ~1, min(digits + 8192, len(data) - 512), 2):
            if _u16(data, at) != 0:
                continue
            index = [_u16(data, at + 2 * i) for i in range(256)]
            if any(not 0 < index[i + 1] - index[i] < 64 for i in range(255)):
                continue
            start = digits - index[0x30]
            if start < 0 or any(data[start + index[i + 1] - 1] != 0 for i in range(255)):
                continue
            tokens = [data[start + o:data.index(b"\0", start + o)].decode("latin-1")
                      for o in index]
            return start, tokens
        digits = data.find(DIGIT_TOKENS, digits + 1)
    raise LabError("no symbol table in the image (no token table with its index)")


def _name_at(data: bytes, at: int, tokens: list[str]) -> tuple[str, int]:
    """(the name at `at` with its type letter first, where the next name starts)."""
    length = data[at]
    at += 1
    if length & 0x80:  # Linux 6.1's two-byte length (scripts/kallsyms.c, big symbols)
        length = (length & 0x7F) | (data[at] << 7)
        at += 1
    return "".join(tokens[b] for b in data[at:at + length]), at + length


def _names(data: bytes, table_start: int,
           tokens: list[str]) -> tuple[int, int, list[str]]:
    """(where the count is, the count, the names) of the table before the tokens: the
    markers (the first 0, each the next by the length of 256 names) come before the
    tokens (Xen: right before; Linux 6.1 as Debian builds it: with a 3-byte sequence
    number per name between them), the names end at the markers, the count is right
    before the names (Xen aligns them to 4, Linux to 8)."""
    for markers_start in range((table_start & ~3) - 4, max(0, table_start - 8_000_000), -4):
        if _u32(data, markers_start) != 0:
            continue
        markers, at = [0], markers_start + 4
        # 256 names apart: each name at least its length byte and one token.
        while at + 4 <= table_start and 512 <= _u32(data, at) - markers[-1] <= 256 * 128:
            markers.append(_u32(data, at))
            at += 4
        if len(markers) < 2:
            continue
        low, high = 256 * (len(markers) - 1) + 1, 256 * len(markers)
        for count_at in range((markers_start - 8) & ~3,
                              max(0, markers_start - markers[-1] - 256 * 128 - 16), -4):
            count = _u32(data, count_at)
            if not low <= count <= high:
                continue
            for first in sorted({count_at + 4, (count_at + 11) & ~7}):
                names, at = [], first
                for _ in range(count):
                    if at >= markers_start:
                        break
                    name, at = _name_at(data, at, tokens)
                    names.append(name)
                if len(names) == count and markers_start - 8 < at <= markers_start:
                    return count_at, count, names
    raise LabError("no symbol table in the image (its names and markers do not agree)")


def xen_symbols(image: bytes) -> SymbolTable:
    """Xen's own symbols from its hypervisor image (xen.elf or xen.gz's contents)."""
    start, tokens = _tokens(image)
    count_at, count, names = _names(image, start, tokens)
    offsets = struct.unpack_from(f"<{count}I", image, count_at - 4 * count)
    return _table([XEN_ORIGIN + o for o in offsets], names)


def linux_symbols(vmlinux: bytes) -> SymbolTable:
    """A Linux 6.1 kernel's kallsyms from its uncompressed image (x86-64, absolute
    per-CPU symbols: an offset of 0 or more is an address, a negative one counts down
    from the base)."""
    start, tokens = _tokens(vmlinux)
    count_at, count, names = _names(vmlinux, start, tokens)
    base = int(struct.unpack_from("<Q", vmlinux, count_at - 8)[0])
    # The base is 8-aligned: the offsets may end 4 bytes before it. The right end gives
    # addresses in the table's order (by address); one off gives a last one out of it.
    for pad in (0, 4):
        end = count_at - 8 - pad
        offsets = struct.unpack_from(f"<{count}i", vmlinux, end - 4 * count)
        addresses = [o if o >= 0 else base - 1 - o for o in offsets]
        if any(a > b for a, b in itertools.pairwise(addresses)):
            continue
        table = _table(addresses, names)
        if table.lookup("_text") == LINUX_TEXT:
            return table
    raise LabError("the kernel's symbol addresses do not put _text at "
                   f"{LINUX_TEXT:#x} (not a Linux 6.1 x86-64 layout?)")


def _table(addresses: list[int], typed_names: list[str]) -> SymbolTable:
    rows = sorted(zip(addresses, typed_names, strict=True))
    return SymbolTable(tuple(a for a, _ in rows), tuple(n[1:] for _, n in rows),
                       "".join(n[:1] for _, n in rows))


def decompress_bzimage(image: bytes) -> bytes:
    """The kernel inside a bzImage: its payload where the boot protocol's header says
    (Documentation/arch/x86/boot.rst: setup_sects at 0x1f1, payload_offset and
    payload_length at 0x248), xz (Debian's amd64 kernel, the dom0's) or lz4's legacy
    frame (its cloud kernel, the lab's guest; by the `lz4` tool)."""
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        raise LabError("not a bzImage (no HdrS header)")
    setup = (image[0x1F1] or 4) + 1
    offset, length = struct.unpack_from("<II", image, 0x248)
    payload = image[setup * 512 + offset:][:length]
    if payload.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    if payload.startswith(LZ4_LEGACY):
        # Without the 4 bytes of the kernel's size that its build appends (the lz4 tool
        # takes them for a broken frame and fails).
        done = subprocess.run([need("lz4"), "-dc"], input=payload[:-4], capture_output=True,
                              timeout=120)
        if done.returncode != 0:
            raise LabError(f"lz4 could not unpack the bzImage's payload: "
                           f"{done.stderr.decode(errors='replace').strip()[-200:]}")
        return done.stdout
    raise LabError(f"the bzImage's payload is neither xz nor lz4 ({payload[:4].hex()})")


@functools.lru_cache(maxsize=4)
def xen_symbols_of(path: Path) -> SymbolTable:
    return xen_symbols(path.read_bytes())


@functools.lru_cache(maxsize=4)
def linux_symbols_of(path: Path) -> SymbolTable:
    return linux_symbols(decompress_bzimage(path.read_bytes()))
