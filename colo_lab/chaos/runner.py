"""A fault campaign against a lab pair: bring it up PROTECTED (etcd arbiter, proxies), run
the workload clients throughout, inject the scheduled faults one at a time, wait for
re-protection after each, sample who serves and what each orchestrator says, then check
the history (colo_lab.chaos.checker) and print the table.

Everything the campaign saw goes to OUT/history.jsonl as it happens; OUT/table.md and
OUT/violations.txt are written at the end, and the lab's logs are copied to OUT/logs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colo_lab import etcd_net, faults, netns, pair
from colo_lab.chaos import checker, history
from colo_lab.chaos.schedule import Planned, plan
from colo_lab.client import JsonLinesProcess
from colo_lab.errors import LabError
from colo_lab.guest import pattern
from colo_lab.lab import LINKS, VM_IP, VM_IP6, VM_MAC, Lab
from colo_lab.mac_sampler import MacSampler
from colo_lab.wait import wait_until

WORKLOADS = ("kv", "stream", "random", "udp", "ipv6")
# The client processes of each workload: (client kind, its name in the history, address).
# ipv6 is kv and stream again, over the VM's IPv6 address: the mirror, the sequence
# rewriting and the comparison of IPv6 flows, under the same checks.
CLIENTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "kv": (("kv", "kv0", VM_IP),),
    "stream": (("stream", "stream0", VM_IP),),
    "random": (("random", "random0", VM_IP),),
    "udp": (("udp", "udp0", VM_IP),),
    "ipv6": (("kv", "kv6", VM_IP6), ("stream", "stream6", VM_IP6)),
}
HOSTS = ("primary", "secondary")
LAN_PORTS = {"primary": "p-pri", "secondary": "p-sec"}
STATE_EVERY_S = 0.3
RECOVER_WAIT_S = 2 * checker.REPROTECT_BOUND_S  # past the bound, to measure how slow
# Both hosts PROTECTED in every sample for this long: recovered (from the first of them).
# Longer than the orchestrators take to notice any fault that has ended: a dead QEMU or
# proxy at once, a silent peer after heartbeat_timeout (1 s), a lost lease after its
# ttl (3 s).
STABLE_S = 4.0


@dataclass
class Options:
    faults: int
    seed: int
    workloads: tuple[str, ...] = WORKLOADS
    out: Path = Path("chaos-out")
    name: str = "chaos"
    kinds: tuple[str, ...] | None = None
    reprotect_bound_s: float = checker.REPROTECT_BOUND_S
    keep: bool = False
    disk: bool = False  # the replicated disk, verified after each re-protection


class Recorder:
    """The history file, appended to from several threads, and what the runner needs of it
    while the campaign runs (the latest state of each host)."""

    def __init__(self, path: Path, t0: float) -> None:
        self.t0 = t0
        self.path = path
        self._f = open(path, "w")
        self._lock = threading.Lock()
        self.records: list[history.Record] = []
        self.latest: dict[str, dict[str, Any] | None] = {}
        self.latest_at = 0.0

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 4)

    def write(self, rec: history.Record) -> None:
        rec.setdefault("t", self.now())
        with self._lock:
            self.records.append(rec)
            self._f.write(history.dumps(rec) + "\n")
            self._f.flush()

    def close(self) -> None:
        with self._lock:
            self._f.close()


class _Client(JsonLinesProcess):
    def __init__(self, rec: Recorder, name: str, ns: str, *args: str) -> None:
        self.rec, self.name = rec, name
        self.count = 0
        super().__init__(ns, "colo_lab.chaos.clients", *args)

    def on_record(self, r: dict[str, Any]) -> None:
        self.count += 1
        self.rec.write(r)


class _Ready(JsonLinesProcess):
    """A helper that prints {"ready": true} once it works."""

    def __init__(self, ns: str, module: str, *args: str) -> None:
        self.ready = threading.Event()
        super().__init__(ns, module, *args)

    def on_record(self, r: dict[str, Any]) -> None:
        if r.get("ready"):
            self.ready.set()


class _Mac(MacSampler):
    def __init__(self, rec: Recorder, lab: Lab) -> None:
        self.rec = rec
        super().__init__(lab.lan_ns, VM_MAC, list(LAN_PORTS.values()))

    def on_record(self, r: dict[str, Any]) -> None:
        if r.get("ready"):
            self.ready.set()
        elif len(r.get("n", {})) > 1 or not self.samples:
            # Only what the checker needs: intervals with two ports (and the first, to
            # show the sampler saw traffic). One host's frames are the normal case.
            self.samples.append(r)
            self.rec.write({"type": "mac", "n": r["n"], "sampler_t": r.get("t")})


class StateSampler:
    """Both orchestrators' /state every STATE_EVERY_S on a thread, into the history."""

    def __init__(self, lab: Lab, rec: Recorder) -> None:
        self.lab, self.rec = lab, rec
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            hosts: dict[str, dict[str, Any] | None] = {}
            for h in HOSTS:
                st = pair.state(self.lab, h, timeout=2)
                hosts[h] = {"state": st.get("state"), "role": st.get("role"),
                            "timeout_checkpoints": int(st.get("checkpoints", {})
                                                       .get("timeout", 0))} if st else None
            self.rec.latest = hosts
            # When the sample began: a wait for a state after some moment must not take
            # a sample begun before it.
            self.rec.latest_at = began
            self.rec.write({"type": "state", "hosts": hosts})
            self._stop.wait(STATE_EVERY_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _link_up(lab: Lab, host: str, link: str) -> bool:
    out = netns.ip(lab.hosts[host].ns, "-o", "link", "show", LINKS[link])
    flags = out.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in out else []
    return "UP" in flags


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # gone meanwhile (the orchestrator fenced it): nothing to resume


def _vm_pid(lab: Lab, host: str) -> int:
    return int((lab.run_dir / ("pvm.pid" if host == "primary" else "svm.pid")).read_text())


class Injector:
    """Puts one fault into the lab; returns what heals it (None: nothing to heal)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.started: list[subprocess.Popen[bytes]] = []  # orchestrators we restarted

    def inject(self, p: Planned, host: str) -> Callable[[], None] | None:
        lab, kind = self.lab, p.kind
        if kind == "kill-qemu":
            pair.kill_vm(lab, host)
            return None
        if kind == "stop-qemu":
            return self._stop([_vm_pid(lab, host)])
        if kind == "kill-proxy":
            pid = self._one_proxy(host)
            _signal([pid], signal.SIGKILL)
            return None
        if kind == "stop-proxy":
            return self._stop([self._one_proxy(host)])
        if kind == "kill-orch":
            # A supervisor (systemd's Restart=) starts it again at once.
            self.started.append(pair.restart_orchestrator_process(lab, host))
            return None
        if kind == "stop-orch":
            orch = pair.orchestrator_pid(lab, host)
            if orch is None:
                raise LabError(f"no orchestrator runs on the {host} host")
            return self._stop([orch])
        if kind == "host-death":
            return self._host_death(host)
        if kind.startswith("cut-"):
            link = kind.removeprefix("cut-")
            was_up = _link_up(lab, host, link)
            faults.cut(lab, host, link)
            return (lambda: faults.heal(lab, host, link)) if was_up else None
        if kind == "loss-control":
            return self._loss(host, "control", int(p.params["loss_pct"]))
        if kind == "loss-forward":
            return self._bpf_loss(host, "forward", int(p.params["loss_pct"]))
        if kind == "etcd-kill":
            i = int(p.target.removeprefix("etcd"))
            faults.kill_etcd_member(lab, i)

            def restart() -> None:
                faults.start_etcd_member(lab, i)
                etcd_net.wait_healthy(lab, 30)

            return restart
        raise LabError(f"no fault kind {kind}")

    def _one_proxy(self, host: str) -> int:
        pids: list[int] = wait_until(lambda: (p if len(p := pair.proxy_pids(self.lab, host)) == 1
                                              else None), 10, f"one colo-proxy on {host}")
        return pids[0]

    @staticmethod
    def _stop(pids: list[int]) -> Callable[[], None]:
        _signal(pids, signal.SIGSTOP)
        return lambda: _signal(pids, signal.SIGCONT)

    def _host_death(self, host: str) -> Callable[[], None]:
        lab = self.lab
        # Its links first, as a power cut stops the wire and the processes at once.
        ups = {link: _link_up(lab, host, link) for link in LINKS}
        for link in LINKS:
            faults.cut(lab, host, link)
        pids = [_vm_pid(lab, host), *pair.proxy_pids(lab, host)]
        orch = pair.orchestrator_pid(lab, host)
        if orch is not None:
            pids.append(orch)
        _signal(pids, signal.SIGKILL)
        wait_until(lambda: all(pair.process_gone(p) for p in pids), 10,
                   f"the {host} host's processes to die")

        def reboot() -> None:
            for link, up in ups.items():
                if up:
                    faults.heal(lab, host, link)
            # The host is back: its init starts the orchestrator, with nothing running.
            self.started.append(pair.start_orchestrator_again(lab, host))

        return reboot

    def _loss(self, host: str, link: str, pct: int) -> Callable[[], None]:
        ns, dev = self.lab.hosts[host].ns, LINKS[link]
        rules = [["INPUT", "-i", dev], ["OUTPUT", "-o", dev]]
        match = ["-m", "statistic", "--mode", "random", "--probability",
                 f"{pct / 100:.2f}", "-j", "DROP"]
        for r in rules:
            netns.sh(ns, ["iptables", "-w", "-I", *r, *match])

        def heal() -> None:
            for r in rules:
                netns.sh(ns, ["iptables", "-w", "-D", *r, *match])

        return heal

    def _bpf_loss(self, host: str, link: str, pct: int) -> Callable[[], None]:
        # iptables never sees the forward link's frames (tc redirects them): a tc program
        # on this host's end drops what it sends (colo_lab.chaos.loss).
        proc = _Ready(self.lab.hosts[host].ns, "colo_lab.chaos.loss", "--dev", LINKS[link],
                      "--pct", str(pct))
        wait_until(lambda: proc.ready.is_set() or proc.proc.poll() is not None, 60,
                   "the loss filter to be attached")
        if not proc.ready.is_set():
            raise LabError(f"the loss filter on {host}'s {link} link did not start "
                           f"(exit {proc.proc.returncode})")

        def heal() -> None:
            proc.proc.send_signal(signal.SIGTERM)
            proc.proc.wait(timeout=30)

        return heal

    def reap(self) -> None:
        """Collect the exit of what we started and the faults killed (no zombies)."""
        for p in self.started:
            p.poll()
        for vm in self.lab.vms.values():
            if vm.proc is not None:
                vm.proc.poll()


def _host_of(latest: dict[str, dict[str, Any] | None], target: str) -> str:
    """The host that plays `target` (pvm, svm) now; etcd members belong to no host."""
    if not target.endswith("vm"):
        return ""
    want = "primary" if target == "pvm" else "secondary"
    for h in HOSTS:
        st = latest.get(h)
        if st and st.get("role") == want:
            return h
    raise LabError(f"no host plays the {target} now: {latest}")


# A protected pair's states: the primary passes through CHECKPOINTING about once a second
# under the random workload.
HEALTHY = ("PROTECTED", "CHECKPOINTING")


def _protected(latest: dict[str, dict[str, Any] | None]) -> bool:
    """Both hosts answer, one as primary and one as secondary, in a protected pair's state."""
    got = [latest.get(h) for h in HOSTS]
    return (all(g is not None and g.get("state") in HEALTHY for g in got)
            and sorted(str(g.get("role")) for g in got if g) == ["primary", "secondary"])


# A checkpoint of the lab's pair takes 50-200 ms (the PVM paused about 50 ms of it); one
# in CHECKPOINTING this long is hung, not a protected pair's passing state. Measured: a
# cut of the migration link held one for 13.7 s (its stream blocked on the dead link),
# and the pair, whose samples said CHECKPOINTING throughout, was counted back at the
# heal; the checkpoint ended 5 s later and the pair then failed over and re-protected.
CHECKPOINT_HUNG_S = 2.0


class Recovery:
    """Whether the pair is back after a fault that ended at `t_end`, from the state
    samples one by one (pure: the sample's time comes with it). Back: a protected pair in
    every sample for STABLE_S, with no checkpoint hung (CHECKPOINT_HUNG_S) in that time;
    `since` is when that run of samples began."""

    def __init__(self, t_end: float) -> None:
        self.t_end = t_end
        self.since: float | None = None
        self._checkpointing_since: float | None = None

    def see(self, at: float, latest: dict[str, dict[str, Any] | None]) -> bool:
        if at <= self.t_end:
            return False
        if any((g or {}).get("state") == "CHECKPOINTING" for g in latest.values()):
            if self._checkpointing_since is None:
                self._checkpointing_since = at
            if at - self._checkpointing_since >= CHECKPOINT_HUNG_S:
                self.since = None
                return False
        else:
            self._checkpointing_since = None
        if not _protected(latest):
            self.since = None
            return False
        if self.since is None:
            self.since = at
        # Seen in the first 100-fault run: samples just after a SIGKILL of the PVM still
        # said PROTECTED (the orchestrators had not noticed yet), and the next fault came
        # during the failover. PROTECTED counts once it has lasted.
        return at - self.since >= STABLE_S


class Campaign:
    def __init__(self, opts: Options, say: Callable[[str], None]) -> None:
        self.opts, self.say = opts, say
        self.schedule = plan(opts.seed, opts.faults, opts.kinds)
        self.lab = Lab(opts.name)
        self.clients: list[_Client] = []
        self.mac: _Mac | None = None
        self.states: StateSampler | None = None
        self.rec: Recorder | None = None
        self.injector = Injector(self.lab)

    def run(self) -> int:
        o = self.opts
        o.out.mkdir(parents=True, exist_ok=True)
        interrupted = False
        try:
            self._up()
            assert self.rec is not None
            for p in self.schedule:
                if not self._one(p):
                    self.say("the pair did not recover: the campaign stops here")
                    break
        except KeyboardInterrupt:
            interrupted = True
            self.say("interrupted: stopping the clients and removing the lab")
            raise
        finally:
            self._stop_workloads(read_back=not interrupted)
            if self.rec is not None:
                self.rec.write({"type": "end"})
                self.rec.close()
            try:
                self.lab.keep_logs(o.out / "logs")
            except OSError:
                pass
            if not o.keep:
                self.lab.down()
        return self._report()

    def _up(self) -> None:
        o = self.opts
        self.say(f"seed {o.seed}: {len(self.schedule)} faults; bringing up lab '{o.name}' "
                 "with the etcd arbiter and colo-proxy")
        self.lab.up(secondary="incoming", disk=o.disk)
        t0 = time.monotonic()
        self.rec = Recorder(o.out / "history.jsonl", t0)
        self.rec.write({"type": "campaign", "seed": o.seed, "faults": o.faults,
                        "workloads": list(o.workloads), "schedule": [
                            {"kind": p.kind, "target": p.target, "duration_s": p.duration_s,
                             "gap_s": p.gap_s, **p.params} for p in self.schedule],
                        "reprotect_bound_s": o.reprotect_bound_s, "settle_s": checker.SETTLE_S,
                        "disk": o.disk,
                        "commit": _commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                   time.gmtime())})
        pair.protect(self.lab, proxy=True, arbiter="etcd", say=self.say)
        self.states = StateSampler(self.lab, self.rec)
        wait_until(lambda: _protected(self.rec.latest) if self.rec else False, 30,
                   "the state sampler to see PROTECTED")
        self.rec.write({"type": "protected"})
        self.mac = _Mac(self.rec, self.lab)
        wait_until(self.mac.ready.is_set, 15, "the MAC sampler to start")
        for w in o.workloads:
            for kind, proc, host in CLIENTS[w]:
                c = _Client(self.rec, proc, self.lab.client_ns, kind, "--proc", proc,
                            "--t0", repr(t0), "--host", host)
                self.clients.append(c)
        wait_until(lambda: all(c.count >= 2 for c in self.clients), 60,
                   "every workload client to complete a request",
                   detail=lambda: str({c.name: c.count for c in self.clients}))
        self.say(f"workloads running: {', '.join(o.workloads)}")

    def _one(self, p: Planned) -> bool:
        rec = self.rec
        assert rec is not None
        settle = time.monotonic() + p.gap_s
        wait_until(lambda: time.monotonic() >= settle, p.gap_s + 5, "the gap before a fault")
        latest = dict(rec.latest)
        host = _host_of(latest, p.target)
        where = f" on {host}" if host else ""
        rec.write({"type": "fault", "phase": "start", "id": p.index, "kind": p.kind,
                   "target": p.target, "host": host,
                   "params": {"duration_s": p.duration_s, **p.params}})
        t_start = time.monotonic()
        try:
            self._time(p, latest)
            heal = self.injector.inject(p, host)
        except LabError as exc:
            # The fault could not be put in (say, no proxy ran at that moment): the
            # history says so, and recovery is still awaited.
            rec.write({"type": "fault", "phase": "error", "id": p.index, "error": str(exc)})
            self.say(f"could not inject {p.kind} {p.target}: {exc}")
            heal = None
        if p.duration_s:
            end = t_start + p.duration_s
            wait_until(lambda: time.monotonic() >= end, p.duration_s + 5, "the fault's length")
        if heal is not None:
            try:
                heal()
            except (LabError, OSError, subprocess.SubprocessError) as exc:
                # Recorded, and the recovery wait below says whether the pair came back.
                rec.write({"type": "fault", "phase": "error", "id": p.index,
                           "error": f"healing: {exc}"})
                self.say(f"could not heal {p.kind} {p.target}: {exc}")
        rec.write({"type": "fault", "phase": "end", "id": p.index})
        t_end = time.monotonic()
        recovery = Recovery(t_end)
        seen = [0.0]  # the sample last given to recovery

        def back() -> bool:
            self.injector.reap()
            at, latest = rec.latest_at, rec.latest
            if at == seen[0]:
                return False
            seen[0] = at
            return recovery.see(at, latest)

        ok = True
        try:
            wait_until(back, RECOVER_WAIT_S + STABLE_S, "both hosts PROTECTED again",
                       every=0.1)
        except LabError:
            ok = False
        back_at = recovery.since if ok and recovery.since is not None else time.monotonic()
        took = back_at - t_end
        rec.write({"type": "recovered", "id": p.index, "ok": ok, "waited_s": round(took, 3),
                   "t": round(back_at - rec.t0, 4)})
        if ok and self.opts.disk:
            rec.write({"type": "disk", "id": p.index, **verify_disks(self.lab, rec.latest)})
        self.say(f"[{p.index + 1}/{len(self.schedule)}] {p.kind} {p.target}{where} "
                 f"({p.duration_s:.1f} s{_params(p)}): "
                 + (f"PROTECTED again {took:.1f} s after" if ok else
                    f"NOT PROTECTED {took:.0f} s after: {latest_states(rec)}"))
        return ok

    def _time(self, p: Planned, latest: dict[str, dict[str, Any] | None]) -> None:
        """Bring the pair to the moment the fault is timed for (schedule.WHEN)."""
        when = p.params.get("when", "steady")
        if when == "steady":
            return
        pvm = _host_of(latest, "pvm")
        if when == "checkpoint":
            # The API answers once the loop has the request; the checkpoint (50-200 ms
            # under TCG) starts at the loop's next cycle, so the fault that follows at
            # once lands in it or just before it.
            pair.api(self.lab, pvm, "POST", "/checkpoint")
            return
        # Re-protection: the SVM's QEMU dies, the primary serves ALONE, the secondary host
        # starts a new SVM and the primary migrates into it (WAITING, then SYNCING).
        pair.kill_vm(self.lab, _host_of(latest, "svm"))
        wait_until(lambda: pair.state(self.lab, pvm, timeout=2).get("state") in
                   ("WAITING", "SYNCING"), 60, "the re-protection to begin", every=0.02)

    def _stop_workloads(self, read_back: bool = True) -> None:
        for c in self.clients:
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM if read_back else signal.SIGKILL)
        for c in self.clients:
            # The kv client reads every acknowledged key back before it exits.
            try:
                c.proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(timeout=10)
            c._reader.join(timeout=10)
        if self.mac is not None:
            self.mac.stop()
        if self.states is not None:
            self.states.stop()

    def _report(self) -> int:
        path = self.opts.out / "history.jsonl"
        if not path.exists():
            return 2
        return report(path, self.opts.reprotect_bound_s, write=True)


def report(path: Path, reprotect_bound_s: float | None = None, *, write: bool = False) -> int:
    """Check a history file and print its table; 1 on any violation. write: also put
    table.md and violations.txt beside it."""
    h = history.parse(history.read(path))
    bound = (reprotect_bound_s if reprotect_bound_s is not None
             else float(h.header.get("reprotect_bound_s", checker.REPROTECT_BOUND_S)))
    vs = checker.check(h, checker.prefix_digest(pattern()), reprotect_bound_s=bound)
    text = checker.render(checker.table(h, vs), vs)
    if write:
        (path.parent / "table.md").write_text(text + "\n")
        (path.parent / "violations.txt").write_text(
            "".join(f"{v.t:.3f} {v.invariant}: {v.detail}\n" for v in vs))
    ops = sum(1 for x in h.ops if x.outcome == "ok")
    print(text)
    print(f"seed {h.header.get('seed')}; commit {h.header.get('commit')}; "
          f"{h.header.get('date')}; {len(h.faults)} faults; {ops} client operations "
          f"acknowledged; {len(vs)} violations; history {path}")
    for v in vs[:20]:
        print(f"  {v.t:9.3f} s  {v.invariant}: {v.detail}")
    return 1 if vs else 0


def verify_disks(lab: Lab, latest: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """`coloctl disk verify` of the primary's image against the secondary's, as the
    operator would run it (docs/DISKS.md): {equal: true/false/None, message}. It re-reads
    a range that differs for its settle time, so writes in flight under the kv load do
    not count as a difference."""
    pri = _host_of(latest, "pvm")
    sec = next(h for h in HOSTS if h != pri)
    argv = [sys.executable, "-m", "colo_orch.cli.ctl", "disk", "verify", "--json",
            lab.disks(pri)[0].image, lab.disks(sec)[0].image]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        got = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"equal": None, "message": f"{exc!r}"}
    if "equal" not in got:
        return {"equal": None, "message": str(got.get("error", got))}
    return {"equal": bool(got["equal"]), "message": str(got.get("message", "")),
            "primary": pri}


def latest_states(rec: Recorder) -> str:
    return json.dumps({h: (s or {}).get("state") for h, s in rec.latest.items()})


def _params(p: Planned) -> str:
    return "".join(f", {k} {v}" for k, v in p.params.items())


def _commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=5,
                              check=False).stdout.strip()
    except OSError:
        return ""
