"""colo_proxy/service"""
