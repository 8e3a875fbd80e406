"""`coloctl`: operate a COLO pair through an orchestrator's HTTP API."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

EPILOG = """\
examples:
  coloctl --config /etc/colo/web1.toml status     address and token from the orchestrator's config
  coloctl --config /etc/colo/web1.toml failover   secondary: take over; primary: drop the secondary
  coloctl --url http://10.0.0.1:7411 status --json
  COLO_API_TOKEN=$(cat token) coloctl --url https://10.0.0.1:7411 --cacert ca.pem checkpoint
  coloctl --socket /run/colo/web1-api.sock pause  as root (or an api_socket_uids user): no token
  coloctl checkpoint | pause | resume | reprotect take a checkpoint now; suspend / resume
                                                  comparison; pair again after a failover
  coloctl --config /etc/colo/web1.toml pause --wait --timeout 30
                                         wait until the loop acted on it (or dropped it)
  coloctl --config /etc/colo/web1.toml switchover --wait --timeout 120
                                         on the primary: swap the roles (asks first;
                                         --force does not), wait until the pair is
                                         protected again with the other host primary
  coloctl disk prepare|verify ...        replicated disk images (coloctl disk -h)
  coloctl list --etcd http://10.0.0.5:2379 every pair and host in etcd (coloctl list -h)
  coloctl import-libvirt web > web-vm.toml  a libvirt domain's vm_command and [[disks]]
                                         (coloctl import-libvirt -h)

A command that does not apply to the host now (pause on a secondary, resume when not
paused, switchover unless the pair is protected and its secondary ready, ...) is refused
with the reason and exit status 1; an accepted one shows under
"commands" in status until the loop acts on it. Exit status: 0 done (or accepted, without
--wait), 1 refused or dropped, 2 usage or connection error, 3 --wait timed out.

Where it connects: --socket, else --url, else $COLOCTL_URL, else the config's api_socket,
else its api_listen (https:// when it sets api_tls_cert_file), else
http://127.0.0.1:7411. Commands need a
token (status does not): --token-file FILE, else $COLO_API_TOKEN (the token itself), else
the config's api_token_file. Token files must be mode 0600. Over api_socket, root needs none.
"""
COMMANDS = ("status", "checkpoint", "failover", "pause", "resume", "reprotect",
            "switchover")
DEFAULT_URL = "http://127.0.0.1:7411"
TOKEN_ENV = "COLO_API_TOKEN"
URL_ENV = "COLOCTL_URL"
WAIT_EVERY_S = 0.2


class CtlError(Exception):
    """What keeps coloctl from asking: str() names the option and the fix."""


@dataclass(frozen=True)
class Target:
    url: str = ""  # http(s)://HOST:PORT, or "" with socket
    socket: str = ""
    token: bytes = b""
    cacert: str = ""  # https: the CA file; or, from a config, the server's own certificate
    pinned: bool = False  # cacert is the server's certificate itself, not a CA's


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def _connect_host(listen: str) -> str:
    """Where to reach a listener bound at `listen` from this host."""
    host = listen.rsplit(":", 1)[0]
    return {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)


def target(args: argparse.Namespace, env: dict[str, str]) -> Target:
    """Where to send and with what token, from the options, the environment and the
    orchestrator's config (in that order)."""
    from colo_orch.core.api import check_token
    from colo_orch.core.config import ConfigError, load
    from colo_orch.daemon.api import ApiError, read_token

    cfg = None
    if args.config:
        try:
            cfg = load(args.config)
        except ConfigError as exc:
            raise CtlError(f"--config: {exc}") from exc
    try:
        if args.token_file:
            token = read_token(args.token_file, "--token-file")
        elif env.get(TOKEN_ENV):
            token = env[TOKEN_ENV].strip().encode(errors="replace")
            problem = check_token(token)
            if problem is not None:
                raise CtlError(f"${TOKEN_ENV}: {problem}; set it to the token of the "
                               "orchestrator's api_token_file")
        elif cfg is not None and cfg.api_token_file:
            token = read_token(cfg.api_token_file)
        else:
            token = b""
    except ApiError as exc:
        raise CtlError(str(exc)) from exc
    if args.socket or args.url:
        return Target(url=args.url or "", socket=args.socket or "", token=token,
                      cacert=args.cacert or "")
    if env.get(URL_ENV):
        return Target(url=env[URL_ENV], token=token, cacert=args.cacert or "")
    if cfg is not None and cfg.api_socket:
        return Target(socket=cfg.api_socket, token=token)
    if cfg is not None and cfg.api_listen:
        tls = bool(cfg.api_tls_cert_file)
        url = f"{'https' if tls else 'http'}://{_connect_host(cfg.api_listen)}:" \
              f"{cfg.api_listen.rsplit(':', 1)[1]}"
        if tls and not args.cacert:
            return Target(url=url, token=token, cacert=cfg.api_tls_cert_file, pinned=True)
        return Target(url=url, token=token, cacert=args.cacert or "")
    return Target(url=DEFAULT_URL, token=token, cacert=args.cacert or "")


def _connection(t: Target, timeout: float) -> http.client.HTTPConnection:
    if t.socket:
        return _UnixConnection(t.socket, timeout)
    u = urlsplit(t.url)
    if u.scheme not in ("http", "https") or not u.hostname or u.port is None:
        raise CtlError(f"--url {t.url!r} is not http(s)://HOST:PORT")
    if u.scheme == "http":
        return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    ctx = ssl.create_default_context(cafile=t.cacert or None)
    if t.pinned:
        # The config's api_tls_cert_file: trusted as it is, whether a CA signed it or not.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout, context=ctx)


def call(t: Target, method: str, path: str, timeout: float = 5.0) -> tuple[int, Any]:
    """One request: (status, the decoded JSON answer)."""
    conn = _connection(t, timeout)
    headers = {"Content-Length": "0"} if method == "POST" else {}
    if t.token:
        headers["Authorization"] = f"Bearer {t.token.decode()}"
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw or b"{}")
    except ValueError:
        return resp.status, {"error": raw[:200].decode(errors="replace")}


def build_parser() -> argparse.ArgumentParser:
    """coloctl's own commands (disk, list and import-libvirt have parsers of their own)."""
    p = argparse.ArgumentParser(prog="coloctl", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE",
                   help="the orchestrator's config: its API address and token file")
    p.add_argument("--url", help=f"orchestrator API (default {DEFAULT_URL})")
    p.add_argument("--socket", metavar="PATH", help="the orchestrator's api_socket")
    p.add_argument("--token-file", metavar="FILE",
                   help=f"the API token (mode 0600); default ${TOKEN_ENV}, then --config's")
    p.add_argument("--cacert", metavar="FILE", help="https: the CA of the API's certificate")
    p.add_argument("command", choices=COMMANDS, metavar="command",
                   help=" | ".join(COMMANDS))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--wait", action="store_true",
                   help="after a command: wait until the orchestrator acted on it or dropped it")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="with --wait: give up after S seconds (default 60; exit status 3)")
    p.add_argument("--force", action="store_true",
                   help="switchover: do not ask for confirmation")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["disk"]:  # local image work: no orchestrator needed
        from colo_orch.cli.disk import main as disk_main

        return disk_main(argv[1:])
    if argv[:1] == ["list"]:  # the fleet, from etcd: no orchestrator needed
        from colo_orch.cli.fleet import main as list_main

        return list_main(argv[1:])
    if argv[:1] == ["import-libvirt"]:  # a libvirt domain's XML: no orchestrator needed
        from colo_orch.cli.libvirt import main as import_main

        return import_main(argv[1:])
    p = build_parser()
    args = p.parse_args(argv)
    if args.timeout <= 0:
        p.error("--timeout must be more than 0 seconds")
    try:
        t = target(args, dict(os.environ))
        if args.command == "status":
            code, body = call(t, "GET", "/state")
        elif args.command == "switchover" and not args.force and not _confirmed(t):
            print("coloctl: switchover not confirmed; nothing done (--force skips the "
                  "question)", file=sys.stderr)
            return 1
        if args.command != "status":
            code, body = call(t, "POST", f"/{args.command}")
            if args.wait and code == 202:
                return _wait(t, args, body)
    except CtlError as exc:
        print(f"coloctl: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, http.client.HTTPException) as exc:
        where = t.socket or t.url
        print(f"coloctl: error: cannot reach the orchestrator at {where}: {exc}; "
              "is colo-orch running? (--config, --url or --socket to point elsewhere)",
              file=sys.stderr)
        return 2
    if code in (401, 403):
        print(f"coloctl: error: refused ({code}): {body.get('error')}; give the token with "
              f"--config FILE, ${TOKEN_ENV} or --token-file", file=sys.stderr)
        return 1
    if code == 409:
        print(f"coloctl: {args.command} refused: {body.get('error')} (state "
              f"{body.get('state', '?')})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=1))
    elif args.command == "status":
        print(status_table(body))
        print()
        print(f"{body['name']} on {body['host']}: {body['state']} ({body['role']})")
        vm = body["vm"]
        print(f"  vm: {'reachable' if vm['reachable'] else 'UNREACHABLE'}, status "
              f"{vm['status'] or '-'}, migration {vm['migration']}, colo {vm['colo_mode']}")
        peer = body.get("peer") or {}
        print(f"  peer: {'seen ' + str(body['peer_seen_s_ago']) + ' s ago' if peer else 'never seen'}"
              f"{', role ' + peer.get('role', '') if peer else ''}")
        cps = body["checkpoints"]
        print(f"  checkpoints: {sum(cps.values())} "
              f"({', '.join(f'{k} {v}' for k, v in sorted(cps.items())) or 'none'})")
        print(f"  failovers: {body['failovers']}, re-protections: {body['reprotections']}")
        lease = f"held by {body.get('lease_holder') or 'nobody'}"
        if body.get("lease_reachable") is False:
            lease += ", the arbiter's store does not answer"
        if body.get("lease_error"):
            lease += f" ({body['lease_error']})"
        print(f"  lease: {lease}")
        if body.get("degraded_reason"):
            print(f"  degraded: {body['degraded_reason']}")
        for c in (body.get("commands") or {}).get("pending", []):
            phase = f": {c['phase']}" if c.get("phase") else ""
            print(f"  pending: {c['command']} (id {c['id']}, {c['age_s']:.1f} s ago){phase}")
    else:
        print(body.get("accepted") or body.get("error"))
    return 0 if code < 400 else 1


# colo_orch.core.state.State's numbers, as the peer's heartbeat carries them; names only
# for display (an unknown number shows as itself).
def _state_name(code: object) -> str:
    from colo_orch.core.state import State

    try:
        return State(code).name if isinstance(code, int) else "?"
    except ValueError:
        return str(code)


def status_table(st: dict[str, Any]) -> str:
    """Both hosts of the pair, as this orchestrator sees them (like `patronictl list`): its
    own row from its state, the peer's from the peer's last heartbeat."""
    holder = st.get("lease_holder") or ""
    me = {"host": st.get("host", "?") + "*", "role": st.get("role", ""),
          "state": st.get("state", "?"),
          "lease": "held" if holder and holder == st.get("host") else "-",
          "checkpoint": _age(st.get("last_checkpoint_age_s")),
          "proxy": _proxy(st.get("proxy")), "disks": (st.get("disk") or {}).get("state", "-"),
          "sync": ((st.get("sync") or {}).get("text")
                   or (st.get("vm") or {}).get("migration", "-"))}
    rows = [me]
    peer = st.get("peer")
    if peer:
        rows.append({"host": str(peer.get("host", "peer")), "role": str(peer.get("role", "")),
                     "state": _state_name(peer.get("state")),
                     "lease": "held" if holder and holder == peer.get("host") else "-",
                     "checkpoint": _age(peer.get("checkpoint_age_s")),
                     "proxy": _proxy({"connected": bool(peer.get("proxy_role")),
                                      "role": peer.get("proxy_role", ""),
                                      "mode": peer.get("proxy_mode", "")}),
                     "disks": str(peer.get("disk") or "-"), "sync": "-"})
    else:
        rows.append({"host": "(peer)", "role": "", "state": "never heard", "lease": "-",
                     "checkpoint": "-", "proxy": "-", "disks": "-", "sync": "-"})
    heard = st.get("peer_seen_s_ago")
    title = (f"pair {st.get('name', '?')}: "
             f"{'protection verified' if st.get('protection_verified') else 'NOT protected'}"
             f", lease {'held by ' + holder if holder else 'free'}"
             f"{'' if heard is None else f', peer heard {heard:.1f} s ago'}")
    cols = [("HOST", "host"), ("ROLE", "role"), ("STATE", "state"), ("LEASE", "lease"),
            ("LAST CHECKPOINT", "checkpoint"), ("PROXY", "proxy"), ("DISKS", "disks"),
            ("SYNC", "sync")]
    widths = [max(len(h), *(len(str(r[k])) for r in rows)) for h, k in cols]
    lines = [title, "  ".join(h.ljust(w) for (h, _), w in zip(cols, widths, strict=True))]
    for r in rows:
        lines.append("  ".join(str(r[k]).ljust(w) for (_, k), w in zip(cols, widths,
                                                                       strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def _age(seconds: object) -> str:
    return f"{seconds:.1f} s ago" if isinstance(seconds, int | float) else "-"


def _proxy(view: object) -> str:
    if not isinstance(view, dict):
        return "none"
    if not view.get("connected"):
        return "DISCONNECTED"
    return f"{view.get('role') or '?'}, {view.get('mode') or '?'}"


def _confirmed(t: Target) -> bool:
    """Patroni's `switchover` asks first: show the pair and what would change, and read a
    yes. A host that could not switch over is not asked: its refusal (409) says why."""
    code, st = call(t, "GET", "/state")
    if code != 200 or st.get("role") != "primary" or st.get("state") not in (
            "PROTECTED", "CHECKPOINTING"):
        return True
    peer = (st.get("peer") or {}).get("host", "the secondary")
    print(status_table(st))
    print(f"\nSwitch over pair {st.get('name', '?')}: {peer} becomes the primary and "
          f"{st.get('host', 'this host')} re-joins as its secondary (clients wait for a "
          "checkpoint and a take-over).")
    try:
        answer = input("Are you sure? [y/N] ")
    except EOFError:
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


def _wait(t: Target, args: argparse.Namespace, accepted: dict[str, Any]) -> int:
    """Poll GET /state until the accepted command's outcome shows, or --timeout."""
    cid = accepted.get("id")
    if not isinstance(cid, int):
        print("coloctl: error: the orchestrator gave the command no id (an older "
              "colo-orch?); cannot --wait", file=sys.stderr)
        return 2
    if not args.json:
        print(f"{accepted.get('accepted')} (id {cid}); waiting up to {args.timeout:g} s",
              flush=True)
    deadline = time.monotonic() + args.timeout
    phase = ""
    while True:
        code, st = call(t, "GET", "/state")
        found = [c for c in (st.get("commands") or {}).get("recent", []) if c.get("id") == cid]
        under_way = [c for c in (st.get("commands") or {}).get("pending", [])
                     if c.get("id") == cid and c.get("phase")]
        if under_way and under_way[0]["phase"] != phase and not args.json:
            # A switchover acted on and still under way: each step as it comes.
            phase = under_way[0]["phase"]
            print(f"  {phase}", flush=True)
        if code == 200 and found:
            c = found[0]
            if args.json:
                print(json.dumps(c, indent=1))
            else:
                print(f"{c['command']} {c['outcome']}: {c['detail']} (state {st['state']})")
            return 0 if c["outcome"] == "done" else 1
        if time.monotonic() >= deadline:
            print(f"coloctl: {args.command} (id {cid}) still pending after {args.timeout:g} s "
                  f"(state {st.get('state', '?')}{'; ' + phase if phase else ''})",
                  file=sys.stderr)
            return 3
        time.sleep(WAIT_EVERY_S)  # polling an HTTP API: the wait is on the orchestrator


if __name__ == "__main__":
    sys.exit(main())
