"""colo_proxy/kernel"""
