"""Real etcd servers for tests and the lab: a cluster of member processes on given IPs.

`start_cluster(run_dir, ["e0", "e1", "e2"])` starts a three-member cluster on
127.0.0.1 with free ports; `start_single(run_dir)` one member. Each member's data
directory and log live under `run_dir/etcd/<name>/`. Members can run in network
namespaces (`prefix=["ip", "netns", "exec", NS]`) on the IPs given, so that a test can
cut a host off from some or all of them. `kill` and `start` take one member down and
up again with its data, as a crashed and restarted server.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from colo_lab.cmd import need
from colo_lab.errors import LabError
from colo_lab.wait import wait_until

START_TIMEOUT_S = 20.0


def free_port(ip: str = "127.0.0.1") -> int:
    """A TCP port free on `ip` now (the kernel's choice; another process could take it)."""
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def _url(scheme: str, ip: str, port: int) -> str:
    return f"{scheme}://[{ip}]:{port}" if ":" in ip else f"{scheme}://{ip}:{port}"


@dataclass
class Member:
    """One etcd server: its name, where it listens and its process."""

    name: str
    ip: str
    client_port: int
    peer_port: int
    dir: Path
    prefix: list[str] = field(default_factory=list)  # argv prefix, e.g. ip netns exec NS
    scheme: str = "http"  # of the client URL ("https" with TLS flags in extra args)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return _url(self.scheme, self.ip, self.client_port)

    @property
    def peer_url(self) -> str:
        return _url("http", self.ip, self.peer_port)

    @property
    def log(self) -> Path:
        return self.dir / "etcd.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """Members started together; `endpoints` are their client URLs."""

    def __init__(self, members: list[Member], extra_args: Sequence[str] = (),
                 ctl_args: Sequence[str] = ()) -> None:
        self.members = {m.name: m for m in members}
        self.extra_args = list(extra_args)
        self.ctl_args = list(ctl_args)  # e.g. TLS flags for etcdctl

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members.values()]

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members.values())

    def start(self, name: str, *, wait: bool = True) -> None:
        """Start member `name` (again, with its data, if it ran before)."""
        m = self.members[name]
        if m.running:
            return
        m.dir.mkdir(parents=True, exist_ok=True)
        data = m.dir / "data"
        argv = [*m.prefix, need("etcd"),
                "--name", m.name, "--data-dir", str(data),
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", self._initial_cluster(),
                "--initial-cluster-state", "existing" if data.exists() else "new",
                "--initial-cluster-token", f"colo-{id(self):x}",
                "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h",
                *self.extra_args]
        with m.log.open("ab") as log:
            m.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_healthy([name])

    def wait_healthy(self, names: Sequence[str] | None = None,
                     timeout: float = START_TIMEOUT_S) -> None:
        for name in names or list(self.members):
            m = self.members[name]

            def healthy(m: Member = m) -> bool:
                if not m.running:
                    raise LabError(f"etcd member {m.name} exited: {_tail(m.log)}",
                                   f"see {m.log}")
                try:
                    res = self.ctl(["endpoint", "health"], endpoints=[m.client_url],
                                   prefix=m.prefix, check=False, timeout=5)
                except LabError:
                    # Measured in CI: a member restarted beside a lagging one answered no
                    # health check within 5 s for a while. Not healthy yet, not dead: the
                    # wait's own deadline decides.
                    return False
                return res.returncode == 0

            wait_until(healthy, timeout, f"etcd member {m.name} at {m.client_url} healthy",
                       every=0.1, detail=functools.partial(_tail, m.log))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill member `name` (SIGKILL: a crash) and wait for it to exit."""
        m = self.members[name]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(sig)
            try:
                m.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(timeout=10)
        m.proc = None

    def stop(self) -> None:
        """Stop every member (their data stays under run_dir)."""
        for name in self.members:
            self.kill(name, signal.SIGTERM)

    def _member_ids(self) -> tuple[dict[str, int], int]:
        """Each running member's raft id, and the id of the leader they agree on."""
        res = self.ctl(["endpoint", "status", "-w", "json"],
                       endpoints=[m.client_url for m in self.members.values() if m.running])
        ids, leaders = {}, set()
        by_url = {m.client_url: name for name, m in self.members.items()}
        for st in json.loads(res.stdout):
            ids[by_url[st["Endpoint"]]] = int(st["Status"]["header"]["member_id"])
            leaders.add(int(st["Status"]["leader"]))
        if len(leaders) != 1:
            raise LabError(f"etcd members disagree on the leader: {sorted(leaders)}",
                           "wait until the cluster is healthy")
        return ids, leaders.pop()

    def leader(self) -> str:
        """The name of the member that leads the cluster now."""
        ids, lead = self._member_ids()
        return next(name for name, i in ids.items() if i == lead)

    def move_leader(self, to: str) -> None:
        """Hand the leadership to member `to` (etcdctl move-leader, sent to the leader)."""
        ids, lead = self._member_ids()
        if ids[to] == lead:
            return
        self.ctl(["move-leader", f"{ids[to]:x}"], endpoints=[self.members[self.leader()].client_url])

        def led() -> bool:
            try:
                return self.leader() == to
            except LabError:
                return False  # the members disagree while the leadership moves: not yet

        wait_until(led, 10, f"etcd member {to} to lead")

    def ctl(self, args: Sequence[str], *, endpoints: Sequence[str] | None = None,
            prefix: Sequence[str] | None = None, user: str = "", check: bool = True,
            timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run etcdctl (v3 API) against `endpoints` (default: all members), with the argv
        `prefix` (default: the first member's, e.g. to run it in that namespace)."""
        eps = ",".join(endpoints or self.endpoints)
        if prefix is None:
            prefix = next(iter(self.members.values())).prefix
        argv = [*prefix, need("etcdctl"), f"--endpoints={eps}", *self.ctl_args]
        if user:
            argv.append(f"--user={user}")
        argv += list(args)
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                 check=False, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"etcdctl {' '.join(args)} took over {timeout:.0f} s",
                           "is the cluster up?") from exc
        if check and res.returncode != 0:
            raise LabError(f"etcdctl {' '.join(args)} failed: {res.stderr.strip()[-300:]}",
                           "see the members' logs")
        return res

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path, n: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def start_cluster(run_dir: Path, names: Sequence[str] = ("etcd0", "etcd1", "etcd2"), *,
                  ips: Sequence[str] | None = None, client_ports: Sequence[int] | None = None,
                  peer_ports: Sequence[int] | None = None,
                  prefixes: Sequence[Sequence[str]] | None = None, scheme: str = "http",
                  extra_args: Sequence[str] = (), ctl_args: Sequence[str] = (),
                  fresh: bool = True) -> EtcdCluster:
    """Start an etcd cluster of members `names` and wait until each is healthy.

    `ips` (default 127.0.0.1 for all), ports (default: free ones, found on the root
    namespace's loopback when not given) and argv `prefixes` are per member. With
    `fresh`, earlier data under run_dir/etcd/ is removed first.
    """
    n = len(names)
    ips = list(ips or ["127.0.0.1"] * n)
    cports = list(client_ports or [free_port(ip) for ip in ips])
    pports = list(peer_ports or [free_port(ip) for ip in ips])
    pre = [list(p) for p in (prefixes or [[]] * n)]
    if not (len(ips) == len(cports) == len(pports) == len(pre) == n):
        raise LabError("start_cluster: ips, ports and prefixes need one entry per member",
                       "give as many as names")
    base = Path(run_dir) / "etcd"
    if fresh and base.exists():
        shutil.rmtree(base)
    members = [Member(name, ip, c, p, base / name, px, scheme)
               for name, ip, c, p, px in zip(names, ips, cports, pports, pre, strict=True)]
    cluster = EtcdCluster(members, extra_args, ctl_args)
    try:
        for name in names:
            cluster.start(name, wait=False)
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_single(run_dir: Path, name: str = "etcd0", *, ip: str = "127.0.0.1",
                 prefix: Sequence[str] = (), scheme: str = "http",
                 extra_args: Sequence[str] = (), ctl_args: Sequence[str] = ()) -> EtcdCluster:
    """One etcd member (see start_cluster)."""
    return start_cluster(run_dir, [name], ips=[ip], prefixes=[prefix], scheme=scheme,
                         extra_args=extra_args, ctl_args=ctl_args)
