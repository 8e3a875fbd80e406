"""colo_proxy/wire"""
