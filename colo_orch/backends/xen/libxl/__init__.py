"""libxl's side of COLO on Xen: `session` (the userspace-proxy protocol, sans-IO), `bridge`
(its socket adapter) and `python -m colo_orch.backends.xen.libxl` (the bridge alone)."""
