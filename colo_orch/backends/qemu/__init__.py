"""colo_orch/backends/qemu"""
