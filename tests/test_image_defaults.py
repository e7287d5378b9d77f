"""The defaults as the firmware image ships them: a box provisioned from the
example file works with nothing else set (issue 16)."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.cache.eviction import free_space_floor, plan_admission
from gateway.config import load_config

REPO = Path(__file__).resolve().parents[1]
PROVISIONING_EXAMPLE = REPO / "firmware-image" / "school-gateway.toml.example"
GENIMAGES = sorted((REPO / "firmware-image").glob("genimage-*.cfg"))
MB = 1_000_000


def data_partition_bytes() -> int:
    """The smallest data partition the genimage-<arch>.cfg files build (before it grows)."""
    sizes = []
    assert GENIMAGES, "no firmware-image/genimage-*.cfg"
    for config in GENIMAGES:
        block = re.search(r"image data\.ext4 \{(.*?)\n\}", config.read_text(), re.S)
        assert block is not None, f"{config.name} has no data.ext4 image"
        size = re.search(r"size = (\d+)([KMG])", block.group(1))
        assert size is not None
        sizes.append(int(size.group(1)) * 1024 ** " KMG".index(size.group(2)))
    return min(sizes)


class TestCacheOnTheImage:
    """The update cache of a box provisioned from the example can hold an item."""

    def test_provisioned_box_admits_an_app(self) -> None:
        config = load_config(PROVISIONING_EXAMPLE)
        disk = data_partition_bytes()
        # ext4 on a fresh partition: metadata and 5 % reserved for root
        # leave about 90 % to the gateway's user.
        free = int(disk * 0.9)
        floor = free_space_floor(
            disk,
            min_free_bytes=config.cache.min_free_bytes,
            min_free_percent=config.cache.min_free_percent,
        )
        verdict = plan_admission(
            200 * MB,
            [],
            used_bytes=0,
            quota_bytes=config.cache.quota_bytes,
            free_bytes=free,
            min_free_bytes=floor,
        )
        assert verdict.refused is None
        assert verdict.evict == ()

    def test_floor_scales_with_the_disk(self) -> None:
        config = load_config(PROVISIONING_EXAMPLE)

        def floor(disk: int) -> int:
            return free_space_floor(
                disk,
                min_free_bytes=config.cache.min_free_bytes,
                min_free_percent=config.cache.min_free_percent,
            )

        assert floor(1024**3) == 64 * MB
        assert floor(32_000 * MB) == 1_600 * MB
