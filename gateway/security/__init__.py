"""Tablet identity and broker security (see docs/security.md).

pki          sans-I/O X.509: the school CA, server and client certificates, CSRs, CRLs
keyfiles     private files on disk: created 0600, refused when others can read them
identity     the gateway's keys and certificates in the state directory, made at first start
enrollment   sans-I/O enrollment tokens: make, check, redeem decisions
registry     the SQLite side of enrollment: tokens, enrolled tablets, revoked serials
broker_files the CRL and ACL files the school broker reads, and its reload
revocation   revoke a tablet: CRL + ACL, reload the broker, close its session
enroll_http  the HTTPS enrollment endpoint (aiohttp)
cli          ``python -m gateway enroll new|list|revoke``
"""
