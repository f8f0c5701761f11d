"""The status page in a real headless Chromium, served by a real collector fed by real agents
in five regions: every state renders (up, regional, global, maintenance, isolated region,
unknown), the page follows the collector within 2 s when an outage opens and resolves, it
logs no error, fetches nothing from anywhere but the collector, reads on a phone, and its
public mode leaves out what it must. A screenshot of each state goes to the test's output
folder; with PROBENET_WRITE_DOCS=1 the global and regional ones also to docs/ (the README's
pictures: `PROBENET_WRITE_DOCS=1 .venv/bin/python -m pytest tests/browser`).

The tests share one fleet and run in order, each starting from a quiet fleet.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import expect

from probenet.lab.targets import FaultMode
from support.browser import PAGE_LAG_S, PROBES, SOLO, SOLO_PROBE, PageWatch, screenshot
from support.e2e_fleet import EVERY_PROBE
from support.system import ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from support.browser import StatusFleet

pytestmark = pytest.mark.slow

LAG_MS = PAGE_LAG_S * 1000
QUIET_S = 60.0
HEADLINE = "#headline-text"
BANNER = "#headline .banner"
DOCS = ROOT / "docs"
DOCS_MAX_BYTES = 300 * 1024
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture
def quiet(status_fleet):
    """Each test starts from a quiet fleet and leaves no fault behind."""
    status_fleet.wait_api(status_fleet.is_quiet, "a quiet fleet", QUIET_S)
    yield status_fleet
    for probe in ("shop-web", "shop-api", "blog-web", "docs-web", "edge-dns", EVERY_PROBE):
        status_fleet.faults.clear(probe)


def open_status(page: Page, fleet: StatusFleet, path: str = "/status") -> None:
    page.goto(fleet.base_url + path)
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=5000)


def region_state(page: Page, region: str):
    return page.locator(f'#map .rg[data-region="{region}"] .rg-state')


def probe_row(page: Page, probe: str):
    return page.locator(f'#services tr[data-probe="{probe}"]')


def assert_clean(watch: PageWatch, fleet: StatusFleet) -> None:
    assert watch.errors == []
    assert watch.requests, "the page fetched nothing"
    assert watch.foreign_requests(fleet.base_url) == []
    assert any(url.endswith("/status/data.json") for url in watch.requests)


def page_follows(page: Page, fleet: StatusFleet, api_check, what: str, locator, *,
                 text: str | re.Pattern[str]) -> None:
    """Wait until the API shows the change, then the page must show it within PAGE_LAG_S."""
    fleet.wait_api(api_check, what)
    seen = time.monotonic()
    expect(locator).to_contain_text(text, timeout=LAG_MS)
    print(f"{what}: on the page {time.monotonic() - seen:.2f}s after the API")


def open_outage(fleet: StatusFleet, probe: str, scope: str | None = None):
    return next((o for o in fleet.open_outages() if o.get("probe") == probe
                 and (scope is None or o["scope"] == scope)), None)


def to_docs(path, name: str) -> None:
    """Check a README picture's size; copy it to docs/ when asked (PROBENET_WRITE_DOCS=1)."""
    assert path.stat().st_size < DOCS_MAX_BYTES, (path, path.stat().st_size)
    if os.environ.get("PROBENET_WRITE_DOCS") == "1":
        shutil.copyfile(path, DOCS / name)


def test_up(quiet, watched, browser, shots):
    page, watch = watched
    open_status(page, quiet)
    expect(page.locator(HEADLINE)).to_have_text("Everything is up.")
    expect(page.locator(BANNER)).to_have_class(re.compile(r"\blv-up\b"))
    expect(page.locator(BANNER)).to_contain_text("All systems up")
    for region in ("eu-central", "us-east", "ap-south", "sa-east"):
        expect(region_state(page, region)).to_have_text("Up")
    expect(region_state(page, "af-south")).to_have_text("Unknown")  # nobody there yet
    expect(probe_row(page, "shop-web")).to_contain_text("Up")
    expect(page.locator("#outages")).to_contain_text("No open outage.")
    expect(page.locator("#fleet")).to_contain_text("Frankfurt: 2 probes")
    expect(page.locator("#uptime ul.uptime li")).to_have_count(len(PROBES))
    expect(page.locator("#uptime ul.uptime li").first.locator("rect")).to_have_count(90)
    screenshot(page, shots, "up")
    assert_clean(watch, quiet)

    # Without JavaScript the server's HTML says the same, and the map's selector still works.
    plain_context = browser.new_context(viewport=DESKTOP, java_script_enabled=False)
    try:
        plain = plain_context.new_page()
        plain_watch = PageWatch()
        plain_watch.attach(plain)
        plain.goto(quiet.base_url + "/status")
        expect(plain.locator(HEADLINE)).to_have_text("Everything is up.")
        expect(plain.locator("#live")).to_have_attribute("data-state", "static")
        plain.select_option("#map-select", "probe:shop-web")
        plain.locator("#map-form button").click()
        expect(plain).to_have_url(re.compile(r"/status\?map=probe%3Ashop-web$"))
        expect(plain.locator("#map-select")).to_have_value("probe:shop-web")
        expect(region_state(plain, "eu-central")).to_have_text("Up")
        assert plain_watch.errors == []
        assert plain_watch.foreign_requests(quiet.base_url) == []
    finally:
        plain_context.close()


def test_regional_outage_opens_and_resolves_live(quiet, watched, shots):
    page, watch = watched
    open_status(page, quiet)
    quiet.faults.fail("blog-web", regions=["eu-central"])
    page_follows(page, quiet, lambda: (quiet.targets()["blog-web"]["state"] == "regional_outage"
                                       and open_outage(quiet, "blog-web", "regional")),
                 "regional outage opened", page.locator(HEADLINE),
                 text="blog: down in Frankfurt (eu-central) since")
    expect(page.locator(BANNER)).to_have_class(re.compile(r"\blv-regional\b"))
    expect(page.locator(HEADLINE)).to_contain_text("up elsewhere; our probes are healthy.")
    row = probe_row(page, "blog-web")
    expect(row).to_contain_text("Regional outage")
    expect(row.locator('td[data-region="eu-central"]')).to_contain_text("Down")
    expect(row.locator('td[data-region="us-east"]')).to_contain_text("Up")
    expect(page.locator("#outages tr[data-outage]")).to_have_count(1)
    page.select_option("#map-select", "service:blog")
    expect(region_state(page, "eu-central")).to_have_text("Down")
    expect(region_state(page, "us-east")).to_have_text("Up")
    expect(page.locator('#map .rg[data-region="eu-central"]')).to_have_class(
        re.compile(r"\bst-down\b"))
    expect(page.locator('#region-list li[data-region="eu-central"]')).to_have_text(
        "Frankfurt Down")
    expect(page.locator('#region-list li[data-region="us-east"]')).to_have_text("Virginia Up")
    shot = screenshot(page, shots, "regional")
    to_docs(shot, "status-regional.png")

    # One click from the headline's outage to its page: the timeline so far.
    page.locator("#outages tr[data-outage] a").click()
    expect(page.locator("#outage h2")).to_have_text("blog: outage")
    expect(page.locator("ol.timeline")).to_contain_text("started")
    expect(page.locator("ol.timeline")).to_contain_text("opened")
    expect(page.locator("dl.facts")).to_contain_text("Frankfurt")
    screenshot(page, shots, "regional-outage-page")
    page.go_back()
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=5000)

    quiet.faults.clear("blog-web")
    page_follows(page, quiet, lambda: (quiet.targets()["blog-web"]["state"] == "up"
                                       and not open_outage(quiet, "blog-web")),
                 "regional outage resolved", page.locator(HEADLINE), text="Everything is up.")
    expect(page.locator("#outages")).to_contain_text("No open outage.")
    assert_clean(watch, quiet)


def test_global_outage_opens_and_resolves_live_also_on_a_phone(quiet, watched, browser,
                                                                 shots):
    page, watch = watched
    open_status(page, quiet)
    quiet.faults.fail("shop-web")
    quiet.faults.fail("shop-api")

    def global_outage():
        targets = quiet.targets()
        return (all(targets[p]["state"] == "global_outage" for p in ("shop-web", "shop-api"))
                and any(o["kind"] == "service" and o["service"] == "shop"
                        and o["scope"] == "global" for o in quiet.open_outages()))
    page_follows(page, quiet, global_outage, "global outage opened", page.locator(HEADLINE),
                 text="shop: down in ")
    expect(page.locator(BANNER)).to_have_class(re.compile(r"\blv-global\b"), timeout=LAG_MS)
    expect(page.locator(BANNER)).to_contain_text("Global outage")
    quiet.wait_api(lambda: len(open_outage(quiet, "shop-web")["regions"]) == 4,
                   "every region down")
    expect(page.locator(HEADLINE)).to_contain_text("shop: down in every region since",
                                                   timeout=LAG_MS)
    expect(probe_row(page, "shop-web")).to_contain_text("Global outage")
    for region in ("eu-central", "us-east", "ap-south", "sa-east"):
        expect(region_state(page, region)).to_have_text("Down")
    shot = screenshot(page, shots, "global")
    to_docs(shot, "status-global.png")

    phone = browser.new_context(viewport={"width": 375, "height": 812}, is_mobile=True,
                                device_scale_factor=2)
    try:
        small = phone.new_page()
        phone_watch = PageWatch()
        phone_watch.attach(small)
        open_status(small, quiet)
        expect(small.locator(HEADLINE)).to_contain_text("shop: down in every region")
        for selector in (BANNER, "#map svg", "#services .scroll", "#outages .scroll",
                         "header"):
            box = small.locator(selector).bounding_box()
            assert box is not None, selector
            assert box["x"] >= 0, selector
            assert box["x"] + box["width"] <= 375 + 0.5, (selector, box)
        screenshot(small, shots, "global-phone")
        assert_clean(phone_watch, quiet)
    finally:
        phone.close()

    quiet.faults.clear("shop-web")
    quiet.faults.clear("shop-api")
    page_follows(page, quiet, lambda: (not open_outage(quiet, "shop-web")
                                       and not open_outage(quiet, "shop-api")
                                       and not [o for o in quiet.open_outages()
                                                if o["kind"] == "service"]
                                       and quiet.targets()["shop-web"]["state"] == "up"
                                       and quiet.targets()["shop-api"]["state"] == "up"),
                 "global outage resolved", page.locator(HEADLINE), text="Everything is up.")
    expect(page.locator(BANNER)).to_have_class(re.compile(r"\blv-up\b"))
    assert_clean(watch, quiet)


def test_maintenance_window_shows_live(quiet, watched, shots):
    page, watch = watched
    open_status(page, quiet)
    now = dt.datetime.now(dt.UTC)
    window = quiet.post_window({
        "services": ["docs"], "reason": "db upgrade",
        "start": (now - dt.timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
        "end": (now + dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")})
    page_follows(page, quiet, lambda: quiet.targets()["docs-web"]["state"] == "maintenance",
                 "maintenance started", page.locator(HEADLINE),
                 text="docs: in planned maintenance until")
    expect(page.locator(HEADLINE)).to_contain_text("(db upgrade)")
    expect(page.locator(BANNER)).to_have_class(re.compile(r"\blv-maintenance\b"))
    expect(page.locator("#maintenance")).to_contain_text("In maintenance now")
    expect(probe_row(page, "docs-web")).to_contain_text("Maintenance")
    page.select_option("#map-select", "service:docs")
    expect(region_state(page, "us-east")).to_have_text("Maintenance")
    screenshot(page, shots, "maintenance")

    quiet.delete_window(window["id"])
    page_follows(page, quiet, lambda: quiet.targets()["docs-web"]["state"] == "up",
                 "maintenance ended", page.locator(HEADLINE), text="Everything is up.")
    assert_clean(watch, quiet)


def test_an_isolated_region_is_said_to_be_ours_live(quiet, watched, shots):
    page, watch = watched
    open_status(page, quiet)
    quiet.faults.fail(EVERY_PROBE, FaultMode.RESET, regions=["ap-south"])

    def isolated():
        return any(o["kind"] == "region_isolated" and o["region"] == "ap-south"
                   for o in quiet.open_outages())
    page_follows(page, quiet, isolated, "ap-south isolated", page.locator(HEADLINE),
                 text="ap-south: our probes there cannot reach anything; not an outage of "
                      "your services.")
    expect(page.locator(BANNER)).to_have_class(re.compile(r"\blv-isolated\b"))
    expect(region_state(page, "ap-south")).to_have_text("Isolated")
    expect(page.locator('#region-list li[data-region="ap-south"]')).to_have_text(
        "Mumbai Isolated")
    expect(page.locator('#map .rg[data-region="ap-south"]')).to_have_class(
        re.compile(r"\bst-isolated\b"))
    expect(page.locator("#fleet")).to_contain_text("cut off")
    assert not [o for o in quiet.open_outages() if o["kind"] in {"probe", "service"}]
    screenshot(page, shots, "isolated")

    quiet.faults.clear(EVERY_PROBE)
    page_follows(page, quiet, lambda: not isolated(), "ap-south reachable again",
                 page.locator(HEADLINE), text=re.compile(r"^(?!ap-south)"))
    assert_clean(watch, quiet)


def test_a_probe_one_region_reports_is_unknown(quiet, watched, shots):
    page, watch = watched
    open_status(page, quiet)
    quiet.start_solo()
    try:
        page_follows(page, quiet,
                     lambda: quiet.targets().get(SOLO_PROBE.name, {}).get("state") == "unknown",
                     "a probe only af-south reports", page.locator(HEADLINE),
                     text="solo-web: unknown, fewer than 2 regions report it.")
        expect(page.locator(HEADLINE)).to_contain_text("Everything else is up.")
        expect(page.locator(BANNER)).to_have_class(re.compile(r"\blv-unknown\b"))
        expect(probe_row(page, SOLO_PROBE.name)).to_contain_text("Unknown")
        expect(page.locator("#services")).to_contain_text("Probes without a service")
        page.select_option("#map-select", f"probe:{SOLO_PROBE.name}")
        expect(region_state(page, "af-south")).to_have_text("Up")
        expect(region_state(page, "eu-central")).to_have_text("Unknown")
        screenshot(page, shots, "unknown")
        page.goto(quiet.base_url + "/status/agents")
        expect(page.locator(f'tr[data-agent="{SOLO.id}"]')).to_contain_text("Healthy")
        expect(page.locator('tr[data-agent="fra-a"]')).to_contain_text("Frankfurt")
        screenshot(page, shots, "agents")
    finally:
        quiet.stop_solo()
    assert_clean(watch, quiet)


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_public_mode_hides_agents_targets_and_unlisted_services(status_fleet, watched, shots):
    fleet = status_fleet
    fleet.restart_collector({"public": True, "title": "Acme status",
                             "services": ["shop", "blog"]})
    page, watch = watched
    open_status(page, fleet)
    expect(page.locator("h1")).to_have_text("Acme status")
    expect(probe_row(page, "shop-web")).to_be_visible()
    expect(page.locator("#fleet")).to_contain_text("Frankfurt: 2 probes")
    html = page.content()
    status, data = fetch(fleet.base_url + "/status/data.json")
    assert status == 200
    assert fetch(fleet.base_url + "/status/agents")[0] == 404
    hidden = [a.id for a in fleet.plan.agents] + [SOLO.id, "docs", SOLO_PROBE.name, "edge-dns",
                                                  "/status/agents", "as652", "/p/", "127.0."]
    for text in (html, data):
        for word in hidden:
            assert word not in text, word
    screenshot(page, shots, "public")
    assert_clean(watch, fleet)
