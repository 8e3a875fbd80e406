"""Build (once per machine) a nested Xen lab whose libxl and device model can do COLO.

Debian 12's Xen 4.17 packages cannot run `xl remus -c` (../shared/notes/XEN-NESTED.md):
its source package does not build-depend on libnl3, so libxl is built with
`libxl_no_colo.c`, and its device model (`/usr/libexec/xen-qemu-system-i386`) answers
`Unknown driver 'replication'`. This module builds what is missing and a dom0 to run it:

1. Debian's xen source (the version in bookworm's main suite, which is what debootstrap
   installs into the dom0) configured with Debian's own `./configure` paths, so the new
   library drops into Debian's packaging; only `tools/include`, `tools/libs` and `tools/xl`
   are built, with libnl-3 present so that configure sets CONFIG_LIBNL and libxl compiles
   `libxl_colo_*.c`. Only `libxenlight.so` (COLO's control lives in libxl) and
   `libxenguest.so` (libxc's save and restore, patched) differ from Debian's.
   `patches/xen-4.17-*.patch` fix libxl's and libxc's COLO where they break (each explains
   itself).
2. A Xen device model from the same Debian QEMU 7.2 source the lab already builds for TCG,
   with `--enable-xen --enable-replication`, i386-softmmu only, no TCG or KVM (Xen runs
   the guest; the device model only emulates devices). The lab's TCG patch is not applied:
   every hunk of it is about TCG or QEMU's own RAM migration, and under Xen the hypervisor
   and libxc move guest memory, not QEMU.
3. A dom0 root filesystem: debootstrap of bookworm with Debian's Xen tools, hypervisor and
   `linux-image-amd64` (the cloud kernel has CONFIG_XEN_DOM0 off), plus the builds above
   and `xenfs/dom0-init.sh` as init.
4. The hypervisor, dom0 kernel and initrd taken out of that root filesystem.

Everything is cached under `<cache>/xen-<key>`, the key made of every input: both source
versions, the configure flags, the patches, the dom0 package list, the init script and the
mirror. The two compiled parts are cached apart (`xenlibxl-<key>`, `xendm-<key>`, each
keyed by its own inputs): a patch to libxl recompiles libxl (about 2 min), not the
device model (about 8).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from colo_lab.build_progress import run_logged
from colo_lab.cmd import need, out, run
from colo_lab.errors import LabError
from colo_lab.paths import PACKAGE_DIR, cache_dir, point_current, prune_cache, touch_build
from colo_lab.qemu_build import debian_source_version

BUILDER_VERSION = "1"  # of the compiled parts' recipe: a change rebuilds everything
DOM0_VERSION = "2"  # of the dom0's recipe (this file's debootstrap and install steps)
SUITE = "bookworm"
MIRROR = os.environ.get("COLO_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DOM0_INIT = PACKAGE_DIR / "xenfs" / "dom0-init.sh"
LIBDIR = "usr/lib/x86_64-linux-gnu"
LIBXL = "libxenlight.so.4.17.0"
# libxc's save/restore half: its COLO secondary sends the SVM's dirty pages back.
LIBXENGUEST = "libxenguest.so.4.17.0"
REBUILT_LIBS = (LIBXL, LIBXENGUEST)
# libxl's COLO fixes, applied in this order on Debian's xen source (patch -p1).
XEN_PATCHES = tuple(PACKAGE_DIR / "patches" / name for name in (
    "xen-4.17-colo-restore-qmp-init.patch",
    "xen-4.17-colo-restore-memory-map.patch",
    "xen-4.17-stream-short-read.patch",
    "xen-4.17-colo-svm-dirty-bitmap.patch",
))
# The device model's COLO fixes, applied on Debian's qemu source (patch -p1).
DM_PATCHES = tuple(PACKAGE_DIR / "patches" / name for name in (
    "qemu-7.2-xen-load-devices-state-yank.patch",
    "qemu-7.2-xen-direct-boot-fw-cfg-dma.patch",
    "qemu-7.2-xen-pci-config-latch.patch",
    "qemu-7.2-xen-colo-checkpoint-drain.patch",
    "qemu-7.2-xen-colo-ide-load-fresh.patch",
))
# Debian's device model path, the one libxl was configured with (--with-system-qemu).
DM_PATH = "usr/libexec/xen-qemu-system-i386"
DM_NAME = "xen-qemu-system-i386"
DEBIAN_KEPT = "usr/lib/xen-4.17/colo-debian"  # Debian's libxl and device model, unused

# Debian's debian/rules configure line for the tools (xen 4.17.5+72-g01140da4e8-1), so that
# the paths compiled into libxl (_paths.h) are the ones Debian's xl and scripts use; plus
# --disable-* for what this build does not compile.
TOOLS_CONFIGURE = (
    "--disable-stubdom", "--disable-docs", "--prefix=/usr", "--includedir=/usr/include",
    f"--libdir=/{LIBDIR}", "--with-libexec-libdir-suffix=/x86_64-linux-gnu",
    "--host=x86_64-linux-gnu", "--mandir=/usr/share/man", "--infodir=/usr/share/info",
    "--sysconfdir=/etc", "--localstatedir=/var", "--with-libexec-leaf-dir=xen-4.17",
    "--disable-blktap1", "--disable-blktap2", "--disable-qemu-traditional",
    "--disable-rombios", f"--with-system-qemu=/{DM_PATH}", "--enable-ovmf",
    "--with-system-ovmf=/usr/share/ovmf/OVMF.fd",
    "--with-system-seabios=/usr/share/seabios/bios-256k.bin",
    "--disable-ocamltools", "--disable-xsmpolicy", "--disable-pvshim",
)
TOOLS_DIRS = ("tools/include", "tools/libs", "tools/xl")
# Xen's build fetches sources when it misses something: fail instead (as Debian's rules do).
TOOLS_MAKE_ARGS = ("XEN_TARGET_ARCH=x86_64", "WGET=/bin/false", "GIT=/bin/false")

# Debian's qemu-system-xen flags (debian/rules, b/xen) minus its UI and passthrough
# features, plus replication: the block driver COLO's disk replication needs.
DM_CONFIGURE = (
    "--prefix=/usr", "--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu",
    "--target-list=i386-softmmu", "--without-default-features", "--enable-xen",
    "--disable-tcg", "--disable-kvm", "--enable-replication", "--disable-docs",
    "--disable-tools", "--disable-werror", "--disable-install-blobs", "--audio-drv-list=",
)

# XEN-NESTED.md's dom0 list, plus the kernel and hypervisor, the libnl-3 libraries
# that the rebuilt libxl links, and python3 (bookworm's 3.11, the project's minimum) for
# the project's own code in the dom0: the libxl bridge imports the standard library only,
# the proxy's service core (colo_lab.xen_proxy) also prometheus_client (its metrics
# module), and colo-orch its etcd client (etcd3gw, Debian's python3-etcd3gw, with
# requests). colo-proxy's datapath needs what scripts/bootstrap installs on a host: bcc
# (python3-bpfcc, which compiles the tc programs with the running kernel's headers:
# linux-headers-amd64 is the same suite's as linux-image-amd64, so they match), pyroute2
# and iptables (its NFQUEUE rule). The project's source is not in the image but on a disk made per `up`
# (colo_lab.xen_lab.make_source_disk).
DOM0_PACKAGES = (
    "xen-utils-4.17", "xen-hypervisor-4.17-amd64", "xenstore-utils", "qemu-system-xen",
    "linux-image-amd64", "libnl-3-200", "libnl-route-3-200", "busybox", "iproute2",
    "procps", "kmod", "udev", "bridge-utils", "python3",
    "python3-prometheus-client", "python3-etcd3gw",
    "python3-bpfcc", "linux-headers-amd64", "python3-pyroute2", "iptables",
)
DOM0_IMAGE_SIZE = "3G"

# What this build needs installed (autoconf, acpica-tools, the -dev packages Xen's
# configure looks for, libnl-3 among them, debootstrap) is in scripts/bootstrap's list.


@dataclass(frozen=True)
class XenLab:
    """A finished build: what a nested Xen host boots."""

    dir: Path
    hypervisor: Path  # xen.elf: a multiboot ELF that QEMU's -kernel loads
    kernel: Path
    initrd: Path
    rootfs: Path  # raw ext4 image, the dom0's /dev/vda
    libxl: Path  # the rebuilt libxenlight (also inside rootfs)
    device_model: Path  # the rebuilt xen-qemu-system-i386 (also inside rootfs)


def _log(msg: str) -> None:
    print(f"colo-lab: {msg}", file=sys.stderr, flush=True)


def xen_source_version() -> str:
    """The xen source version in the suite's main archive (what debootstrap installs).

    The security archive's newer version is not what a plain debootstrap of the suite
    gets, and its sources may be missing from a mirror.
    """
    version = source_in_suite(out(["apt-cache", "madison", "xen"]), SUITE)
    if version is None:
        raise LabError(f"no xen source package in {SUITE}/main",
                       "run scripts/bootstrap (it adds the deb-src lines and runs apt-get update)")
    return version


def source_in_suite(madison: str, suite: str) -> str | None:
    """The source version `apt-cache madison` lists for `suite`/main, e.g. from
    "xen | 4.17.5+72-g01140da4e8-1 | http://deb.debian.org/debian bookworm/main Sources"."""
    for line in madison.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) == 3 and fields[2].endswith(f" {suite}/main Sources"):
            return fields[1]
    return None


def _key(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update((part.encode() if isinstance(part, str) else part) + b"\0")
    return h.hexdigest()[:16]


def libxl_key(xen_version: str) -> str:
    """Key of the rebuilt libxl: its source, configure line, directories and patches.
    Compiled parts are kept apart from the dom0 so that a change to the dom0 (its
    packages, its init) compiles nothing again."""
    return _key(BUILDER_VERSION, xen_version, *TOOLS_CONFIGURE, *TOOLS_DIRS,
                *(p.read_bytes() for p in XEN_PATCHES))


def dm_key(qemu_version: str) -> str:
    """Key of the device model: its source, patches and configure line (no Xen input: a
    libxl patch does not recompile it)."""
    return _key(BUILDER_VERSION, qemu_version, *DM_CONFIGURE,
                *(p.read_bytes() for p in DM_PATCHES))


def build_key(xen_version: str, qemu_version: str) -> str:
    """Key of the whole lab build: the compiled parts' keys and the dom0's inputs."""
    h = hashlib.sha256()
    for part in (libxl_key(xen_version), dm_key(qemu_version), DOM0_VERSION, MIRROR, SUITE,
                 *DOM0_PACKAGES, DOM0_IMAGE_SIZE):
        h.update(part.encode() + b"\0")
    h.update(DOM0_INIT.read_bytes())
    return h.hexdigest()[:16]


def _lab_in(out_dir: Path) -> XenLab:
    return XenLab(dir=out_dir, hypervisor=out_dir / "xen.elf", kernel=out_dir / "vmlinuz",
                  initrd=out_dir / "initrd.img", rootfs=out_dir / "dom0.img",
                  libxl=out_dir / LIBXL, device_model=out_dir / DM_NAME)


def cached_xen() -> XenLab | None:
    """The newest finished build, without asking apt (for a fast `up --xen`)."""
    pointer = cache_dir() / "xen-current"
    if (pointer / "DONE").exists():
        return _lab_in(pointer.resolve())
    return None


def ensure_xen(*, rebuild: bool = False) -> XenLab:
    """The Xen lab build for the current inputs, building what is missing (about 15 min
    for everything; the dom0 alone about 5)."""
    xen_version = xen_source_version()
    qemu_version = debian_source_version()
    root = cache_dir()
    out_dir = root / f"xen-{build_key(xen_version, qemu_version)}"
    libxl = root / f"xenlibxl-{libxl_key(xen_version)}"
    dm = root / f"xendm-{dm_key(qemu_version)}"
    root.mkdir(parents=True, exist_ok=True)
    if (out_dir / "DONE").exists() and not rebuild:
        for d in (out_dir, libxl, dm):
            touch_build(d)
        return _lab_in(out_dir)
    with open(root / "xen-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (libxl / "DONE").exists() or rebuild:
            _build_libxl(xen_version, libxl)
        if not (dm / "DONE").exists() or rebuild:
            _build_dm(qemu_version, dm)
        if not (out_dir / "DONE").exists() or rebuild:
            _build_dom0(xen_version, libxl, dm, out_dir)
        point_current("xen-current", out_dir)
        prune_cache("xen-", keep=out_dir)
        prune_cache("xenlibxl-", keep=libxl)
        prune_cache("xendm-", keep=dm)
    touch_build(libxl)
    touch_build(dm)
    return _lab_in(out_dir)


class _Build:
    """One build: its work directory, log and the time each step took."""

    def __init__(self, out_dir: Path, steps: int) -> None:
        self.out = out_dir
        # Sources and the root filesystem tree; removed when the build is done.
        self.work = out_dir.with_name(out_dir.name + ".work")
        # The results, renamed to out_dir whole at the end (a reader never sees half).
        self.staged = out_dir.with_name(out_dir.name + ".new")
        self.log = self.work / "build.log"
        self.times: dict[str, float] = {}
        self._steps = steps
        self._step = 0
        for d in (self.work, self.staged, out_dir):
            shutil.rmtree(d, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.staged.mkdir()

    def step(self, name: str, what: str) -> None:
        self._step += 1
        self._current = name
        self._t0 = time.monotonic()
        _log(f"step {self._step}/{self._steps}: {what}")

    def finish(self, inputs: str) -> None:
        """Record inputs, step times and sizes (BUILD), then publish the results."""
        files = sorted(self.staged.iterdir())
        (self.staged / "BUILD").write_text(
            inputs
            + "".join(f"seconds {k} {v:.0f}\n" for k, v in self.times.items())
            + "".join(f"bytes {p.name} {p.stat().st_size} (on disk {p.stat().st_blocks * 512})\n"
                      for p in files))
        (self.staged / "DONE").write_text(f"{time.time():.0f}\n")
        os.replace(self.staged, self.out)
        shutil.rmtree(self.work, ignore_errors=True)
        _log(f"ready in {sum(self.times.values()):.0f} s: {self.out}")

    def done(self) -> None:
        self.times[self._current] = time.monotonic() - self._t0
        _log(f"  {self._current} took {self.times[self._current]:.0f} s")

    def sh(self, argv: list[str], cwd: Path, timeout: float, *, nice: bool = True) -> None:
        """Run a step's command into the log, showing its progress (ninja's [n/m], or the
        latest line every 20 s: a long compile shows that it moves); on failure the log's
        tail is in the error."""
        argv = ["nice", "-n", "19", *argv] if nice else argv
        run_logged(argv, cwd, self.log, timeout, what="Xen build step")


def _build_libxl(xen_version: str, out_dir: Path) -> None:
    for tool in ("apt-get", "dpkg-source", "autoconf", "make", "patch"):
        need(tool)
    b = _Build(out_dir, steps=1)
    _log(f"building libxl with COLO (xen {xen_version}) into {out_dir}; about 2 min, once")
    _log(f"build log: {b.log}")
    for lib, built in _build_tools(b, xen_version).items():
        shutil.copy2(built, b.staged / lib)
    b.finish(f"xen {xen_version}\n" + "".join(f"patch {p.name}\n" for p in XEN_PATCHES))


def _build_dm(qemu_version: str, out_dir: Path) -> None:
    for tool in ("apt-get", "dpkg-source", "meson", "ninja", "patch"):
        need(tool)
    b = _Build(out_dir, steps=1)
    _log(f"building a Xen device model (qemu {qemu_version}) into {out_dir}; about 8 min "
         "on 2 cores, once")
    _log(f"build log: {b.log}")
    shutil.copy2(_build_device_model(b, qemu_version), b.staged / DM_NAME)
    b.finish(f"qemu {qemu_version}\n" + "".join(f"patch {p.name}\n" for p in DM_PATCHES))


def _build_dom0(xen_version: str, libxl: Path, dm: Path, out_dir: Path) -> None:
    for tool in ("debootstrap", "mkfs.ext4", "chroot"):
        need(tool)
    b = _Build(out_dir, steps=3)
    _log(f"building the dom0 ({SUITE}, Xen {xen_version}) into {out_dir}; about 5 min, once")
    _log(f"build log: {b.log}")
    rootfs = _debootstrap(b, xen_version)
    _install_into(b, rootfs, libxl, dm / DM_NAME)
    _image(b, rootfs)
    for lib in REBUILT_LIBS:
        shutil.copy2(libxl / lib, b.staged / lib)
    shutil.copy2(dm / DM_NAME, b.staged / DM_NAME)
    b.finish(f"binaries {libxl.name} {dm.name}\nsuite {SUITE} {MIRROR}\n")


def _source(b: _Build, package: str, version: str) -> Path:
    run(["apt-get", "source", "-q", f"{package}={version}"], cwd=str(b.work), timeout=600)
    upstream = version.split(":")[-1].rsplit("-", 1)[0]
    src = b.work / f"{package}-{upstream}"
    if not src.is_dir():
        raise LabError(f"unexpected layout after apt-get source {package} in {b.work}")
    return src


def _build_tools(b: _Build, version: str) -> dict[str, Path]:
    """Build Xen's tools with libnl-3 and the COLO patches; returns where each of
    REBUILT_LIBS was built."""
    b.step("xen-tools", f"xen {version} tools with libnl-3 (libxl with COLO)")
    src = _source(b, "xen", version)
    for patch in XEN_PATCHES:
        run(["patch", "-p1", "-i", str(patch)], cwd=str(src))
    # Debian's orig tarball has no generated configure scripts (debhelper's dh_autoreconf
    # makes them), nor config.guess/config.sub (its rules copy them in).
    b.sh(["./autogen.sh"], src, 300, nice=False)
    for aux in ("config.guess", "config.sub"):
        shutil.copy(Path("/usr/share/autoconf/build-aux") / aux, src / aux)
    b.sh(["./configure", *TOOLS_CONFIGURE], src, 600)
    tools_mk = (src / "config" / "Tools.mk").read_text()
    if not re.search(r"^CONFIG_LIBNL\s*:=\s*y", tools_mk, re.M):
        raise LabError("Xen's configure did not find libnl-3: libxl would have no COLO",
                       "run scripts/bootstrap (libnl-3-dev, libnl-route-3-dev)")
    jobs = f"-j{os.cpu_count() or 1}"
    for d in TOOLS_DIRS:
        b.sh(["make", jobs, "-C", d, *TOOLS_MAKE_ARGS], src, 3600)
    libs = src / "tools" / "libs"
    built = {LIBXL: libs / "light" / LIBXL, LIBXENGUEST: libs / "guest" / LIBXENGUEST}
    check_libxl_has_colo(built[LIBXL])
    b.done()
    return built


def check_libxl_has_colo(lib: Path) -> None:
    """libxl built with COLO has the COLO save/restore device tables; the stub build
    (libxl_no_colo.c) has the message 'COLO is not supported' instead."""
    data = lib.read_bytes()
    if b"COLO is not supported" in data or b"colo_save_device_qdisk" not in data:
        raise LabError(f"{lib} was built without COLO (libxl_no_colo.c)")


def _build_device_model(b: _Build, version: str) -> Path:
    b.step("device-model", f"Xen device model from qemu {version} (--enable-xen "
           "--enable-replication)")
    run(["apt-get", "source", "-q", "qemu"], cwd=str(b.work), timeout=600)
    srcs = [p for p in b.work.iterdir() if p.is_dir() and p.name.startswith("qemu-")]
    if len(srcs) != 1:
        raise LabError(f"unexpected layout after apt-get source qemu in {b.work}")
    for patch in DM_PATCHES:
        run(["patch", "-p1", "-i", str(patch)], cwd=str(srcs[0]))
    build = srcs[0] / "build-xen"
    build.mkdir()
    b.sh(["../configure", *DM_CONFIGURE], build, 900)
    b.sh(["ninja", "qemu-system-i386"], build, 3600)
    binary = build / "qemu-system-i386"
    check_dm_has_replication(binary)
    b.done()
    return binary


def check_dm_has_replication(binary: Path) -> None:
    """`-drive format=help` lists the block drivers without starting an accelerator (so
    it runs on a host without Xen)."""
    text = out([str(binary), "-drive", "format=help"])
    if not re.search(r"\breplication\b", text):
        raise LabError(f"{binary} has no 'replication' block driver")


def _debootstrap(b: _Build, xen_version: str) -> Path:
    b.step("dom0-rootfs", f"debootstrap {SUITE} with Xen, linux-image-amd64 ({MIRROR})")
    rootfs = b.work / "rootfs"
    b.sh(["debootstrap", "--variant=minbase", f"--include={','.join(DOM0_PACKAGES)}",
          SUITE, str(rootfs), MIRROR], b.work, 1800)
    got = out(["chroot", str(rootfs), "dpkg-query", "-W", "-f=${Version}", "xen-utils-4.17"])
    if got != xen_version:
        raise LabError(f"dom0 has xen-utils-4.17 {got}, the tools were built from {xen_version}",
                       "the libxl drop-in must come from the same source as the dom0's Xen")
    b.done()
    return rootfs


def _install_into(b: _Build, rootfs: Path, libs: Path, dm: Path) -> None:
    b.step("dom0-install", "rebuilt libxl, libxenguest and device model into the dom0, "
           "its init")
    # Debian's files are kept, to compare against on a running dom0, out of the library
    # directory: there ldconfig would take a renamed copy (same soname) for a version.
    keep = rootfs / DEBIAN_KEPT
    keep.mkdir(parents=True, exist_ok=True)
    for lib in REBUILT_LIBS:
        target = rootfs / LIBDIR / lib
        if not target.exists():
            raise LabError(f"Debian's dom0 has no /{LIBDIR}/{lib} to replace")
        os.replace(target, keep / lib)
        shutil.copy2(libs / lib, target)
    dm_target = rootfs / DM_PATH
    if dm_target.exists():
        os.replace(dm_target, keep / DM_NAME)
    shutil.copy2(dm, dm_target)
    missing = out(["chroot", str(rootfs), "ldd", f"/{DM_PATH}",
                   *(f"/{LIBDIR}/{lib}" for lib in REBUILT_LIBS)])
    if "not found" in missing:
        raise LabError(f"a rebuilt binary misses a library in the dom0:\n{missing}")
    init = rootfs / "sbin" / "colo-dom0-init"
    shutil.copy(DOM0_INIT, init)
    init.chmod(0o755)
    (rootfs / "etc" / "hostname").write_text("colo-dom0\n")
    (rootfs / "etc" / "fstab").write_text("/dev/vda / ext4 rw,relatime 0 1\n")
    b.done()


def _image(b: _Build, rootfs: Path) -> None:
    b.step("images", f"hypervisor, dom0 kernel and initrd; {DOM0_IMAGE_SIZE} ext4 root image")
    boot = rootfs / "boot"
    xen_gz = sorted(boot.glob("xen-4.17-amd64.gz"))
    kernels = sorted(boot.glob("vmlinuz-*"))
    initrds = sorted(boot.glob("initrd.img-*"))
    if len(xen_gz) != 1 or len(kernels) != 1 or len(initrds) != 1:
        raise LabError(f"expected one hypervisor, kernel and initrd in {boot}, found "
                       f"{[p.name for p in (*xen_gz, *kernels, *initrds)]}")
    # Debian ships the hypervisor gzipped; QEMU's -kernel loads the plain multiboot ELF.
    with gzip.open(xen_gz[0]) as src, open(b.staged / "xen.elf", "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy2(kernels[0], b.staged / "vmlinuz")
    shutil.copy2(initrds[0], b.staged / "initrd.img")
    b.sh(["mkfs.ext4", "-q", "-F", "-L", "colo-dom0", "-d", str(rootfs),
          str(b.staged / "dom0.img"), DOM0_IMAGE_SIZE], b.work, 900)
    b.done()


def main() -> None:
    print(ensure_xen(rebuild="--rebuild" in sys.argv).dir)


if __name__ == "__main__":
    main()
