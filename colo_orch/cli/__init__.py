"""colo_orch/cli"""
