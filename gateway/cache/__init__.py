"""The update cache: content addressed by SHA-256, one upstream download per item.

Pure decisions (no I/O, tested synchronously):
    rules.py      hash and Range parsing, response headers for an item
    budget.py     token bucket and off-peak windows (uplink budget)
    eviction.py   what leaves the disk to admit an item, or why it cannot
    manifest.py   signed manifest verification and parsing

Adapters:
    index.py      the SQLite index (``cache_items``) with an in-memory mirror
    download.py   one upstream download (single flight, Range resume, hash check)
    service.py    CacheService: manifest, prefetch, admission, seeding, stats
    http.py       GET/HEAD /content/<sha256> on the LAN server
"""
