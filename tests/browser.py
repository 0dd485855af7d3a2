"""Opening a page in a real headless Chromium (Debian's `chromium`, driven by Playwright), to see
what a person sees: console messages, every request the page makes, whether its images decode,
and a screenshot."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageVisit:
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text), page errors included
    requests: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)  # alt, complete, naturalWidth, naturalHeight
    title: str = ""
    text: str = ""


def visit(page_path: Path, screenshot: Path | None = None, width: int = 1200) -> PageVisit:
    from playwright.sync_api import sync_playwright

    result = PageVisit()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": 900})
        try:
            page = context.new_page()
            page.on("console", lambda message: result.console.append((message.type, message.text)))
            page.on("pageerror", lambda error: result.console.append(("pageerror", str(error))))
            page.on("request", lambda request: result.requests.append(request.url))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            result.images = page.evaluate("Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
                                          "naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}))")
            result.title = page.title()
            result.text = page.inner_text("body")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    return result
