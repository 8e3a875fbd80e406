"""Resume a Xen domain that libxl's COLO left suspended, as `xl remus` itself does.

libxl's COLO suspends the primary's domain for every checkpoint (`xl list`: `---ss-`, shut
down for suspend). When the secondary is lost, `xl remus` prints "Backup failed? resuming
domain at primary." and calls `libxl_domain_resume(ctx, domid, 1, NULL)`
(tools/xl/xl_migrate.c, Xen 4.17). When xl never gets there (it aborted in libxl's
teardown, or the take-over killed it after waiting), the domain stays suspended and serves
nobody: run BH of docs/xen.md, the primary alone with its service down. xl 4.17 has no
command for that call, so this module makes it:

    python3 -m colo_orch.backends.xen.resume DOMAIN

It exits 0 once libxl has resumed the domain, 1 with libxl's own messages on stderr if it
could not. `suspend_cancel` is 1 as in xl: the guest's suspend returns as cancelled, so it
runs on with its memory and devices as they were (libxl_dom_suspend.c: xc_domain_resume,
then `cont` to the device model of an HVM guest).

The only module that loads libxl. The orchestrator runs it as a child process: libxl's
event loop and SIGCHLD handling never live in the orchestrator's own process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

LIBXL_VERSION = 0  # libxl.h: the only version libxl_ctx_alloc takes
# xentoollog.h's levels: NONE, DEBUG, VERBOSE, DETAIL, PROGRESS, INFO, NOTICE, WARN, ERROR.
XTL_WARN = 7
SUSPEND_CANCEL = 1  # what xl_migrate.c passes


class ResumeError(Exception):
    pass


def _library(name: str, soname: str) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(ctypes.util.find_library(name) or soname)
    except OSError as exc:
        raise ResumeError(f"cannot load {soname} ({exc}): is this a Xen dom0 with Xen's "
                          "tools installed?") from exc


def resume(domain: str) -> None:
    """libxl_domain_resume(domain, suspend_cancel=1), as xl remus does after a failed
    backup. Raises ResumeError with what went wrong (libxl logs its own reason on stderr)."""
    xtl = _library("xentoollog", "libxentoollog.so.1")
    xl = _library("xenlight", "libxenlight.so.4.17")
    libc = ctypes.CDLL(None)
    ptr = ctypes.c_void_p
    libc.fdopen.restype, libc.fdopen.argtypes = ptr, [ctypes.c_int, ctypes.c_char_p]
    xtl.xtl_createlogger_stdiostream.restype = ptr
    xtl.xtl_createlogger_stdiostream.argtypes = [ptr, ctypes.c_int, ctypes.c_uint]
    xtl.xtl_logger_destroy.argtypes = [ptr]
    xl.libxl_ctx_alloc.argtypes = [ctypes.POINTER(ptr), ctypes.c_int, ctypes.c_uint, ptr]
    xl.libxl_ctx_free.argtypes = [ptr]
    xl.libxl_name_to_domid.argtypes = [ptr, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint32)]
    xl.libxl_domain_resume.argtypes = [ptr, ctypes.c_uint32, ctypes.c_int, ptr]

    stream = libc.fdopen(os.dup(2), b"w")
    logger = xtl.xtl_createlogger_stdiostream(stream, XTL_WARN, 0)
    if not logger:
        raise ResumeError("xtl_createlogger_stdiostream failed")
    ctx = ptr()
    try:
        rc = xl.libxl_ctx_alloc(ctypes.byref(ctx), LIBXL_VERSION, 0, logger)
        if rc != 0:
            raise ResumeError(f"libxl_ctx_alloc failed ({rc}): not root in a Xen dom0 (libxl said why above)")
        domid = ctypes.c_uint32()
        if xl.libxl_name_to_domid(ctx, domain.encode(), ctypes.byref(domid)) != 0:
            raise ResumeError(f"no domain {domain!r}")
        # NULL ao_how: synchronous, as xl calls it.
        rc = xl.libxl_domain_resume(ctx, domid.value, SUSPEND_CANCEL, None)
        if rc != 0:
            raise ResumeError(f"libxl_domain_resume of {domain} (domid {domid.value}) "
                              f"failed ({rc})")
    finally:
        xl.libxl_ctx_free(ctx)  # NULL is fine (libxl.h)
        xtl.xtl_logger_destroy(logger)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0] + "\n\nusage: python3 -m colo_orch.backends.xen.resume "
              "DOMAIN\n\nexample (in a dom0, as root): python3 -m "
              "colo_orch.backends.xen.resume service", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    try:
        resume(argv[0])
    except ResumeError as exc:
        print(f"resume: {exc}", file=sys.stderr)
        return 1
    print(f"resume: domain {argv[0]} resumed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
