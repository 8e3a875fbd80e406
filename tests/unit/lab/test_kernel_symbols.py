"""Symbol tables found in images laid out as Xen's and Linux 6.1's tools write them."""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from colo_lab import kernel_symbols
from colo_lab.errors import LabError
from colo_lab.kernel_symbols import LINUX_TEXT, XEN_ORIGIN

# Token 0 stands for "__" (the tools' tokens are the commonest substrings); every other
# byte value for its own character, the digits among them, as both tools keep them.
TOKENS = ["__"] + [chr(i) for i in range(1, 256)]
CACHE = Path("/var/cache/colo-lab/xen-current")


def _encode(typed_name: str) -> bytes:
    out, i = bytearray(), 0
    while i < len(typed_name):
        if typed_name.startswith("__", i):
            out.append(0)
            i += 2
        else:
            out.append(ord(typed_name[i]))
            i += 1
    return bytes(out)


def _align(b: bytearray, n: int) -> None:
    b.extend(b"\0" * (-len(b) % n))


def _names_and_rest(symbols: list[tuple[int, str]], align: int, big: bool,
                    seqs: bool) -> tuple[bytes, bytes]:
    """(names, markers + [sequence numbers] + tokens + token index), each part aligned
    to `align` as the tools' ALGN puts them."""
    names, markers = bytearray(), []
    for i, (_, typed) in enumerate(symbols):
        if i % 256 == 0:
            markers.append(len(names))
        code = _encode(typed)
        if len(code) >= 128:
            assert big, "a long name needs Linux's two-byte length"
            names += bytes([0x80 | (len(code) & 0x7F), len(code) >> 7])
        else:
            names.append(len(code))
        names += code
    rest = bytearray()
    rest += struct.pack(f"<{len(markers)}I", *markers)
    _align(rest, align)
    if seqs:
        rest += b"".join(struct.pack("<I", i)[:3] for i in range(len(symbols)))
        _align(rest, align)
    table = b"".join(t.encode("latin-1") + b"\0" for t in TOKENS)
    index, at = [], 0
    for t in TOKENS:
        index.append(at)
        at += len(t) + 1
    rest += table
    _align(rest, align)
    rest += struct.pack("<256H", *index)
    return bytes(names), bytes(rest)


def _xen_image(symbols: list[tuple[int, str]]) -> bytes:
    img = bytearray(b"\x7fELF" + b"\xcc" * 1000)
    img += b"".join(bytes([c]) + b"\0" for c in b"0123456789")  # a decoy: not the tokens
    _align(img, 4)
    img += struct.pack(f"<{len(symbols)}I", *(a - XEN_ORIGIN for a, _ in symbols))
    img += struct.pack("<I", len(symbols))
    names, rest = _names_and_rest(symbols, 4, big=False, seqs=False)
    img += names
    _align(img, 4)
    img += rest
    return bytes(img + b"\x90" * 300)


def _linux_image(symbols: list[tuple[int, str]], base: int = LINUX_TEXT) -> bytes:
    """Debian's 6.1 layout: 32-bit offsets (per-CPU ones absolute, the rest counting down
    from the base), the base, the count, names, markers, sequence numbers, tokens."""
    img = bytearray(b"\x7fELF" + b"\xcc" * 999)
    _align(img, 8)
    offsets = [a if a < 0x100000 else base - 1 - a for a, _ in symbols]
    img += struct.pack(f"<{len(symbols)}i", *offsets)
    _align(img, 8)
    img += struct.pack("<Q", base)
    img += struct.pack("<I", len(symbols))
    _align(img, 8)
    names, rest = _names_and_rest(symbols, 8, big=True, seqs=True)
    img += names
    _align(img, 8)
    img += rest
    return bytes(img + b"\x90" * 300)


def _functions(start: int, count: int = 700) -> list[tuple[int, str]]:
    return [(start + 0x40 * i, f"tfunc__{i}") for i in range(count)]


def test_xen_s_table_names_an_address_inside_a_function() -> None:
    symbols = _functions(XEN_ORIGIN + 0x200000)
    symbols.insert(300, (XEN_ORIGIN + 0x200000 + 0x40 * 300 - 8, "dxen_data"))
    table = kernel_symbols.xen_symbols(_xen_image(symbols))
    assert len(table.addresses) == 701
    assert table.name(XEN_ORIGIN + 0x200000 + 0x40 * 12 + 0x1F) == "func__12+0x1f"
    assert table.name(XEN_ORIGIN + 0x200000 + 0x40 * 300 - 4) == "xen_data+0x4"
    assert table.name(XEN_ORIGIN + 0x200000 + 0x40 * 300 - 4, code_only=True) is None
    assert table.name(XEN_ORIGIN) is None  # before the first symbol
    assert table.name(XEN_ORIGIN + 0x200000 + 0x40 * 699 + 0x20000) is None  # far past


def test_linux_s_table_names_per_cpu_and_text_with_a_long_name() -> None:
    long_name = "t" + "very_long_rust_symbol_" * 8  # over 127 bytes: two-byte length
    symbols = [(0, "Afixed_percpu_data"), (0x1000, "Acpu_debug_store"),
               (LINUX_TEXT, "T_text"), *_functions(LINUX_TEXT + 0x100),
               (LINUX_TEXT + 0x100 + 0x40 * 700, long_name)]
    table = kernel_symbols.linux_symbols(_linux_image(symbols))
    assert table.lookup("_text") == LINUX_TEXT
    assert table.lookup("cpu_debug_store") == 0x1000
    assert table.name(LINUX_TEXT + 0x100 + 0x40 * 5 + 3) == "func__5+0x3"
    assert table.name(LINUX_TEXT + 0x100 + 0x40 * 700 + 1) == long_name[1:] + "+0x1"
    assert table.name(0x7F58D617573A) is None  # user space: in no symbol


def test_an_image_without_a_table_is_a_clear_error() -> None:
    with pytest.raises(LabError, match="no symbol table in the image"):
        kernel_symbols.xen_symbols(b"\x7fELF" + b"\0" * 4096)
    with pytest.raises(LabError, match="not a bzImage"):
        kernel_symbols.decompress_bzimage(b"MZ" + b"\0" * 1000)
    with pytest.raises(LabError, match="neither xz nor lz4"):
        kernel_symbols.decompress_bzimage(_bzimage(b"\x1f\x8b\x08" + b"\0" * 40))


def _bzimage(payload: bytes, setup_sects: int = 3, offset: int = 100) -> bytes:
    """A bzImage as the boot protocol lays it out: the setup sectors (its header in the
    first, "HdrS" at 0x202), then the protected-mode part with the payload at `offset`,
    followed (as Linux's build does) by the kernel's size in 4 bytes."""
    header = bytearray(512 * (setup_sects + 1))
    header[0:2] = b"MZ"
    header[0x1F1] = setup_sects
    header[0x202:0x206] = b"HdrS"
    body = b"\x90" * offset + payload + struct.pack("<I", 12345)
    struct.pack_into("<II", header, 0x248, offset, len(payload) + 4)
    return bytes(header) + body


def _kernel() -> bytes:
    # 701 offsets end 4 bytes short of the 8-aligned base (704 in the test above do not).
    return _linux_image([(LINUX_TEXT, "T_text"), *_functions(LINUX_TEXT + 0x100)])


def test_a_bzimage_s_xz_payload_is_the_kernel() -> None:
    kernel = _kernel()
    bz = _bzimage(lzma.compress(kernel, format=lzma.FORMAT_XZ))
    assert kernel_symbols.decompress_bzimage(bz) == kernel
    table = kernel_symbols.linux_symbols(kernel)
    assert table.name(LINUX_TEXT + 0x100 + 0x40 * 699) == "func__699+0x0"


@pytest.mark.skipif(shutil.which("lz4") is None, reason="no lz4 tool (scripts/bootstrap)")
def test_a_bzimage_s_lz4_payload_is_the_kernel() -> None:
    """Debian's cloud kernel (the lab's guest) is packed with lz4's legacy frame."""
    kernel = _kernel()
    packed = subprocess.run(["lz4", "-l", "-c"], input=kernel, capture_output=True,
                            check=True).stdout
    assert kernel_symbols.decompress_bzimage(_bzimage(packed)) == kernel


@pytest.mark.skipif(not (CACHE / "xen.elf").exists(), reason="no Xen lab built here")
def test_the_lab_s_own_images_name_run_bp_s_addresses() -> None:
    """The cached hypervisor and dom0 kernel (when this machine built the Xen lab): the
    addresses of run BP's stall, named by hand from kallsyms the first time."""
    xen = kernel_symbols.xen_symbols_of(CACHE / "xen.elf")
    assert xen.name(0xFFFF82D04033DEBA) == "flush_area_mask+0xca"
    linux = kernel_symbols.linux_symbols_of(CACHE / "vmlinuz")
    assert linux.name(0xFFFFFFFF8102C91F) == "xen_qlock_wait+0x7f"
    assert linux.name(0xFFFFFFFF81A39075) == "xen_hypercall_pv+0x5"
