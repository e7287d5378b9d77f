"""A local lab on loopback: real Mosquitto brokers (and, later, an HTTP origin)
started on free ports, for the demo, the tests and the benchmarks."""
