"""``colo-proxy``: the command line of the COLO proxy.

Each subcommand registers itself in ``build_parser`` with a function taking the parsed
arguments and returning the exit status, so that later ones (primary, secondary, status,
cleanup) slot in beside ``replay``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from colo_proxy.compare import CompareConfig

Handler = Callable[[argparse.Namespace], int]

EXIT_OK = 0
EXIT_DIVERGED = 1  # replay found divergences
EXIT_USAGE = 2  # bad arguments, config or input (argparse uses 2 as well)

REPLAY_EPILOG = """\
examples:
  colo-proxy replay --primary pvm.pcap --secondary svm.pcap
  colo-proxy replay --primary pvm.pcap --secondary svm.pcap --json > report.json
  colo-proxy replay -p pvm.pcap -s svm.pcap --compare-timeout 0.2 --absolute-time

Each capture holds one replica's output (e.g. `tcpdump -i tapP -w pvm.pcap -Q out`).
Exit status: 0 all flows matched, 1 some flow diverged, 2 bad arguments or capture.
"""


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="compare two captured VM outputs and report divergences",
        description="Feed the primary's and the secondary's captured output through the "
        "comparator in time order and report, per flow, whether it matched or where it first "
        "diverged (reason, offset, time). Checkpoints are taken as instantaneous; a diverged "
        "flow is reported once and then no longer compared.",
        epilog=REPLAY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-p",
        "--primary",
        required=True,
        metavar="PCAP",
        help="capture of the primary VM's output (pcap/pcapng)",
    )
    p.add_argument(
        "-s",
        "--secondary",
        required=True,
        metavar="PCAP",
        help="capture of the secondary VM's output (pcap/pcapng)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--compare-timeout",
        metavar="SECONDS",
        default=str(CompareConfig().compare_timeout),
        help="hold time before a missing SVM packet counts as divergence (default %(default)s)",
    )
    p.add_argument(
        "--absolute-time",
        action="store_true",
        help="use capture timestamps as they are (captures taken at the same time); "
        "default: each capture's time starts at its first packet",
    )
    p.set_defaults(func=_run_replay)


def _run_replay(args: argparse.Namespace) -> int:
    from colo_proxy.cli.replay import ReplayError, replay_files
    from colo_proxy.service.settings import ConfigError, flag_value

    try:
        # Checked as the service checks its own --compare-timeout.
        timeout = flag_value("compare_timeout", args.compare_timeout)
    except ConfigError as e:
        print(f"colo-proxy replay: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = replay_files(
            args.primary,
            args.secondary,
            CompareConfig(compare_timeout=timeout),
            absolute_time=args.absolute_time,
        )
    except ReplayError as e:
        print(f"colo-proxy replay: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.text())
    return EXIT_DIVERGED if report.diverged else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colo-proxy",
        description="COLO proxy: compare the output of a primary and a secondary VM.",
        epilog="examples:\n  colo-proxy primary -c /etc/colo/proxy-primary.toml\n"
        "  colo-proxy check -c /etc/colo/proxy-primary.toml\n"
        "  colo-proxy replay --primary pvm.pcap --secondary svm.pcap\n"
        "  colo-proxy COMMAND --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_replay(sub)
    from colo_proxy.cli.service import register  # primary, secondary, status, cleanup

    register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.func
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
