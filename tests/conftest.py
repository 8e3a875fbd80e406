"""Hypothesis profiles for the whole suite, chosen by HYPOTHESIS_PROFILE.

- `default` (CI and `make unit`): 100 examples a property, no per-example deadline (a
  loaded CI machine makes timings flaky; a hang is the pytest timeout's business), and
  no example database, so a run on a clean clone behaves as one here.
- `fuzz`: many more examples for a long hunt (`HYPOTHESIS_PROFILE=fuzz make unit`); a
  failure it finds is shrunk and printed, to become a regression test.

A test's own `@settings(max_examples=...)` still wins over the profile.

Both leave out Hypothesis's explain phase: it re-runs a shrunk failure many times to
mark the lines it covers, and on the slower properties (the fast path against the
comparator) that outlasted pytest's timeout, so a real failure was reported as a
timeout plus `FlakyStrategyDefinition` instead of its shrunk example.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

PHASES = tuple(p for p in Phase if p is not Phase.explain)
settings.register_profile("default", deadline=None, database=None, phases=PHASES)
settings.register_profile("fuzz", max_examples=20_000, deadline=None, phases=PHASES,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
