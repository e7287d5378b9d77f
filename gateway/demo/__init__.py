"""``python -m gateway demo``: the whole product on loopback, with a live view.

Starts two real Mosquitto brokers (the school's and a stand-in for the
academy's), the gateway, N simulated tablets and an academy-side listener,
then shows what flows:

- state: tablets report; the academy is reached through a TCP proxy that cuts
  the uplink for a while (``--cut-at``, ``--cut-for``), so the outbox backlog
  grows during the cut and drains after;
- commands: once the tablets are known, the academy sends two signed commands
  (lock classroom class-01, install the cached app on every tablet) and the
  view shows their progress as results come back;
- cache: a lab origin at 4 MB/s holds an 8 MB app named in a manifest signed
  with the same academy key; a few tablets fetch it at once through the
  gateway (one upstream download serves them).

Logs go to ``demo.log`` in the work directory so the terminal stays readable.
Ctrl-C (or --duration) stops everything in order and prints
``demo summary: {...}`` as the last line.
"""

from gateway.demo.run import run_demo

__all__ = ["run_demo"]
