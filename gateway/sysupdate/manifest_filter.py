"""Which manifest items this box fetches: system bundles only for its own compatible."""

from __future__ import annotations

from collections.abc import Callable

from gateway.cache.manifest import SYSTEM_KIND, ManifestItem


def for_this_box(compatible: str) -> Callable[[ManifestItem], bool]:
    """A ``wanted`` predicate for the cache's prefetcher.

    A system item is fetched only when its compatible is this box's (a box
    without RAUC fetches none); every other item is.
    """

    def wanted(item: ManifestItem) -> bool:
        return item.kind != SYSTEM_KIND or (bool(compatible) and item.compatible == compatible)

    return wanted
