"""The QEMU backend: COLO driven over QMP (`backend`), our QMP client (`qmp`), the VM's
process and fencing (`process`), and QEMU block replication for the disks (`blk/`).

It may import the core, `colo_orch.backends.base` and itself; never the Xen backend,
the daemon, a CLI or the test bed. QEMU's node names and command lines for the core's
`Disk` records live in `blk.spec`.
"""
