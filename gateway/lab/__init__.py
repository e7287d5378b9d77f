"""A local lab on loopback: real Mosquitto brokers, an HTTP origin and a link proxy
started on free ports, and the academy's side (listener, signer), for the demo, the
tests and the benchmarks. Never imported by what runs on a box (tests/test_layering.py)."""
