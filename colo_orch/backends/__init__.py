"""colo_orch/backends"""
