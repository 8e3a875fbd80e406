"""libxl's side of COLO on Xen: `session` (the primary's userspace-proxy protocol, sans-IO),
`bridge` (its socket adapter), `backchannel` (the secondary's reports to the primary,
sans-IO) and `python -m colo_orch.backends.xen.libxl` (the bridge alone)."""
