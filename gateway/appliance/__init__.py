"""Running as an appliance: systemd readiness and watchdog, mDNS announcement.

``notify`` speaks the systemd notification protocol (no dependency);
``discovery`` announces the gateway on the school LAN with DNS-SD.
"""
