"""colo_orch/daemon"""
