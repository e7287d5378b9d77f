"""wait_until: a deadline that is missed is a failure, never a silent pause."""

from __future__ import annotations

import pytest

from gateway.lab.waiting import wait_until


class TestWaitUntil:
    """The polling helper the tests and benchmarks wait with."""

    async def test_returns_true_once_the_predicate_holds(self) -> None:
        calls = iter([False, False, True])
        assert await wait_until(lambda: next(calls), 5, step_s=0.001)

    async def test_a_missed_deadline_raises_naming_what_was_awaited(self) -> None:
        with pytest.raises(TimeoutError, match=r"not within 0\.01 s: the moon"):
            await wait_until(lambda: False, 0.01, step_s=0.001, what="the moon")

    async def test_without_a_name_the_predicate_source_is_shown(self) -> None:
        never_true: list[int] = []
        with pytest.raises(TimeoutError, match="never_true"):
            await wait_until(lambda: bool(never_true), 0.01, step_s=0.001)
