"""How each system update outcome (gateway.sysupdate.outcomes) reads, and its colour.

Both consoles show outcomes: the box's updates page and the academy's school
page. The codes stay in ``data-outcome`` attributes and the JSON API.
"""

from __future__ import annotations

from gateway.web.i18n import N_

OUTCOME_LABELS = {
    "refused": (N_("refused"), "red"),
    "installing": (N_("installing"), "amber"),
    "failed": (N_("failed"), "red"),
    "installed": (N_("installed, restarting"), "amber"),
    "booted": (N_("started, being checked"), "amber"),
    "marked-good": (N_("installed and working"), "green"),
    "health-check-failed": (N_("did not start well"), "red"),
    "rolled-back": (N_("rolled back to the previous system"), "red"),
}
