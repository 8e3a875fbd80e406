"""colo_proxy/cli"""
