"""`coloctl`: operate a COLO pair through an orchestrator's HTTP API."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

EPILOG = """\
examples:
  coloctl status                         state of the local orchestrator
  coloctl --url http://10.0.0.1:7411 status --json
  coloctl checkpoint                     take a checkpoint now
  coloctl failover                       secondary: take over; primary: drop the secondary
  coloctl pause | resume                 suspend / resume output comparison
  coloctl reprotect                      pair again after a failover
  coloctl disk prepare|verify ...        replicated disk images (coloctl disk -h)
  coloctl list --etcd http://10.0.0.5:2379 every pair and host in etcd (coloctl list -h)
"""
COMMANDS = ("status", "checkpoint", "failover", "pause", "resume", "reprotect")


def _call(url: str, method: str, path: str) -> tuple[int, Any]:
    req = urllib.request.Request(url.rstrip("/") + path, method=method,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["disk"]:  # local image work: no orchestrator needed
        from colo_orch.cli.disk import main as disk_main

        return disk_main(argv[1:])
    if argv[:1] == ["list"]:  # the fleet, from etcd: no orchestrator needed
        from colo_orch.cli.fleet import main as list_main

        return list_main(argv[1:])
    p = argparse.ArgumentParser(prog="coloctl", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:7411", help="orchestrator API")
    p.add_argument("command", choices=COMMANDS, metavar="command",
                   help=" | ".join(COMMANDS))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    try:
        if args.command == "status":
            code, body = _call(args.url, "GET", "/state")
        else:
            code, body = _call(args.url, "POST", f"/{args.command}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"coloctl: error: cannot reach the orchestrator at {args.url}: {reason}; "
              "is colo-orch running? (--url to point elsewhere)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(body, indent=1))
    elif args.command == "status":
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
    else:
        print(body.get("accepted") or body.get("error"))
    return 0 if code < 400 else 1


if __name__ == "__main__":
    sys.exit(main())
