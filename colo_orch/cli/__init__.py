"""The orchestrator's command lines: `colo-orch` (`orch`: the daemon and `check`),
`coloctl` (`ctl`: the HTTP API's client) and `coloctl disk` (`disk`: image preparation).

The only room that wires the rest together: it may import the core, the daemon and a
concrete backend. The test bed is run as the `colo-lab` command, never imported.
"""
