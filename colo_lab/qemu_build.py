"""Build (once per machine) a QEMU that can run COLO under TCG.

Debian 12's qemu-system-x86 7.2 enters COLO but fails at the first checkpoint
under TCG, and bookworm-backports' 10.0 never enters COLO (see
`patches/qemu-7.2-colo-tcg.patch` for the two 7.2 defects). The same binary runs the
nested Xen hosts (`colo_lab.xen_lab`), whose HVM guests need TCG's emulation of AMD's
SVM: `patches/qemu-7.2-tcg-svm-vmrun.patch` fixes 7.2's VMRUN where it delivered an
injected interrupt twice and where it could lose a host IPI;
`patches/qemu-7.2-tcg-ignne-first-cpu.patch` stops the second vCPU's FPU loads from
rewriting the first vCPU's SVM flags (the nested guests' triple faults). So the lab
builds Debian's own source package with Debian's patches plus ours, for x86_64-softmmu
only, with block replication and GnuTLS, and caches the binary outside the repository
under a key made of every input: the Debian source version, our patches and the
configure flags. A build takes about 10 minutes on 2 cores.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

from colo_lab.build_progress import run_logged
from colo_lab.cmd import need, run
from colo_lab.errors import LabError
from colo_lab.paths import PACKAGE_DIR, cache_dir, point_current, prune_cache, touch_build

PATCH = PACKAGE_DIR / "patches" / "qemu-7.2-colo-tcg.patch"
SVM_PATCH = PACKAGE_DIR / "patches" / "qemu-7.2-tcg-svm-vmrun.patch"
IGNNE_PATCH = PACKAGE_DIR / "patches" / "qemu-7.2-tcg-ignne-first-cpu.patch"
# Applied in this order on Debian's qemu source (patch -p1).
PATCHES = (PATCH, SVM_PATCH, IGNNE_PATCH)

CONFIGURE_FLAGS = (
    "--target-list=x86_64-softmmu",
    "--without-default-features",
    "--enable-replication",
    # TLS credentials (tls-creds-x509, tls-creds-psk) for COLO's migration and the NBD
    # disk export: without GnuTLS QEMU refuses to create them.
    "--enable-gnutls",
    "--enable-tcg",
    "--enable-kvm",
    "--enable-fdt=system",
    "--disable-docs",
    "--disable-werror",
    "--disable-install-blobs",
)

# Firmware comes from Debian's packages (qemu-system-data, seabios, ipxe-qemu):
# the build is configured without blobs of its own.
FIRMWARE_ARGS = ("-L", "/usr/share/qemu", "-L", "/usr/share/seabios", "-L", "/usr/lib/ipxe/qemu")


def _log(msg: str) -> None:
    print(f"colo-lab: {msg}", file=sys.stderr, flush=True)


def debian_source_version() -> str:
    """The qemu source version `apt-get source qemu` would fetch now."""
    need("apt-get")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            ["apt-get", "source", "--print-uris", "qemu"],
            capture_output=True,
            cwd=tmp,
            timeout=120,
            check=False,
        )
    m = re.search(rb"qemu_(\S+?)\.dsc", proc.stdout)
    if proc.returncode != 0 or m is None:
        raise LabError(
            "cannot find Debian's qemu source package",
            "run scripts/bootstrap (it adds the deb-src lines and runs apt-get update)",
        )
    # --print-uris gives the file name URL-encoded ('+' as %2b).
    return urllib.parse.unquote(m.group(1).decode())


def build_key(source_version: str) -> str:
    h = hashlib.sha256()
    h.update(source_version.encode())
    for patch in PATCHES:
        h.update(patch.read_bytes())
    h.update("\0".join(CONFIGURE_FLAGS).encode())
    return h.hexdigest()[:16]


def cached_binary() -> Path | None:
    """The newest finished build in the cache, without asking apt (for fast lab start)."""
    pointer = cache_dir() / "qemu-current"
    if pointer.is_symlink() or pointer.exists():
        binary = pointer / "qemu-system-x86_64"
        if binary.exists():
            return binary
    return None


def ensure_qemu(*, rebuild: bool = False) -> Path:
    """Path of the patched qemu-system-x86_64, building it if its inputs changed."""
    version = debian_source_version()
    key = build_key(version)
    root = cache_dir()
    out = root / f"qemu-{key}"
    binary = out / "qemu-system-x86_64"
    root.mkdir(parents=True, exist_ok=True)
    if binary.exists() and not rebuild:
        # Built already (the binary appears by rename, whole): no lock, so a lab never
        # waits for another checkout's build of other inputs.
        touch_build(out)
        return binary
    with open(root / "qemu-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists() and not rebuild:
            touch_build(out)
            point_current("qemu-current", out)
            return binary
        _build(version, out)
        point_current("qemu-current", out)
        prune_cache("qemu-", keep=out)
    return binary


def _build(version: str, out: Path) -> None:
    for tool in ("apt-get", "dpkg-source", "patch", "meson", "ninja"):
        need(tool)
    work = out.with_name(out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "build.log"
    _log(f"building QEMU {version} with the lab's patches into {out} (about 10 min, once)")
    _log(f"build log: {log}")
    _log("step 1/4: apt-get source qemu (Debian's patches are applied by dpkg-source)")
    # No "=version": Debian versions carry an epoch that the .dsc name omits.
    run(["apt-get", "source", "-q", "qemu"], cwd=str(work), timeout=600)
    srcs = [p for p in work.iterdir() if p.is_dir() and p.name.startswith("qemu-")]
    if len(srcs) != 1:
        raise LabError(f"unexpected layout after apt-get source in {work}")
    src = srcs[0]
    for patch in PATCHES:
        _log(f"step 2/4: applying patches/{patch.name}")
        run(["patch", "-p1", "-i", str(patch)], cwd=str(src))
    build = src / "build-colo"
    build.mkdir()
    _log("step 3/4: configure (x86_64-softmmu, replication, tcg)")
    _logged(["../configure", *CONFIGURE_FLAGS], build, log, 900)
    _log(f"step 4/4: ninja qemu-system-x86_64 on {os.cpu_count()} cores")
    _logged(["ninja", "qemu-system-x86_64"], build, log, 3600)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build / "qemu-system-x86_64", out / ".qemu-system-x86_64.tmp")
    (out / "SOURCE").write_text(f"qemu {version}\n"
                                + "".join(f"patch {p.name}\n" for p in PATCHES))
    os.replace(out / ".qemu-system-x86_64.tmp", out / "qemu-system-x86_64")
    shutil.rmtree(work, ignore_errors=True)
    _log(f"QEMU ready: {out / 'qemu-system-x86_64'}")


def _logged(argv: list[str], cwd: Path, log: Path, timeout: float) -> None:
    # ninja's [n/m] shown as it goes (issue 17: ~8 silent minutes before).
    run_logged(argv, cwd, log, timeout, what="QEMU build step")


def main() -> None:
    print(ensure_qemu(rebuild="--rebuild" in sys.argv))


if __name__ == "__main__":
    main()
