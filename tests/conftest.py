"""Hypothesis profiles for the whole suite, chosen by HYPOTHESIS_PROFILE.

- `default` (CI and `make unit`): 100 examples a property, no per-example deadline (a
  loaded CI machine makes timings flaky; a hang is the pytest timeout's business), and
  no example database, so a run on a clean clone behaves as one here.
- `fuzz`: many more examples for a long hunt (`HYPOTHESIS_PROFILE=fuzz make unit`); a
  failure it finds is shrunk and printed, to become a regression test.

A test's own `@settings(max_examples=...)` still wins over the profile.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, database=None)
settings.register_profile("fuzz", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
