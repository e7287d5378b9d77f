"""The outbox byte budget: what to shed when the backlog is too big (no I/O).

The budget counts the bytes that would go upstream: message bodies in the
outbox table plus the state of every tablet whose latest state is pending.
Compaction by meaning happens before any shedding: a tablet has at most one
pending state (latest wins), always. When the backlog is still over budget,
``plan_shedding`` decides, in this order:

1. summaries older than the newest one, oldest first (the newest summary
   says more than all older ones together);
2. pending tablet state, oldest first (the box keeps it in the shadow; the
   academy gets it again with the tablet's next report);
3. never command results or rejections: if they alone exceed the budget the
   outbox stays over budget, which is counted and logged.

Everything shed is counted, and the totals travel upstream in every summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Pending:
    """One pending upstream message, as far as the budget cares."""

    kind: str
    seq: int
    size: int
    device_id: str | None = None


@dataclass(frozen=True)
class ShedPlan:
    """What to drop, and how far over budget the outbox stays afterwards."""

    drop: tuple[Pending, ...]
    bytes_after: int
    over_budget_by: int

    def count(self, kind: str) -> int:
        return sum(1 for item in self.drop if item.kind == kind)


def plan_shedding(pending: Sequence[Pending], budget_bytes: int) -> ShedPlan:
    """The rows to drop so that ``pending`` fits ``budget_bytes`` (see module doc)."""
    total = sum(item.size for item in pending)
    if total <= budget_bytes:
        return ShedPlan(drop=(), bytes_after=total, over_budget_by=0)
    summaries = sorted((p for p in pending if p.kind == "summary"), key=lambda p: p.seq)
    states = sorted((p for p in pending if p.kind == "state"), key=lambda p: p.seq)
    candidates = summaries[:-1] + states
    drop: list[Pending] = []
    for item in candidates:
        if total <= budget_bytes:
            break
        drop.append(item)
        total -= item.size
    return ShedPlan(
        drop=tuple(drop), bytes_after=total, over_budget_by=max(0, total - budget_bytes)
    )
