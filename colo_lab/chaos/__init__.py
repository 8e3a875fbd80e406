"""Fault campaigns against a protected lab pair (`colo-lab chaos`, docs/RELIABILITY.md).

- `history`: the campaign's record of everything (client operations, faults, state
  samples) as JSON lines, and its parsed form.
- `checker`: pure checks of a history against the invariants, and the summary table.
- `schedule`: the seeded fault schedule (same seed, same schedule).
- `clients`: the workload clients run in the lab's client namespace.
- `runner`: the campaign itself (brings up the pair, injects faults, samples, checks).
"""
