"""`colo-lab`: build, start, inspect and remove the COLO testbed."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NoReturn

from colo_lab.chaos.schedule import KINDS
from colo_lab.errors import LabError
from colo_lab.lab import VM_IP, Lab

COMMANDS = ("up", "down", "status", "build", "qemu-path", "smoke", "demo", "chaos")

EPILOG = """\
examples:
  colo-lab build                  build the patched QEMU and the guest into the cache
  colo-lab build --xen            and the nested Xen lab (libxl with COLO, dom0 image)
  colo-lab qemu-path              print the cached patched QEMU (builds nothing)
  colo-lab up                     start a lab: namespaces, bridges, etcd, PVM and SVM booted
  colo-lab up --secondary incoming   SVM waits for the PVM's COLO migration instead
  colo-lab up --protected --proxy    and both orchestrators (with colo-proxy): PROTECTED
  colo-lab up --protected --proxy --remus   colo-proxy buffers output until the next
                                  checkpoint (every 0.2 s) instead of comparing
  colo-lab up --qemu-compare      protected by QEMU's own colo-compare and filters instead
                                  (no orchestrators; the anchor colo-proxy is measured against)
  colo-lab up --no-vms            the network and the 3-member etcd cluster only
  colo-lab up --xen --protected   two nested Xen hosts, colo-orch in both dom0s: PROTECTED
  colo-lab status                 hosts, links, orchestrator states, etcd members
  colo-lab status --json          the same, machine-readable
  ip netns exec colo-lab-client curl http://10.99.0.10/health   reach the service
  colo-lab smoke --checkpoints 20 boot, enter COLO, checkpoint, verify, tear down
  colo-lab down                   remove everything of the lab (also after a crash)
  colo-lab demo                   the whole story: protect, checkpoint, fail over, re-protect
  colo-lab chaos --faults 8 --seed 1   a fault campaign with checked client histories

environment:
  COLO_CACHE    build cache (default /var/cache/colo-lab)
  COLO_RUN_DIR  run directories (default /run/colo-lab)
  COLO_ACCEL    force kvm or tcg (default: kvm only where it boots the guest)
  COLO_QEMU     use this qemu-system-x86_64 instead of the lab's patched build
  COLO_LAB_ARBITER  the pair's arbiter: etcd (default, the lab's cluster) or local
"""
UP_DESCRIPTION = """Create the lab: namespaces, bridges, a 3-member etcd cluster, then the VMs.
With --protected, both hosts' colo-orch run (in the hosts' namespaces, with the lab's
etcd as arbiter) and `up` returns once the pair is PROTECTED; it stays up for you to try
until 'colo-lab down'.
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
    up = sub.add_parser("up", help="create the topology and boot the VMs",
                        description=UP_DESCRIPTION,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("--secondary", choices=["standalone", "incoming", "none"],
                    help="how to start the SVM (default standalone; incoming with --protected)")
    up.add_argument("--protected", action="store_true",
                    help="start both orchestrators and wait until the pair is PROTECTED")
    up.add_argument("--proxy", action="store_true",
                    help="with --protected: the orchestrators run colo-proxy (output compared)")
    up.add_argument("--remus", action="store_true",
                    help="with --proxy: the primary's colo-proxy buffers all output until the "
                    "next periodic checkpoint (Remus-style) instead of comparing")
    up.add_argument("--qemu-compare", action="store_true",
                    help="protect the pair with QEMU's colo-compare, filter-mirror, "
                    "-redirector and -rewriter (no orchestrators, nothing fails over)")
    up.add_argument("--disk", action="store_true",
                    help="give the VMs a replicated disk (the guest's /data)")
    up.add_argument("--no-vms", action="store_true",
                    help="the network and the etcd cluster only: no QEMU, no guest")
    up.add_argument("--xen", action="store_true",
                    help="two nested Xen hosts (QEMU TCG guests running Xen 4.17 and a dom0) "
                    "instead of the two VMs, the lab's guest as an HVM domain on the "
                    "primary; returns when it answers (docs/xen.md). With --protected "
                    "colo-orch runs in both dom0s and protects it (xl remus -c)")
    down = sub.add_parser("down", help="remove all namespaces, processes and files of a lab")
    st = sub.add_parser("status", help="show what is running")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    bd = sub.add_parser("build", help="build (or find cached) QEMU and guest; no lab is started")
    bd.add_argument("--xen", action="store_true",
                    help="also the nested Xen lab: libxl with COLO, a Xen device model with "
                    "replication, a dom0 image (docs/xen.md; about 15 min once)")
    sub.add_parser("qemu-path", help="print the cached patched QEMU's path; exit 1 if none "
                   "(reads the cache only: builds nothing)")
    sm = sub.add_parser("smoke", help="COLO smoke check: boot, COLO, checkpoints, verify, down")
    sm.add_argument("--checkpoints", type=int, default=20, help="how many (default 20)")
    sm.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    dm = sub.add_parser("demo", help="run the demo (lab, orchestrators, client, failover, summary)")
    for sp in (up, down, st, sm, dm):
        sp.add_argument("--name", default="lab", help="lab name (default 'lab')")
    _chaos_parser(sub)
    return p


CHAOS_EPILOG = """\
examples:
  colo-lab chaos --faults 8 --seed 1            eight faults, every workload, into ./chaos-1
  colo-lab chaos --faults 100 --seed 42 --out /tmp/c42   what 'make chaos' runs
  colo-lab chaos --faults 3 --seed 5 --kinds host-death,cut-control --workloads kv
  colo-lab chaos --faults 12 --seed 1 --keep    leave the lab up afterwards to look at it
  colo-lab chaos --check chaos-1/history.jsonl  check a history again (also an interrupted one)

The same seed gives the same schedule (a shorter campaign is a prefix of a longer one).
The history (OUT/history.jsonl) holds every client operation, fault and state sample;
OUT/table.md the table, OUT/violations.txt what broke, OUT/logs the lab's logs.
Exit status: 0 no violation, 1 a violation, 2 the campaign could not run.
fault kinds: """ + ", ".join(KINDS) + """
invariants (docs/RELIABILITY.md): no acknowledged write lost, no value read that was never
written, every stream byte as the service sends it on one connection, at most one host
serving in any sample, PROTECTED again within the bound after each fault, no timeout
checkpoint while no fault is active; with --disk, equal images (coloctl disk verify) after
each re-protection.
"""


def _chaos_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    ch = sub.add_parser(
        "chaos", help="a fault campaign: faults at random, workloads, checked histories",
        description="Bring up a PROTECTED pair (etcd arbiter, colo-proxy), run workload "
        "clients from the client namespace throughout, inject N seeded faults one at a time, "
        "wait for re-protection after each, then check what the clients saw.",
        epilog=CHAOS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ch.add_argument("--faults", type=int, default=8, help="how many faults (default 8)")
    ch.add_argument("--seed", type=int, default=None,
                    help="the schedule's seed (default: drawn, and printed)")
    ch.add_argument("--workloads", default="kv,stream,random,udp,ipv6",
                    help="comma-separated, of kv, stream, random, udp, ipv6 (default all)")
    ch.add_argument("--kinds", default="",
                    help="comma-separated fault kinds to draw from (default every kind)")
    ch.add_argument("--out", type=Path, default=None,
                    help="directory for the history and table (default ./chaos-SEED)")
    ch.add_argument("--reprotect-bound", type=float, default=None,
                    help="seconds after a fault ends within which the pair must be PROTECTED "
                    "again (default 30, docs/RELIABILITY.md)")
    ch.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    ch.add_argument("--disk", action="store_true",
                    help="the VMs on the replicated disk (the kv store in the guest's /data, "
                    "synced before each answer); `coloctl disk verify` after each "
                    "re-protection")
    ch.add_argument("--check", type=Path, metavar="HISTORY",
                    help="run no campaign: check this history.jsonl (an interrupted "
                    "campaign's too) and print its table")
    ch.add_argument("--name", default="chaos", help="lab name (default 'chaos')")


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
        if args.xen:
            from colo_lab.xen_build import ensure_xen

            xen = ensure_xen()
            print(f"xen:   {xen.dir} (hypervisor, dom0 kernel, initrd, dom0.img, libxl, "
                  "device model)")
        return 0
    if args.command == "qemu-path":
        from colo_lab.qemu_build import cached_binary

        qemu = cached_binary()
        if qemu is None:
            _say("no patched QEMU in the cache; 'colo-lab build' builds it")
            return 1
        print(qemu)
        return 0
    if args.command == "chaos":
        return _chaos(args)
    lab = Lab(args.name)
    if args.command == "up":
        return _up(lab, args)
    if args.command == "down":
        removed = lab.down()
        for item in removed:
            print(f"removed {item}")
        if not removed:
            print(f"nothing of lab '{lab.name}' was left")
        return 0
    if args.command == "status":
        from colo_lab.status import lab_status, render

        st = lab_status(lab)
        print(json.dumps(st, indent=1) if args.json else render(st))
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


def _chaos(args: argparse.Namespace) -> int:
    import random

    from colo_lab.chaos import runner

    if args.check is not None:
        if not args.check.is_file():
            raise LabError(f"no history at {args.check}",
                           "give the history.jsonl a campaign wrote (in its --out)")
        return runner.report(args.check, args.reprotect_bound)
    workloads = tuple(w for w in args.workloads.split(",") if w)
    bad = [w for w in workloads if w not in runner.WORKLOADS]
    if bad or not workloads:
        raise LabError(f"no workload {bad or 'at all'}",
                       f"use some of {', '.join(runner.WORKLOADS)}")
    kinds = tuple(k for k in args.kinds.split(",") if k) or None
    if kinds and (bad := [k for k in kinds if k not in KINDS]):
        raise LabError(f"no fault kind {bad}", f"use some of {', '.join(KINDS)}")
    if args.faults < 1:
        raise LabError("--faults must be at least 1")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    opts = runner.Options(faults=args.faults, seed=seed, workloads=workloads,
                          out=args.out or Path(f"chaos-{seed}"), name=args.name, kinds=kinds,
                          keep=args.keep, disk=args.disk)
    if args.reprotect_bound is not None:
        opts.reprotect_bound_s = args.reprotect_bound
    return runner.Campaign(opts, _say).run()


def _up(lab: Lab, args: argparse.Namespace) -> int:
    if args.xen:
        return _up_xen(lab, args)
    if args.no_vms and (args.protected or args.disk or args.secondary):
        raise LabError("--no-vms starts no VMs", "leave out --protected, --disk and --secondary")
    if args.qemu_compare and (args.protected or args.disk or args.no_vms):
        raise LabError("--qemu-compare protects the pair by QEMU alone",
                       "leave out --protected, --proxy, --disk and --no-vms")
    if args.qemu_compare and args.secondary not in (None, "incoming"):
        raise LabError(f"--qemu-compare with --secondary {args.secondary}: QEMU migrates "
                       "the PVM into a waiting SVM", "leave out --secondary")
    if args.remus and not args.proxy:
        raise LabError("--remus is an output mode of colo-proxy", "add --protected --proxy")
    if args.proxy and not args.protected:
        raise LabError("--proxy needs --protected", "add --protected (the orchestrators run it)")
    secondary = args.secondary or ("incoming" if args.protected or args.qemu_compare
                                   else "standalone")
    if args.protected and secondary != "incoming":
        raise LabError(f"--protected with --secondary {secondary}: the orchestrators migrate "
                       "the PVM into a waiting SVM", "leave out --secondary")
    _say(f"starting lab '{lab.name}' (first run builds QEMU, about 10 min)")
    t0 = time.monotonic()
    lab.up(secondary=secondary, disk=args.disk, vms=not args.no_vms,
           qemu_compare=args.qemu_compare)
    _say(f"lab '{lab.name}' is up in {time.monotonic() - t0:.1f} s (accel {lab.accel})")
    if args.qemu_compare:
        from colo_lab import qemu_compare

        try:
            took = qemu_compare.protect(lab)
        except BaseException:
            _say(f"the pair did not enter COLO; logs in {lab.run_dir} (*-qemu.log); "
                 f"'colo-lab down --name {lab.name}' removes the lab")
            raise
        _say(f"pair in COLO with QEMU's colo-compare ({took:.1f} s)")
    if args.protected:
        from colo_lab import pair

        arbiter = pair.default_arbiter()
        _say(f"starting colo-orch on both hosts (arbiter {arbiter}"
             f"{', with colo-proxy' if args.proxy else ''}); waiting for PROTECTED ...")
        try:
            pair.protect(lab, proxy=args.proxy, arbiter=arbiter, say=_say,
                         output="buffer" if args.remus else "compare",
                         # Remus releases output only at checkpoints: take them often.
                         extra=("[timing]\ncheckpoint_max_interval = 0.2\n" if args.remus
                                else ""))
        except BaseException:
            _say(f"the pair did not reach PROTECTED; logs in {lab.run_dir} "
                 f"(orch-*.log); 'colo-lab down --name {lab.name}' removes the lab")
            raise
        _say("pair PROTECTED")
    print(how_to_reach(lab, protected=args.protected, vms=not args.no_vms,
                       qemu_compare=args.qemu_compare))
    return 0


def _up_xen(lab: Lab, args: argparse.Namespace) -> int:
    if (args.proxy or args.remus or args.qemu_compare or args.disk or args.no_vms
            or args.secondary):
        raise LabError("--xen takes --protected only (no colo-proxy, disk or other "
                       "secondary in the dom0s yet: docs/xen.md)",
                       "leave out the other options")
    from colo_lab import etcd_net, xen_lab, xen_orch
    from colo_lab.xen_build import cached_xen, ensure_xen

    # As for the VMs' QEMU: the newest cached build starts a lab at once; `build --xen`
    # is what rebuilds after an input changed.
    build = cached_xen() or ensure_xen()
    from colo_lab.guest import ensure_guest

    # The guest as its inputs make it, not the newest cached one: --protected gives it
    # libxl's COLO disk, which an older guest (no IDE driver) would not see.
    guest = ensure_guest()
    # Measured here: 2-4 min to the guest's answer. With --protected and colo-proxy in the
    # dom0s (docs/xen.md, runs AQ-AS): dom0s about 80 s, both PROTECTED 157-174 s after
    # the orchestrators started, the secondary's proxy compiled 4 min after that, the
    # guest's first answer through the proxies within about 10 min of the start.
    _say(f"starting lab '{lab.name}' with two nested Xen hosts ({build.dir.name}); about "
         f"{'10-12' if args.protected else '2-4'} min under TCG")
    t0 = time.monotonic()
    lab.up(vms=False)
    try:
        took = xen_lab.up(lab, build, guest, source_extra=lambda root: xen_orch.write_configs(
            root, etcd_net.endpoints(lab)))
        xs = xen_lab.hosts(lab, build)
        if args.protected:
            _say("starting colo-orch and colo-proxy in both dom0s; bcc compiles for 1-5 min "
                 "there, the initial sync takes 1-2 min")
            protected_s = xen_orch.protect(xs)
            _say(f"both orchestrators PROTECTED {protected_s:.0f} s after they started; "
                 "waiting for the guest to boot under COLO")
            t1 = time.monotonic()
            lab.wait_http("/health", b"ok\n", timeout=xen_lab.PROXIED_SERVICE_TIMEOUT_S,
                          attempt=xen_lab.PROXIED_REQUEST_S)
            service_s = time.monotonic() - t1
            how = f"{service_s:.0f} s after its COLO pair was PROTECTED"
        else:
            service_s = xen_lab.start_service(lab, xs["primary"])
            how = f"{service_s:.0f} s after `xl create`"
    except BaseException:
        _say(f"the Xen hosts did not come up; logs in {lab.run_dir} (xen-*-serial.log"
             f"{', and /tmp/orch.log in each dom0' if args.protected else ''}); "
             f"'colo-lab down --name {lab.name}' removes the lab")
        raise
    _say(f"lab '{lab.name}' is up in {time.monotonic() - t0:.1f} s: "
         + ", ".join(f"{role} dom0 ready {s:.0f} s after its QEMU started"
                     for role, s in took.items())
         + f"; the lab's guest answers from the primary's HVM domain, {how}")
    print(f"  service:   ip netns exec {lab.client_ns} curl http://{VM_IP}/health "
          "(an HVM domain 'service' on the primary's Xen)")
    for role, x in xs.items():
        print(f"  {role + ':':<10} dom0 {xen_lab.DOM0_LAN_IP[role]} (LAN), "
              f"{xen_lab.DOM0_CTL_IP[role]} (control); console: socat - UNIX:{x.console_path}"
              f"; log {x.serial_path}")
        if args.protected:
            print(f"  {'':<10} colo-orch: ip netns exec {x.ns} curl "
                  f"{xen_orch.state_url(role)}; its log /tmp/orch.log in the dom0")
    print(f"  remove:    colo-lab down --name {lab.name}")
    return 0


def how_to_reach(lab: Lab, *, protected: bool, vms: bool, qemu_compare: bool = False) -> str:
    """What a person types to use the lab that `up` left running."""
    from colo_lab import etcd_net, pair

    ctl = Path(sys.executable).with_name("coloctl")
    coloctl = str(ctl) if ctl.exists() else f"{sys.executable} -m colo_orch.cli.ctl"
    lines = [f"lab '{lab.name}' is up{' and PROTECTED' if protected else ''}"
             f"{' in COLO with QEMU colo-compare' if qemu_compare else ''}"]
    if vms:
        lines.append(f"  service:   ip netns exec {lab.client_ns} curl http://{VM_IP}/health")
        lines.append("             (also PUT/GET /kv/KEY, GET /random: a divergence, "
                     "a checkpoint)")
    # Under QEMU's compare no orchestrator runs: its API and metrics addresses lead nowhere.
    for role, h in ({} if qemu_compare else lab.hosts).items():
        lines.append(f"  {role + ':':<10} namespace {h.ns}, API {pair.api_url(lab, role)}, "
                     f"metrics {pair.metrics_url(lab, role)}/metrics")
    if protected:
        pri = lab.hosts["primary"]
        lines += [f"  coloctl:   ip netns exec {pri.ns} {coloctl} --config "
                  f"{lab.run_dir / 'orch-primary.toml'} status",
                  "             (checkpoint, failover, pause, resume, reprotect alike: the "
                  "config names the API and its token)",
                  f"  logs:      {lab.run_dir}/orch-primary.log, orch-secondary.log"]
    lines += [f"  etcd:      {','.join(etcd_net.endpoints(lab))}",
              f"             e.g. ip netns exec {lab.hosts['primary'].ns} etcdctl --endpoints "
              f"{etcd_net.endpoints(lab)[0]} endpoint status --cluster -w table",
              f"  status:    colo-lab status --name {lab.name}",
              f"  remove:    colo-lab down --name {lab.name}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
