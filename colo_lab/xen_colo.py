"""The orchestrator's Xen backend in a nested Xen host's dom0, driven by hand: what
`colo-orch` would do there, without its daemon (docs/xen.md, "The nested Xen lab").

  secondary: python3 -m colo_lab.xen_colo secondary --domain service --incoming tcp:10.99.1.12:7420
  primary:   python3 -m colo_lab.xen_colo primary --domain service --config /tmp/service.cfg \\
                 --peer tcp:10.99.1.12:7420 --control /run/colo/proxy.sock --checkpoints 10

The secondary runs `XenBackend.start_vm(incoming)` (its receiver and `xl migrate-receive
--colo --userspace-colo-proxy`) and prints each SVM resume that `wait_resume` reports
from xl's back channel. The primary serves libxl with a `LibxlBridge` for the proxy at
`--control`, runs `XenBackend.enter_colo` (`xl pause`, `xl remus -c -p` toward the
secondary) and then `--checkpoints` checkpoints asked of libxl, printing how long each
took, and with `--diverge` one divergence fed to the proxy; then it keeps COLO running (libxl's own checkpoints) until killed. Every line
starts with the seconds since the command started.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import subprocess
import sys
import threading
import time

from colo_lab import xen_proxy
from colo_lab.wait import WaitTimeout, wait_until
from colo_orch.backends.base import BackendError
from colo_orch.backends.xen.backend import Supervised, XenBackend
from colo_orch.backends.xen.libxl.bridge import LibxlBridge
from colo_orch.core.decide import VmObs

T0 = time.monotonic()
# glibc's malloc checks, loaded only where asked (glibc >= 2.34 moved them out of libc).
MALLOC_DEBUG = "/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:8.2f}] {text}", flush=True)


def _ended(what: str, r: Supervised | None) -> None:
    if r is None:
        say(f"{what} never started")
        return
    say(f"{what} ended ({r.outcome()}); it said:")
    for line in r.lines:
        print(f"    {line}", flush=True)


def _show_new(r: Supervised, shown: int) -> int:
    """xl's stderr lines after the first `shown`, as they come (a hung xl says as much as
    a crashed one; at its end _ended prints the whole of it again); returns how many now."""
    with r.cond:
        new = r.lines[shown:]
    for line in new:
        print(f"  xl: {line}", flush=True)
    return shown + len(new)


def secondary(domain: str, incoming: str, xl: list[str], take_over_file: str = "") -> int:
    b = XenBackend(domain, "/dev/null", xl=xl)
    say(b.start_vm(incoming))
    resumes = shown = 0
    took_over = False
    while True:
        if b.wait_resume(1.0):
            resumes += 1
            lists, pages = b.svm_dirty()
            say(f"SVM resumed ({resumes}); the SVM's dirty list {lists}: {pages} pages")
        # colo-orch's part once its heartbeat has lost the primary: end the stream so that
        # libxl fails over (a dead host sends no FIN: its stream would hang), then run the
        # SVM as the primary. Here the test says when, by creating the file.
        if take_over_file and not took_over and os.path.exists(take_over_file):
            took_over = True
            say("taking over: the primary is lost")
            try:
                say(f"took over: {b.take_over('secondary')}")
            except BackendError as exc:
                say(f"failed: take over: {exc}")
        r = b.receiver
        if r is None:
            continue
        shown = _show_new(r, shown)
        if r.exited:
            _ended("xl migrate-receive", r)
            return 0


def primary(domain: str, config: str, peer: str, control: str, checkpoints: int,
            xl: list[str], diverge: bool = False) -> int:
    bridge = LibxlBridge(("127.0.0.1", 9911), control).start()
    b = XenBackend(domain, config, xl=xl, bridge=bridge, create_paused=True)
    try:
        say(b.start_vm(None))
        say(b.enter_colo(peer))
        for i in range(checkpoints):
            say(f"checkpoint {i + 1}: {b.checkpoint()}")
    except BackendError as exc:
        say(f"failed: {exc}")
        _ended("xl remus", b.remus)
        return 1
    if diverge:
        # From this process rather than a fresh python3: in runs L, O, T and U that one
        # died of a segfault while it started (docs/xen.md), this one never did.
        say(f"diverge: exit {xen_proxy.run_diverge(control, 80, 60.0)}")
    stop = threading.Event()
    shown = 0
    while not stop.wait(10.0):
        r = b.remus
        if r is not None:
            shown = _show_new(r, shown)
        st = bridge.status()
        say(f"COLO_CHECKPOINTs {st['checkpoints']}, session {st['session']}")
        if r is None or r.exited:
            _ended("xl remus", r)
            return 1
    return 0


def _suspended(b: XenBackend) -> VmObs | None:
    obs = b.observe()
    return obs if obs.status == "colo" else None


# public/sched.h: SHUTDOWN_poweroff 0, reboot 1, suspend 2.
SHUTDOWN_SUSPEND = 2


def suspend(domain: str, xl: list[str]) -> int:
    """Suspend our running domain as libxl's COLO does for a checkpoint of an HVM guest
    without Xen callbacks (libxl_dom_suspend.c: "Calling xc_domain_shutdown on HVM
    domain"), leave it so as run BH's ended `xl remus` did, and let XenBackend see it and
    take over as the primary: its take-over must resume the domain (resume.py)."""
    b = XenBackend(domain, "/dev/null", xl=xl)
    out = subprocess.run([*xl, "domid", domain], capture_output=True, text=True,
                         timeout=60, check=False)
    if out.returncode != 0 or not out.stdout.strip().isdigit():
        say(f"no domain {domain}: {out.stderr.strip()}")
        return 1
    xc = ctypes.CDLL("libxenctrl.so.4.17", use_errno=True)
    xc.xc_interface_open.restype = ctypes.c_void_p
    xc.xc_interface_open.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
    xc.xc_domain_shutdown.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int]
    xc.xc_interface_close.argtypes = [ctypes.c_void_p]
    xch = xc.xc_interface_open(None, None, 0)
    if not xch:
        say("xc_interface_open failed")
        return 1
    try:
        if xc.xc_domain_shutdown(xch, int(out.stdout), SHUTDOWN_SUSPEND) != 0:
            say(f"xc_domain_shutdown failed: errno {ctypes.get_errno()}")
            return 1
    finally:
        xc.xc_interface_close(xch)
    # Xen marks the domain shut down once all its vcpus have stopped: wait for `xl list`.
    try:
        obs = wait_until(lambda: _suspended(b), 60,
                         f"{domain} shut down for suspend in xl list", every=0.5)
    except WaitTimeout as exc:
        say(str(exc))
        return 1
    say(f"suspended: status={obs.status} running={obs.running}")
    try:
        say(f"take_over: {b.take_over('primary')}")
    except BackendError as exc:
        say(f"take_over failed: {exc}")
        return 1
    obs = b.observe()
    say(f"after the take-over: status={obs.status} running={obs.running}")
    return 0 if obs.running else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m colo_lab.xen_colo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=("primary", "secondary", "suspend"),
                   help="suspend: suspend our running --domain as libxl's COLO does for a "
                        "checkpoint, then take over as the primary (it must resume it)")
    p.add_argument("--domain", default="service")
    p.add_argument("--config", default="/tmp/service.cfg", help="primary: the domain's")
    p.add_argument("--incoming", default="tcp:10.99.1.12:7420")
    p.add_argument("--peer", default="tcp:10.99.1.12:7420")
    p.add_argument("--control", default="/run/colo/proxy.sock")
    p.add_argument("--checkpoints", type=int, default=10)
    p.add_argument("--diverge", action="store_true",
                   help="primary: then feed the stand-in proxy one divergent connection "
                        "(xen_proxy's diverge) and print whether a checkpoint released it")
    p.add_argument("--xl-verbose", action="store_true",
                   help="xl -vvv: libxl's debug log on xl's stderr, printed when xl ends")
    p.add_argument("--take-over-file", default="", metavar="PATH",
                   help="secondary: take over (XenBackend.take_over) once PATH exists, as "
                        "colo-orch does when its heartbeat loses the primary")
    p.add_argument("--malloc-check", action="store_true",
                   help="xl under glibc's malloc checks (MALLOC_CHECK_=3): a heap "
                        "corruption aborts at the free that finds it, not later (run Z)")
    a = p.parse_args(argv)
    xl = ["xl", "-vvv"] if a.xl_verbose else ["xl"]
    if a.malloc_check:
        xl = ["env", "MALLOC_CHECK_=3", "MALLOC_PERTURB_=165",
              f"LD_PRELOAD={MALLOC_DEBUG}", *xl]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if a.role == "secondary":
        return secondary(a.domain, a.incoming, xl, a.take_over_file)
    if a.role == "suspend":
        return suspend(a.domain, xl)
    return primary(a.domain, a.config, a.peer, a.control, a.checkpoints, xl, a.diverge)


if __name__ == "__main__":
    raise SystemExit(main())
