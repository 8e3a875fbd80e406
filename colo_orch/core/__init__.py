"""The orchestrator's pure core: configuration, disk records, the state table, the decision.

No I/O beyond `config.load` reading its one file, no clock, no threads: a snapshot in,
a decision out. It imports only the standard library and itself, never a backend, the
daemon or a CLI (tests/unit/orch/test_layout.py checks it), so every backend and
every test sees the same decisions.
"""
