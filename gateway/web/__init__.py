"""The LAN HTTP server: admin API (and, with the cache, content for tablets)."""
