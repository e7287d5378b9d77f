"""Which of a tablet's reports is the newer one: the rule, as pure functions.

``seq`` is the order. A tablet numbers its reports 0, 1, 2... and a report
wins only over a lower ``seq`` of the same *epoch*. ``ts`` (the tablet's
clock) never decides: a tablet whose clock runs years ahead cannot pin its
state, and a late report with a later ``ts`` cannot replace a newer one.

A tablet that lost its counter (reinstalled, data wiped, restored) starts
again with a NEW epoch: a random string it has never used (``epoch`` in the
report; absent means ``""``). A report of a different epoch wins, and the
epoch it replaces is *retired*: a late report of a retired epoch (sent
before the reset, delivered after it) is ignored. The last
``RETIRED_KEPT`` retired epochs of each tablet are remembered.

The shadow (gateway.state.shadow) and the batch dedup both apply
:func:`supersedes` and :func:`after`; docs/protocol.md states the same rule
for tablets and for the academy.
"""

from __future__ import annotations

from dataclasses import dataclass

RETIRED_KEPT = 8


@dataclass(frozen=True)
class Standing:
    """A tablet's latest stored report, as the order sees it (seq -1: none yet)."""

    epoch: str = ""
    seq: int = -1
    retired: tuple[str, ...] = ()


NO_REPORT = Standing()


def supersedes(standing: Standing, epoch: str, seq: int) -> bool:
    """Whether a report (``epoch``, ``seq``) replaces the tablet's ``standing`` one."""
    if standing.seq < 0:
        return True
    if epoch == standing.epoch:
        return seq > standing.seq
    return epoch not in standing.retired


def after(standing: Standing, epoch: str, seq: int) -> Standing:
    """The standing once the report (``epoch``, ``seq``) won."""
    retired = standing.retired
    if standing.seq >= 0 and epoch != standing.epoch:
        retired = (*[e for e in retired if e != standing.epoch], standing.epoch)[-RETIRED_KEPT:]
    return Standing(epoch, seq, retired)
