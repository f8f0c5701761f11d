"""Fixtures of the browser suite: Debian's chromium through Playwright's sync API, a fleet of
real collector and agent processes serving the status page, and the screenshots folder.

This folder runs in a pytest process of its own (`pytest tests/browser`; scripts/test.sh
runs it after the rest): Playwright's sync API keeps an event loop of its own running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from support.browser import PageWatch, StatusFleet, chromium_executable, need_playwright

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from playwright.sync_api import Browser, Page

DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    need_playwright()
    executable = chromium_executable()
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - only when installed

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("status-screenshots")
    print(f"screenshots go to {folder}")
    return folder


@pytest.fixture(scope="module")
def status_fleet(browser, tmp_path_factory) -> Iterator[StatusFleet]:
    fleet = StatusFleet(tmp_path_factory.mktemp("status-fleet"))
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def watched(browser) -> Iterator[tuple[Page, PageWatch]]:
    """A fresh desktop-sized page, and what it logs and fetches."""
    context = browser.new_context(viewport=DESKTOP, device_scale_factor=1)
    page = context.new_page()
    watch = PageWatch()
    watch.attach(page)
    try:
        yield page, watch
    finally:
        context.close()
