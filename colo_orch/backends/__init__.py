"""The hypervisors behind one interface: `base.Backend`, with `qemu/` and `xen/`.

Each backend turns the daemon's actions into hypervisor calls within stated bounds and
reports observations as the core's records (`VmObs`, `DiskStatus`). A backend may import
the core, `base` and its own subpackage, and the proxy's wire format where the hypervisor
speaks to the proxy (Xen's libxl bridge); never the daemon, a CLI, another backend or the
test bed.
"""
