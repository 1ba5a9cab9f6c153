"""A page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): what it
logged, whether its images loaded, and a screenshot.

    python tests/browser.py PAGE.html OUT.png   # a screenshot of the top of a page
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str | None:
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
    )


def require_chromium() -> None:
    """Skip where Chromium is missing; on CI (which installs it) its absence is a failure."""
    import pytest

    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium (.ci/run installs it)")
        pytest.skip("no /usr/bin/chromium here: apt-get install chromium")


@dataclass
class Page:
    problems: list[str] = field(default_factory=list)  # console errors, page errors, failed loads
    images: list[dict] = field(default_factory=list)  # src, complete, naturalWidth, width
    section_ids: list[str] = field(default_factory=list)
    text: str = ""


def visit(
    url: str,
    screenshot: Path | None = None,
    width: int = 1280,
    height: int = 900,
    steps: tuple[tuple[str, str], ...] = (),
    element_shots: tuple[tuple[str, Path], ...] = (),
) -> Page:
    """Open `url` in a fresh Chromium profile and report what the page did. `steps`, for an
    application page, in order: ("wait", text) until the text shows (60 s at most), ("click",
    text) on the first element showing it. `element_shots`: (CSS selector, PNG path) of
    elements to photograph as drawn (the first match of each)."""
    from playwright.sync_api import sync_playwright

    page_info = Page()
    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=chromium(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        try:
            page = context.new_page()
            page.on(
                "console",
                lambda m: (
                    m.type in ("error", "warning")
                    and page_info.problems.append(f"console {m.type}: {m.text}")
                ),
            )
            page.on("pageerror", lambda e: page_info.problems.append(f"page error: {e}"))
            page.on(
                "requestfailed",
                lambda r: page_info.problems.append(f"failed to load {r.url}: {r.failure}"),
            )
            page.goto(url, wait_until="load")
            for action, text in steps:
                element = page.get_by_text(text, exact=True).first
                element.wait_for(timeout=60_000)
                if action == "click":
                    element.click()
            page_info.images = page.evaluate(
                "Array.from(document.images).map(i => ({src: i.getAttribute('src'), "
                "complete: i.complete, naturalWidth: i.naturalWidth, "
                "width: i.getBoundingClientRect().width}))"
            )
            page_info.section_ids = page.evaluate(
                "Array.from(document.querySelectorAll('body > section')).map(s => s.id)"
            )
            page_info.text = page.inner_text("body")
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
            for selector, path in element_shots:
                page.locator(selector).first.screenshot(path=str(path))
        finally:
            context.close()
    return page_info


if __name__ == "__main__":
    visit(Path(sys.argv[1]).resolve().as_uri(), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}")
