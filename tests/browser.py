"""The Chromium test harness both consoles' browser tests use.

Debian's ``/usr/bin/chromium`` driven by Playwright for Python (async API);
Playwright never downloads a browser. One browser per test module: a module
that uses the ``browser`` fixture (tests/conftest.py) runs its tests on the
module's event loop::

    pytestmark = pytest.mark.asyncio(loop_scope="module")

``axe_check(page)`` injects the vendored axe-core (tests/vendor/axe-core, MPL
2.0, licence beside it) and fails on any violation of impact "serious" or
"critical", naming the rule and the elements.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # the tests run as root in CI, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE_JS = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
BLOCKING_IMPACTS = ("serious", "critical")


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Headless Debian Chromium, closed on exit."""
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (./dev test does)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def axe_check(page: Page) -> None:
    """Fail on any serious or critical accessibility violation on the page as shown."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        # evaluate() runs outside the page's CSP, which allows only the site's own scripts.
        await page.evaluate(AXE_JS.read_text())
    violations = await page.evaluate(
        """async () => {
            const result = await axe.run(document, {resultTypes: ['violations']});
            return result.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ')),
            }));
        }"""
    )
    blocking = [v for v in violations if v["impact"] in BLOCKING_IMPACTS]
    assert not blocking, f"axe-core on {page.url}:\n" + "\n".join(
        f"  {v['impact']}: {v['id']} ({v['help']}) at {v['nodes']}" for v in blocking
    )
