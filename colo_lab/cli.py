"""`colo-lab`: build, start, inspect and remove the COLO testbed."""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

from colo_lab.errors import LabError
from colo_lab.lab import VM_IP, Lab

COMMANDS = ("up", "down", "status", "build", "qemu-path", "smoke", "demo")

EPILOG = """\
examples:
  colo-lab build                  build the patched QEMU and the guest into the cache
  colo-lab qemu-path              print the cached patched QEMU (builds nothing)
  colo-lab up                     start a lab: namespaces, bridges, PVM and SVM booted
  colo-lab up --secondary incoming   SVM waits for the PVM's COLO migration instead
  colo-lab status --json          what is running
  ip netns exec colo-lab-client curl http://10.99.0.10/   reach the service
  colo-lab smoke --checkpoints 20 boot, enter COLO, checkpoint, verify, tear down
  colo-lab down                   remove everything of the lab (also after a crash)
  colo-lab demo                   the whole story: protect, checkpoint, fail over, re-protect

environment:
  COLO_CACHE    build cache (default /var/cache/colo-lab)
  COLO_RUN_DIR  run directories (default /run/colo-lab)
  COLO_ACCEL    force kvm or tcg (default: kvm only where it boots the guest)
  COLO_QEMU     use this qemu-system-x86_64 instead of the lab's patched build
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line that says what is wrong and where to look, not a usage dump.
        if "invalid choice" in message and "command" in message:
            bad = message.split("'")[1] if "'" in message else "?"
            message = f"unknown command '{bad}'; use one of {', '.join(COMMANDS)}"
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _say(msg: str) -> None:
    print(f"colo-lab: {msg}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="colo-lab",
        description="The COLO testbed: a client, a LAN, a primary and a secondary host in "
        "network namespaces, with QEMU VMs (TCG unless KVM really works).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="command", required=True, parser_class=_Parser)
    up = sub.add_parser("up", help="create the topology and boot the VMs")
    up.add_argument("--secondary", choices=["standalone", "incoming", "none"],
                    default="standalone", help="how to start the SVM (default standalone)")
    down = sub.add_parser("down", help="remove all namespaces, processes and files of a lab")
    st = sub.add_parser("status", help="show what is running")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("build", help="build (or find cached) QEMU and guest; no lab is started")
    sub.add_parser("qemu-path", help="print the cached patched QEMU's path; exit 1 if none "
                   "(reads the cache only: builds nothing)")
    sm = sub.add_parser("smoke", help="COLO smoke check: boot, COLO, checkpoints, verify, down")
    sm.add_argument("--checkpoints", type=int, default=20, help="how many (default 20)")
    sm.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    dm = sub.add_parser("demo", help="run the demo (lab, orchestrators, client, failover, summary)")
    for sp in (up, down, st, sm, dm):
        sp.add_argument("--name", default="lab", help="lab name (default 'lab')")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except LabError as exc:
        print(f"colo-lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("colo-lab: interrupted; run 'colo-lab down' if a lab is left", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "build":
        lab = Lab()
        lab.up(build_only=True)
        print(f"qemu:  {lab.qemu}")
        assert lab.guest is not None
        print(f"guest: {lab.guest.kernel} {lab.guest.initrd}")
        return 0
    if args.command == "qemu-path":
        from colo_lab.qemu_build import cached_binary

        qemu = cached_binary()
        if qemu is None:
            _say("no patched QEMU in the cache; 'colo-lab build' builds it")
            return 1
        print(qemu)
        return 0
    lab = Lab(args.name)
    if args.command == "up":
        _say(f"starting lab '{lab.name}' (first run builds QEMU, about 10 min)")
        lab.up(secondary=args.secondary)
        _say(f"lab '{lab.name}' is up (accel {lab.accel}); service at http://{VM_IP}/ "
             f"from namespace {lab.client_ns}; 'colo-lab down --name {lab.name}' removes it")
        return 0
    if args.command == "down":
        removed = lab.down()
        for item in removed:
            print(f"removed {item}")
        if not removed:
            print(f"nothing of lab '{lab.name}' was left")
        return 0
    if args.command == "status":
        st = lab.status()
        if args.json:
            print(json.dumps(st, indent=1))
        elif not st["up"]:
            print(f"lab '{lab.name}': down")
        else:
            print(f"lab '{lab.name}': up (accel {st['accel']})")
            for role, vm in st["vms"].items():
                state = "running" if vm["running"] else "stopped"
                print(f"  {role:<9} VM {state}" + (f" (pid {vm['pid']})" if vm["pid"] else ""))
            print(f"  namespaces: {' '.join(st['namespaces'])}")
        return 0
    if args.command == "smoke":
        from colo_lab.smoke import run_smoke, timed_up

        if args.checkpoints < 1:
            raise LabError("--checkpoints must be at least 1")
        try:
            timed_up(lab, _say)
            res = run_smoke(lab, args.checkpoints, _say)
        finally:
            if not args.keep:
                lab.down()
        pauses = sorted(res.pause_ms)
        print(f"accel {res.accel}; COLO reached in {res.colo_seconds:.2f} s; "
              f"{res.checkpoints} checkpoints, median {pauses[len(pauses) // 2]:.0f} ms; "
              f"SVM answers: {res.svm_answers}; guest problems: {len(res.serial_problems)}")
        for line in res.serial_problems[:10]:
            print(f"  serial: {line}")
        return 0 if res.ok(args.checkpoints) else 1
    if args.command == "demo":
        from colo_lab.demo import run_demo

        summary = run_demo(_say, name=args.name)
        # The demo's claim: the client never noticed. Any error fails it.
        return 0 if summary.get("requests_ok") and not summary.get("request_errors") else 1
    raise LabError(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
