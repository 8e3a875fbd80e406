"""`coloctl list`: every pair and host under an etcd prefix, like `patronictl list`.

The lease holder is the pair's leader key (the truth), not what a host believes; a host
that believes otherwise is shown with its belief. Ages are those each host measured
when it published (at most about a second before), never a difference of two clocks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any

from colo_orch.core.fleet import BadMember, Member, Pair, group

EPILOG = """\
examples:
  coloctl list --etcd http://10.0.0.5:2379,http://10.0.0.6:2379
  coloctl list --etcd https://etcd1:2379 --ca-file /etc/colo/etcd-ca.pem \\
               --cert-file /etc/colo/client.pem --key-file /etc/colo/client.key
  coloctl list --etcd http://10.0.0.5:2379 --user colo --password-file /etc/colo/etcd.pw
  coloctl list --etcd http://10.0.0.5:2379 --prefix /colo --json

A "*" marks the host that holds its pair's lease (the leader key). Exit status: 0 listed,
1 nothing under the prefix, 2 etcd unreachable, credentials refused or bad options.
"""

COLUMNS = ("PAIR", "HOST", "ROLE", "STATE", "LEASE HOLDER", "CHECKPOINT", "HEARTBEAT",
           "PROXY", "API")


def age(s: float | None) -> str:
    """A duration for people: 0.4s, 42s, 3m05s, 2h07m; "-" for none."""
    if s is None:
        return "-"
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    m = int(s // 60)
    if m < 60:
        return f"{m}m{int(s % 60):02d}s"
    return f"{m // 60}h{m % 60:02d}m"


def rows(pairs: list[Pair]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for p in pairs:
        holder = p.leader or "none"
        if not p.members:
            out.append((p.name, "-", "-", "no host publishes", holder, "-", "-", "-", "-"))
        for m in p.members:
            mark = "*" if p.leader is not None and m.host == p.leader else ""
            if isinstance(m, BadMember):
                out.append((p.name, m.host + mark, "?", f"BAD RECORD: {m.error}", holder,
                            "-", "-", "-", "-"))
                continue
            sees = "" if m.lease_holder == p.leader else f" (sees {m.lease_holder or 'none'})"
            out.append((p.name, m.host + mark, m.role, m.state, holder + sees,
                        age(m.checkpoint_age_s), age(m.heartbeat_age_s), m.proxy or "-", m.api))
    return out


def table(pairs: list[Pair]) -> str:
    body = rows(pairs)
    widths = [max(len(r[i]) for r in [COLUMNS, *body]) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [COLUMNS, *body]]
    return "\n".join(lines) + "\n"


def as_json(prefix: str, pairs: list[Pair]) -> dict[str, Any]:
    def member(m: Member | BadMember, leader: str | None) -> dict[str, Any]:
        d = asdict(m)
        if isinstance(m, BadMember):
            d["bad"] = True
        d["leader"] = leader is not None and m.host == leader
        return d

    return {"prefix": prefix,
            "pairs": [{"pair": p.name, "lease_holder": p.leader,
                       "members": [member(m, p.leader) for m in p.members]} for p in pairs]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coloctl list", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--etcd", required=True, metavar="ENDPOINTS",
                   help="etcd client URLs, comma-separated (as etcd_endpoints)")
    p.add_argument("--prefix", default="/colo", help="as etcd_prefix (default /colo)")
    p.add_argument("--ca-file", default="", help="as etcd_ca_file")
    p.add_argument("--cert-file", default="", help="as etcd_cert_file (with --key-file)")
    p.add_argument("--key-file", default="", help="as etcd_key_file")
    p.add_argument("--user", default="", help="as etcd_user (with --password-file)")
    p.add_argument("--password-file", default="", help="as etcd_password_file (mode 0600)")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="seconds to wait for each endpoint (default 2)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


# The arbiter's messages name the config's fields; here the options stand for them.
_OPTIONS = {"etcd_password_file": "--password-file", "etcd_user": "--user",
            "etcd_cert_file": "--cert-file", "etcd_key_file": "--key-file",
            "etcd_ca_file": "--ca-file"}


def _options(msg: str) -> str:
    for field, option in _OPTIONS.items():
        msg = msg.replace(field, option)
    return msg


def main(argv: list[str]) -> int:
    from colo_orch.daemon.etcd_arbiter import (
        EtcdClient,
        EtcdConfigError,
        EtcdError,
        EtcdSettings,
        read_password_file,
    )

    parser = build_parser()
    args = parser.parse_args(argv)
    endpoints = tuple(e.strip() for e in args.etcd.split(",") if e.strip())
    for e in endpoints:
        scheme, _, rest = e.partition("://")
        if scheme not in ("http", "https") or not rest.rsplit(":", 1)[-1].strip("/").isdigit():
            parser.error(f"--etcd: {e!r} is not http(s)://HOST:PORT")
    if not endpoints:
        parser.error("--etcd: give at least one http(s)://HOST:PORT")
    if bool(args.cert_file) != bool(args.key_file):
        parser.error("--cert-file and --key-file go together: give both or neither")
    for option in ("ca_file", "cert_file", "key_file"):
        f = getattr(args, option)
        if f and not os.access(f, os.R_OK):
            parser.error(f"--{option.replace('_', '-')} {f}: cannot be read; give the path "
                         "of the PEM file")
    prefix = "/" + args.prefix.strip("/")
    try:
        password = (read_password_file(args.password_file, "--password-file", "--user")
                    if args.password_file else "")
    except EtcdConfigError as exc:
        print(f"coloctl: error: {exc}", file=sys.stderr)
        return 2
    if args.user and not password:
        parser.error("--user needs --password-file")
    settings = EtcdSettings(endpoints=endpoints, prefix=prefix, ca_file=args.ca_file,
                            cert_file=args.cert_file, key_file=args.key_file, user=args.user,
                            password=password)
    client = EtcdClient(settings, request_timeout=args.timeout, permission="read")
    try:
        kvs = client.range_prefix(args.timeout * len(endpoints))
    except EtcdError as exc:
        print(f"coloctl: error: {_options(str(exc))}", file=sys.stderr)
        return 2
    pairs = group(prefix, kvs)
    if args.json:
        print(json.dumps(as_json(prefix, pairs), indent=1))
    elif pairs:
        sys.stdout.write(table(pairs))
    if not pairs:
        print(f"coloctl: no pairs under {prefix} at {', '.join(endpoints)} (orchestrators "
              'publish there with arbiter = "etcd"; --prefix as their etcd_prefix)',
              file=sys.stderr)
        return 1
    return 0
