"""Health of the box and of the gateway: psutil/netifaces readings, /metrics.

``box`` reads the machine (CPU, memory, disk, SoC temperature, uptime, LAN
interfaces, default route); ``metrics`` renders the Prometheus exposition.
"""
