"""Build (once per machine) the lab guest: Debian's cloud kernel and a busybox initramfs.

The kernel comes from `linux-image-cloud-amd64`, taken with `apt-get download`
and unpacked, never installed. The initramfs holds static busybox, the virtio
modules in dependency order, `guestfs/init.sh` as /init, the HTTP service
`guestfs/service.sh` and the UDP service `guestfs/udp-echo.c` (compiled static here).
The result is cached under a key of all its inputs.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from colo_lab.cmd import need, out, run
from colo_lab.errors import LabError
from colo_lab.paths import PACKAGE_DIR, cache_dir, prune_cache, touch_build

GUESTFS = PACKAGE_DIR / "guestfs"
# Modules the guest loads: the network and disk devices the lab gives it. The IDE ones
# are for the nested Xen lab, whose libxl emulates COLO's replicated disks as IDE or SCSI
# only (libxl_dm.c); init.sh loads ata_piix only when the kernel's command line asks.
WANTED_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "ata_piix", "sd_mod")
PATTERN_SIZE = 1 << 20
BUILDER_VERSION = "2"  # 2: the UDP echo service compiled in


@dataclass(frozen=True)
class Guest:
    kernel: Path
    initrd: Path
    kernel_version: str


def _log(msg: str) -> None:
    print(f"colo-lab: {msg}", file=sys.stderr, flush=True)


def _kernel_package() -> str:
    """The versioned kernel package that linux-image-cloud-amd64 depends on now."""
    text = out(["apt-cache", "depends", "linux-image-cloud-amd64"])
    m = re.search(r"Depends: (linux-image-[0-9][^\s]*-cloud-amd64)", text)
    if not m:
        raise LabError(
            "cannot resolve linux-image-cloud-amd64",
            "run scripts/bootstrap (it runs apt-get update)",
        )
    return m.group(1)


def _package_version(pkg: str) -> str:
    text = out(["apt-cache", "policy", pkg])
    m = re.search(r"Candidate: (\S+)", text)
    if not m or m.group(1) == "(none)":
        raise LabError(f"no installable version of {pkg}", "run scripts/bootstrap")
    return m.group(1)


def pattern() -> bytes:
    """The fixed pseudo-random pattern behind GET /blob/N (also used by tests to check it)."""
    chunks = []
    block = b"colo"
    for _ in range(PATTERN_SIZE // 32):
        block = hashlib.sha256(block).digest()
        chunks.append(block)
    return b"".join(chunks)


def _key(kernel_pkg: str, kernel_ver: str, busybox_path: Path) -> str:
    h = hashlib.sha256()
    for part in (BUILDER_VERSION, kernel_pkg, kernel_ver, ",".join(WANTED_MODULES)):
        h.update(part.encode() + b"\0")
    h.update(busybox_path.read_bytes())
    for f in sorted(GUESTFS.iterdir()):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def ensure_guest() -> Guest:
    """The cached guest, built first if any input changed."""
    need("apt-get")
    need("dpkg-deb")
    need("depmod")
    need("gcc")
    busybox = Path(need("busybox")).resolve()
    if not _is_static(busybox):
        busybox = Path("/bin/busybox")
        if not _is_static(busybox):
            raise LabError(
                "busybox is not the static build", "apt-get install busybox-static"
            )
    pkg = _kernel_package()
    ver = _package_version(pkg)
    root = cache_dir()
    dest = root / f"guest-{_key(pkg, ver, busybox)}"
    root.mkdir(parents=True, exist_ok=True)
    if (dest / "DONE").exists():
        touch_build(dest)  # written last: the build is whole; no lock to wait for
    else:
        _build_locked(pkg, busybox, dest)
    kver = (dest / "KERNEL_VERSION").read_text().strip()
    return Guest(kernel=dest / "vmlinuz", initrd=dest / "initrd.gz", kernel_version=kver)


def _build_locked(pkg: str, busybox: Path, dest: Path) -> None:
    with open(cache_dir() / "guest-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / "DONE").exists():
            _build(pkg, busybox, dest)
            prune_cache("guest-", keep=dest)


def cached_guest() -> Guest | None:
    """Newest finished guest in the cache, without asking apt."""
    done = sorted(cache_dir().glob("guest-*/DONE"), key=lambda p: p.stat().st_mtime)
    if not done:
        return None
    d = done[-1].parent
    return Guest(d / "vmlinuz", d / "initrd.gz", (d / "KERNEL_VERSION").read_text().strip())


def _is_static(path: Path) -> bool:
    # A dynamically linked ELF names its interpreter (PT_INTERP: "/lib64/ld-linux...").
    try:
        head = path.read_bytes()[:8192]
    except OSError:
        return False
    return head.startswith(b"\x7fELF") and b"ld-linux" not in head


def _build(pkg: str, busybox: Path, dest: Path) -> None:
    _log(f"building the lab guest ({pkg} + busybox initramfs) into {dest}")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        work = Path(tmp)
        run(["apt-get", "download", "-q", pkg], cwd=tmp, timeout=600)
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise LabError(f"apt-get download {pkg} gave {len(debs)} files")
        unpacked = work / "x"
        run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], timeout=300)
        kvers = [p.name for p in (unpacked / "lib" / "modules").iterdir()]
        if len(kvers) != 1:
            raise LabError(f"{pkg} holds {len(kvers)} module trees, expected one")
        kver = kvers[0]
        run(["depmod", "-b", str(unpacked), kver], timeout=120)
        moddir = unpacked / "lib" / "modules" / kver
        order = _module_order(moddir / "modules.dep")
        udp_echo = work / "colo-udp-echo"
        # Static, so that the initramfs needs no libc; libc6-dev holds glibc's libc.a.
        run(["gcc", "-static", "-Os", "-Wall", "-Werror", "-o", str(udp_echo),
             str(GUESTFS / "udp-echo.c")], timeout=120)
        initrd = _initramfs(busybox, moddir, order, udp_echo.read_bytes())
        stage = work / "out"
        stage.mkdir()
        shutil.copy2(unpacked / "boot" / f"vmlinuz-{kver}", stage / "vmlinuz")
        (stage / "initrd.gz").write_bytes(initrd)
        (stage / "KERNEL_VERSION").write_text(kver + "\n")
        (stage / "DONE").write_text(f"{pkg}\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(stage, dest)
    _log(f"guest ready: kernel {kver}, initramfs {len(initrd) // 1024} KiB")


def _module_order(dep_file: Path) -> list[str]:
    """WANTED_MODULES and their dependencies, each after everything it needs."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in dep_file.read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        by_name[Path(mod).name.split(".ko")[0].replace("-", "_")] = mod
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for d in deps.get(mod, []):
            visit(d)
        order.append(mod)

    for name in WANTED_MODULES:
        if name not in by_name:
            raise LabError(f"kernel module {name} not found in the cloud kernel package")
        visit(by_name[name])
    return order


def _initramfs(busybox: Path, moddir: Path, order: list[str], udp_echo: bytes) -> bytes:
    """A gzip'd newc cpio, written in-process so no root-owned tree is needed."""
    files: list[tuple[str, int, bytes]] = [
        ("init", 0o755, (GUESTFS / "init.sh").read_bytes()),
        ("bin/busybox", 0o755, busybox.read_bytes()),
        ("bin/colo-service", 0o755, (GUESTFS / "service.sh").read_bytes()),
        ("bin/colo-udp-echo", 0o755, udp_echo),
        ("srv/pattern", 0o644, pattern()),
        ("lib/modules/modules.order", 0o644, "".join(Path(m).name + "\n" for m in order).encode()),
    ]
    for mod in order:
        files.append((f"lib/modules/{Path(mod).name}", 0o644, (moddir / mod).read_bytes()))
    dirs = {"proc", "sys", "dev", "tmp", "data", "srv"}
    for p, _, _ in files:
        dirs.update(str(a) for a in Path(p).parents if str(a) != ".")
    buf = io.BytesIO()
    ino = 1
    for d in sorted(dirs):
        _cpio_entry(buf, d, stat.S_IFDIR | 0o755, b"", ino)
        ino += 1
    # /bin/sh must exist before `busybox --install` runs the init script's interpreter.
    _cpio_entry(buf, "bin/sh", stat.S_IFLNK | 0o777, b"busybox", ino)
    ino += 1
    for path, mode, data in files:
        _cpio_entry(buf, path, stat.S_IFREG | mode, data, ino)
        ino += 1
    _cpio_entry(buf, "TRAILER!!!", 0, b"", 0)
    return gzip.compress(buf.getvalue(), compresslevel=6, mtime=0)


def _cpio_entry(buf: io.BytesIO, name: str, mode: int, data: bytes, ino: int) -> None:
    nameb = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nameb), 0)
    buf.write(b"070701" + b"".join(f"{v:08X}".encode() for v in fields))
    buf.write(nameb)
    buf.write(b"\0" * (-(110 + len(nameb)) % 4))
    buf.write(data)
    buf.write(b"\0" * (-len(data) % 4))


def main() -> None:
    g = ensure_guest()
    print(g.kernel, g.initrd)


if __name__ == "__main__":
    main()
