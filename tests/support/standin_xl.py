#!/usr/bin/env python3
"""A stand-in for Xen's `xl` (not xl): replays recorded behaviours of the commands the Xen
backend uses, with xl's own messages (tools/xl/xl_migrate.c). No hypervisor is involved.

State lives in $XL_STANDIN_DIR: one file per domain (its `xl list` state flags), and a
file `<domain>.ran` once it has run: `list` shows a paused domain that has not run with
0.0 CPU seconds (Xen counts its vcpus' running time), any other with 1.0.
`remus` behaves as $XL_STANDIN_SCENARIO says:
  normal          libxl's checkpoint loop (the simulation in tests/support/libxl_sim.py) against the
                  proxy at $XL_STANDIN_CHECKPOINT until killed;
  secondary_lost  the same until the file "end" appears, then "Backup failed?", exit 1;
  primary_lost    the same until "end", then the domain vanishes, "destroyed", exit 0;
  error           "Failed to suspend domain at primary.", exit 1, at once.
  abort           the same as secondary_lost until "end", then libxl's assertion in its
                  teardown and SIGABRT, the domain left suspended (`---ss-`; run BH).
`resume DOMAIN` stands in for colo_orch.backends.xen.resume (libxl_domain_resume): it runs
a suspended domain again, and fails as libxl did in run A on one that is not suspended.
Whatever the scenario, as seen on Xen 4.17 (docs/xen.md): libxl's COLO takes the primary
as paused (`create -p`) and unpauses it after the first checkpoint; a domain that was
running when `remus` started makes that unpause fail ("cannot unpause primary vm") right
after the first COLO_CHECKPOINT, and xl ends with "Backup failed?", exit 1.
`qemu-monitor-command DOMAIN CMD` appends CMD to the file "monitor-commands".
`migrate-receive` writes the secondary's back channel (libxl_sim.RestoreBackChannel) on
stdout. Its stdin stands in for the primary's stream: a line "sync" ends the initial sync,
a line "checkpoint" is one checkpoint; other bytes are taken as stream data.

Run as `python -m tests.support.standin_xl` with the repository root on PYTHONPATH.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path

from tests.support.libxl_sim import RestoreBackChannel, SimulatedLibxl

STATE = Path(os.environ["XL_STANDIN_DIR"])


def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "list":
        f = STATE / args[0]
        if not f.exists():
            say(f"Invalid domain identifier: {args[0]}")
            return 1
        flags = f.read_text().strip()
        cpu = "0.0" if "p" in flags and not (STATE / f"{args[0]}.ran").exists() else "1.0"
        print("Name                                        ID   Mem VCPUs\tState\tTime(s)")
        print(f"{args[0]:<40} 7  1024     2     {flags}       {cpu}")
        return 0
    if cmd == "create":
        (STATE / "create-args").write_text("\n".join(args))
        name = Path(args[-1]).stem
        (STATE / f"{name}.ran").unlink(missing_ok=True)
        (STATE / name).write_text("--p---" if "-p" in args else "-b----")
        if "-p" not in args:
            (STATE / f"{name}.ran").touch()
        return 0
    if cmd == "destroy":
        (STATE / args[0]).unlink(missing_ok=True)
        (STATE / f"{args[0]}.ran").unlink(missing_ok=True)
        return 0
    if cmd == "unpause":
        if "p" not in (STATE / args[0]).read_text():
            # Xen refuses to unpause a domain no controller paused (EINVAL), as libxl
            # saw in run A of docs/xen.md.
            say("libxl: error: libxl_domain.c:636:libxl__domain_unpause_deprecated: "
                "Domain 7:Unpausing domain: Invalid argument")
            return 1
        (STATE / args[0]).write_text("-b----")
        (STATE / f"{args[0]}.ran").touch()
        return 0
    if cmd == "pause":
        (STATE / args[0]).write_text("--p---")
        return 0
    if cmd == "remus":
        return remus(args)
    if cmd == "resume":
        f = STATE / args[0]
        if not f.exists() or f.read_text().strip()[3:5] != "ss":
            say("libxl: error: libxl_dom_suspend.c:666:domain_resume_done: Domain 7:"
                "xc_domain_resume failed: Invalid argument")
            say(f"resume: libxl_domain_resume of {args[0]} (domid 7) failed (-3)")
            return 1
        f.write_text("-b----")
        return 0
    if cmd == "migrate-receive":
        return migrate_receive(args)
    if cmd == "qemu-monitor-command":
        # xl prints what the HMP command printed: announce_self prints nothing.
        if not (STATE / args[0]).exists():
            say(f"Invalid domain identifier: {args[0]}")
            return 1
        with (STATE / "monitor-commands").open("a") as f:
            f.write(" ".join(args[1:]) + "\n")
        return 0
    say(f"standin xl: {cmd} not replayed")
    return 2


def remus(args: list[str]) -> int:
    scenario = os.environ.get("XL_STANDIN_SCENARIO", "normal")
    (STATE / "remus-args").write_text("\n".join(args))
    if scenario == "error":
        say("Failed to suspend domain at primary.")
        return 1
    domain = args[-2]
    paused = "p" in (STATE / domain).read_text()
    host, _, port = os.environ["XL_STANDIN_CHECKPOINT"].rpartition(":")
    sim = SimulatedLibxl((host, int(port)), timeout=0.3).start()
    # The first COLO_CHECKPOINT goes out before libxl resumes and unpauses the primary.
    sim.wait_for(lambda: sim.model.sent or sim.error is not None, 10)
    if not paused:
        sim.stop()
        say("libxl: error: libxl_domain.c:636:libxl__domain_unpause_deprecated: Domain 7:"
            "Unpausing domain: Invalid argument")
        say("libxl: error: libxl_colo_save.c:485:colo_preresume_cb: Domain 7:cannot unpause "
            "primary vm")
        say("COLO: Backup failed? resuming domain at primary.")
        return 1
    (STATE / domain).write_text("-b----")
    (STATE / f"{domain}.ran").touch()
    end = STATE / "end"
    done = threading.Event()
    while not end.exists():
        done.wait(0.02)  # replay driver: polls for the test's trigger file
    sim.stop()
    if scenario == "primary_lost":
        (STATE / domain).unlink(missing_ok=True)
        say("COLO: Primary domain has been destroyed.")
        return 0
    if scenario == "abort":
        (STATE / domain).write_text("---ss-")
        say("xl: libxl_stream_read.c:757: stream_complete: Assertion `rc' failed.")
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # xl's SIGABRT, without a core
        os.abort()
    say("COLO: Backup failed? resuming domain at primary.")
    return 1


def migrate_receive(args: list[str]) -> int:
    """The secondary side as xl_migrate.c reports it: ready, then, when the primary's stream
    ends, "COLO Failover for domain" and the incoming domain runs on under its own name."""
    (STATE / "receive-args").write_text("\n".join(args))
    domain = os.environ.get("XL_STANDIN_DOMAIN", "web")
    incoming = STATE / f"{domain}--incoming"
    incoming.write_text("-b----")
    say("migration target: Ready to receive domain.")
    back = RestoreBackChannel()
    os.write(1, back.start())
    pending = b""
    while data := os.read(0, 65536):  # the primary's stream, until it ends
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            if line == b"sync":
                os.write(1, back.initial_sync())
            elif line == b"checkpoint":
                os.write(1, back.checkpoint())
    incoming.rename(STATE / domain)
    say("migration target: COLO Failover for domain 7")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
