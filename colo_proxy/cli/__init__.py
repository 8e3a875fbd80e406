"""The `colo-proxy` command line.

`main` builds the parser; `service` parses the service subcommands (primary, secondary,
status, cleanup) and hands them to `colo_proxy.service.run`; `replay` compares two
captures offline with the comparator. It may import every other room; nothing in the
product imports it but the console script.
"""
