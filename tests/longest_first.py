"""A pytest plugin for ``./dev test --quick``: the files that took longest last time run first.

With pytest-xdist's ``--dist loadfile --no-loadscope-reorder`` each test file goes whole
to the next free worker, in collection order. A long file handed out last keeps the
whole run waiting for it (the demo test alone takes 10 s or more); handing the longest
files out first makes the workers finish close together.

The seconds each file took are kept in pytest's cache (``.pytest_cache``) after every
run that has the cache; a file not measured yet counts as the longest, so a new file
starts early. Only the order of whole files changes: within a file the order is the one
pytest chose. Without the cache (``-p no:cacheprovider``) nothing is reordered.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

CACHE_KEY = "school-gateway/file-seconds"


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


class LongestFirst:
    def __init__(self, cache: pytest.Cache, is_worker: bool) -> None:
        self.cache = cache
        self.is_worker = is_worker
        known = cache.get(CACHE_KEY, {})
        self.known: dict[str, float] = known if isinstance(known, dict) else {}
        self.measured: defaultdict[str, float] = defaultdict(float)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        unknown = max(self.known.values(), default=0.0) + 1.0
        # A stable sort on a per-file key: each file's items stay together and in order.
        items.sort(key=lambda item: -self.known.get(_file_of(item.nodeid), unknown))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.measured[_file_of(report.nodeid)] += report.duration

    def pytest_sessionfinish(self) -> None:
        if self.is_worker or not self.measured:
            return  # the xdist controller sees every report and writes the cache once
        seconds = {**self.known, **{f: round(s, 2) for f, s in self.measured.items()}}
        self.cache.set(CACHE_KEY, seconds)


def pytest_configure(config: pytest.Config) -> None:
    cache = getattr(config, "cache", None)
    if cache is not None:
        is_worker = hasattr(config, "workerinput")
        config.pluginmanager.register(LongestFirst(cache, is_worker), "longest-first")
