"""`colo-orch`: the orchestrator daemon of one hypervisor host."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from colo_orch.core.config import Config, ConfigError, load

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from colo_orch.daemon.api import Handlers as ApiHandlers
    from colo_orch.daemon.arbiter import Arbiter
    from colo_orch.daemon.fleet import FleetPublisher
    from colo_orch.daemon.runner import Orchestrator

EPILOG = """\
examples:
  colo-orch run --config /etc/colo/web1.toml      run the daemon for one protected VM
  colo-orch check --config /etc/colo/web1.toml    validate the config and this host
  colo-orch check                                 check this host only (kernel, bcc, QEMU)
  colo-orch firewall --config /etc/colo/web1.toml > /etc/colo/web1.nft
                                                  nftables rules: each port from the peer only
  colo-orch firewall --config /etc/colo/web1.toml --admin 10.0.9.0/24
                                                  ... and the API and metrics from 10.0.9.0/24

The config is TOML; see docs/ORCHESTRATOR.md for every field and the timing rules.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="colo-orch", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    run = sub.add_parser("run", help="run the orchestrator")
    run.add_argument("--config", required=True)
    run.add_argument("--host-id", default=None, help="this host's name (default: hostname+role)")
    chk = sub.add_parser("check", help="check the config and this host's COLO prerequisites")
    chk.add_argument("--config", default=None)
    chk.add_argument("--smoke", action="store_true",
                     help="also run the two-VM COLO smoke check with the lab (about 10 s)")
    fw = sub.add_parser("firewall", help="print nftables rules that keep this host's ports "
                        "(migration, NBD, heartbeat, API, metrics) to the peer (docs/PORTS.md)")
    fw.add_argument("--config", required=True)
    fw.add_argument("--peer", action="append", default=[], metavar="ADDR",
                    help="an address the peer connects from (default: the hosts of "
                         "peer_heartbeat and peer_incoming_uri, resolved now)")
    fw.add_argument("--admin", action="append", default=[], metavar="ADDR[/LEN]",
                    help="also allow the API and the metrics endpoints from here "
                         "(operators, Prometheus)")
    return p


def make_arbiter(cfg: Config, host_id: str) -> Arbiter | None:
    """The configured arbiter, or None after printing why it cannot work (exit 2).

    An etcd that does not answer at start is no reason to stop: the error names every
    endpoint and the keeper goes on trying, so that a primary restarted during an etcd
    outage still adopts its VM. Credentials etcd refuses are: retrying cannot fix them.
    """
    from colo_orch.daemon.arbiter import LocalLeaseArbiter

    t = cfg.timing
    if cfg.arbiter == "local":
        return LocalLeaseArbiter(cfg.arbiter_path or f"/run/colo/{cfg.name}.lease", host_id,
                                 t.lease_ttl, t.lease_margin)
    from colo_orch.daemon.etcd_arbiter import (
        EtcdArbiter,
        EtcdAuthError,
        EtcdConfigError,
        EtcdError,
        settings_from_config,
    )

    try:
        settings = settings_from_config(cfg)
    except EtcdConfigError as exc:
        print(f"colo-orch: error: {exc}", file=sys.stderr)
        return None
    arbiter = EtcdArbiter(settings, cfg.name, host_id, t.lease_ttl, t.lease_margin)
    try:
        arbiter.check(timeout=len(settings.endpoints) * t.lease_ttl / 4)
    except EtcdAuthError as exc:
        print(f"colo-orch: error: {exc}", file=sys.stderr)
        return None
    except EtcdError as exc:
        logging.getLogger("colo_orch").error("%s; the arbiter keeps trying (a secondary cannot "
                                             "take over and a primary cannot renew until etcd "
                                             "answers)", exc)
    return arbiter


def make_fleet(cfg: Config, host_id: str, arbiter: Arbiter,
               status: Callable[[], Mapping[str, Any]]) -> FleetPublisher | None:
    """With the etcd arbiter, this host's record for `coloctl list`, published from now on
    (docs/ORCHESTRATOR.md, "Fleet view"); None with the local arbiter."""
    from colo_orch.daemon.etcd_arbiter import EtcdArbiter
    from colo_orch.daemon.fleet import FleetPublisher

    if not isinstance(arbiter, EtcdArbiter):
        return None
    return FleetPublisher(arbiter.client.settings, cfg.name, host_id, status,
                          cfg.api_listen).start()


def api_handlers(orch: Orchestrator) -> ApiHandlers:
    """What the API may ask of the orchestrator."""
    from prometheus_client import generate_latest

    from colo_orch.daemon.api import Handlers

    return Handlers(status=orch.status, command=orch.request,
                    metrics=lambda: generate_latest(orch.exposed),
                    refused=lambda reason: orch.metrics.api_refused.labels(reason).inc())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        from colo_orch.cli.check import run_check

        return run_check(args.config, smoke=args.smoke)
    if args.command == "firewall":
        from colo_orch.cli.firewall import run_firewall

        return run_firewall(args.config, args.peer, args.admin)
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"colo-orch: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s colo-orch[%(name)s] %(message)s")
    from colo_orch.backends.base import Backend
    from colo_orch.backends.qemu.backend import QemuBackend
    from colo_orch.daemon.api import ApiError, ApiServer, read_token
    from colo_orch.daemon.heartbeat import Heartbeat
    from colo_orch.daemon.proxy_link import ProxyLink
    from colo_orch.daemon.runner import Orchestrator

    host_id = args.host_id or f"{socket.gethostname()}-{cfg.role}"
    try:
        token = read_token(cfg.api_token_file) if cfg.api_token_file else b""
    except ApiError as exc:
        print(f"colo-orch: error: {exc}", file=sys.stderr)
        return 2
    arbiter = make_arbiter(cfg, host_id)
    if arbiter is None:
        return 2
    try:
        key = Path(cfg.heartbeat_key_file).read_bytes().strip()
        hb = Heartbeat(cfg.heartbeat_listen, cfg.peer_heartbeat, cfg.timing.heartbeat_interval,
                       cfg.name, key)
    except ValueError as exc:
        print(f"colo-orch: error: heartbeat_key_file {cfg.heartbeat_key_file}: {exc}; "
              "write 32 random bytes there (head -c 32 /dev/urandom | base64) on both hosts",
              file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename == cfg.heartbeat_key_file:
            print(f"colo-orch: error: heartbeat_key_file {cfg.heartbeat_key_file}: "
                  f"{exc.strerror}; give the path of the pair's heartbeat key", file=sys.stderr)
            return 2
        print(f"colo-orch: error: heartbeat_listen {cfg.heartbeat_listen}: {exc.strerror}; "
              "use an address of this host and a free port", file=sys.stderr)
        return 2
    backend: Backend
    if cfg.backend == "xen":
        from colo_orch.backends.xen.backend import XenBackend
        from colo_orch.backends.xen.libxl.bridge import LibxlBridge

        host, port = cfg.xen_checkpoint_listen.rsplit(":", 1)
        # libxl asks this bridge when to checkpoint; the bridge asks the local proxy.
        bridge = LibxlBridge((host, int(port)), cfg.proxy_socket or None,
                             peer=cfg.xen_checkpoint_peer or None).start()
        backend = XenBackend(cfg.xen_domain, cfg.xen_config, bridge=bridge,
                             create_paused=cfg.xen_create_paused,
                             tls_dir=cfg.migration_tls_dir if cfg.migration_tls else "",
                             tls_hostname=cfg.migration_tls_hostname)
    else:
        from colo_orch.backends.qemu.tls import from_config

        backend = QemuBackend(cfg.qmp, cfg.qmp_events, cfg.vm_command,
                              qmp_timeout=cfg.timing.qmp_timeout, pidfile=cfg.vm_pidfile,
                              vm_log=cfg.vm_log,
                              disks=cfg.disks, nbd_port=cfg.nbd_port,
                              incoming_uri=cfg.incoming_uri,
                              tls=from_config(cfg.migration_tls, cfg.migration_tls_dir,
                                              cfg.migration_tls_hostname,
                                              cfg.migration_tls_psk_user),
                              resync_timeout=cfg.timing.resync_timeout,
                              sync_timeout=cfg.timing.sync_timeout,
                              migration_bandwidth=cfg.timing.migration_bandwidth,
                              migration_downtime=cfg.timing.migration_downtime)
    orch = Orchestrator(
        cfg,
        backend,
        arbiter,
        hb,
        ProxyLink(cfg.proxy_socket) if cfg.proxy_socket else None,
        host_id,
    )
    try:
        server = ApiServer(cfg, api_handlers(orch), token).start()
    except ApiError as exc:
        print(f"colo-orch: error: {exc}", file=sys.stderr)
        return 2
    fleet = make_fleet(cfg, host_id, arbiter, orch.status)

    def _term(signum: int, frame: FrameType | None) -> None:
        orch.stop()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    logging.getLogger("colo_orch").info(
        "started %s as %s (api %s%s, socket %s, metrics %s)", cfg.name, cfg.role,
        "https://" if cfg.api_tls_cert_file else "", cfg.api_listen or "off",
        cfg.api_socket or "off", cfg.metrics_listen or "off")
    if not token and not cfg.api_socket:
        logging.getLogger("colo_orch").warning(
            "every API command is refused: set api_token_file (or api_socket) to send them")
    from colo_orch.daemon.sd_notify import Notifier

    orch.notify = Notifier()
    try:
        orch.run()
    finally:
        if fleet is not None:
            fleet.stop()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
