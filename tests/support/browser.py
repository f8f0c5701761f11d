"""The browser suite's support: Debian's chromium driven by Playwright, a page that records
what it logged and fetched, and a fleet of real collector and agent processes whose
collector serves the status page (regions with map positions, a maintenance write API).

Playwright's sync API runs an event loop of its own: the browser suite runs in a pytest
process of its own (scripts/test.sh), never beside the asyncio tests. No browser is ever
downloaded: Playwright launches the system's `chromium` by path.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import yaml

from probenet.lab.fleet import (
    AgentSeat,
    FleetPlan,
    ProbePlan,
    agent_config,
    pick_free_port,
    probenet_command,
)
from support.e2e_fleet import FaultTable, FleetHarness, wait_until
from support.processes import ChildProcess
from support.system import IN_CI

if TYPE_CHECKING:
    from collections.abc import Callable

    from playwright.sync_api import ConsoleMessage, Page, Request

INTERVAL_S = 1.0
# Where the page must show a change the collector made (the page polls every second).
PAGE_LAG_S = 2.0

AGENTS = (
    AgentSeat("fra-a", "eu-central", "127.0.21.1", "as65201"),
    AgentSeat("fra-b", "eu-central", "127.0.21.2", "as65202"),
    AgentSeat("iad-a", "us-east", "127.0.22.1", "as65211"),
    AgentSeat("iad-b", "us-east", "127.0.22.2", "as65212"),
    AgentSeat("bom-a", "ap-south", "127.0.23.1", "as65221"),
    AgentSeat("bom-b", "ap-south", "127.0.23.2", "as65222"),
    AgentSeat("gru-a", "sa-east", "127.0.24.1", "as65231"),
)
# One agent outside the plan, in a region of its own, running one probe nobody else runs:
# that probe is reported by one region only (unknown).
SOLO = AgentSeat("jnb-solo", "af-south", "127.0.25.1", "as65241")
SOLO_PROBE = ProbePlan("solo-web", "http", "")
PROBES = (
    ProbePlan("shop-web", "http", "shop"),
    ProbePlan("shop-api", "http", "shop"),
    ProbePlan("blog-web", "http", "blog"),
    ProbePlan("docs-web", "http", "docs"),
    ProbePlan("edge-dns", "dns"),
)
REGIONS = {
    "eu-central": {"name": "Frankfurt", "location": [50.1, 8.7]},
    "us-east": {"name": "Virginia", "location": [38.9, -77.4]},
    "ap-south": {"name": "Mumbai", "location": [19.1, 72.9]},
    "sa-east": {"name": "São Paulo", "location": [-23.5, -46.6]},
    "af-south": {"name": "Johannesburg", "location": [-26.2, 28.0]},
}


def chromium_executable() -> str:
    """Debian's chromium; skip with a reason on a laptop without it, fail when CI=true."""
    found = shutil.which("chromium") or ("/usr/bin/chromium"
                                         if Path("/usr/bin/chromium").exists() else None)
    if found:
        return found
    reason = ("chromium not installed (Debian package chromium; `make test` as root "
              "installs it)")
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def need_playwright() -> None:
    """Skip (laptop) or fail (CI) when the playwright package is missing."""
    try:
        import playwright.sync_api  # noqa: F401, PLC0415
    except ImportError:
        reason = "playwright not installed (`pip install -e '.[dev]'` installs it)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


@dataclass
class PageWatch:
    """What a page logged and fetched: console errors, uncaught errors, every request URL."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        def console(message: ConsoleMessage) -> None:
            if message.type in {"error", "warning"}:
                self.errors.append(f"console {message.type}: {message.text}")

        def request(req: Request) -> None:
            self.requests.append(req.url)

        page.on("console", console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("request", request)

    def foreign_requests(self, base_url: str) -> list[str]:
        """Requests that went anywhere but the collector at `base_url`."""
        own = urlsplit(base_url)
        return [url for url in self.requests
                if (urlsplit(url).scheme, urlsplit(url).netloc) != (own.scheme, own.netloc)]


class StatusFleet:
    """A FleetHarness whose collector serves the status page, and the steps the tests take."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.admin_token = secrets.token_urlsafe(24)
        token_file = workdir / "admin-token"
        token_file.write_text(self.admin_token + "\n", encoding="utf-8")
        token_file.chmod(0o600)
        self.plan = FleetPlan(
            agents=AGENTS, probes=PROBES, interval_s=INTERVAL_S, http_port=pick_free_port(),
            grpc_port=pick_free_port(), tokens=False,
            collector_settings={
                "tick": "250ms",
                # No registry: the collector accepts any agent on loopback (the solo one).
                "agents": None,
                "regions": REGIONS,
                "status_page": {"title": "Example status"},
                "api": {"admin_token_file": str(token_file)},
            })
        self.faults = FaultTable(self.plan.agents_by_address())
        self.harness = FleetHarness(self.plan, workdir, self.faults)
        self.solo: ChildProcess | None = None

    @property
    def base_url(self) -> str:
        return self.plan.http_base

    def start(self) -> None:
        self.harness.start()

    def stop(self) -> None:
        self.stop_solo()
        self.harness.stop()

    # -- the collector's API ----------------------------------------------------------------

    def get_json(self, path: str) -> Any:
        return self.harness.get_json(path)

    def targets(self) -> dict[str, dict[str, Any]]:
        return {t["probe"]: t for t in self.get_json("/api/v1/targets")}

    def open_outages(self) -> list[dict[str, Any]]:
        return list(self.get_json("/api/v1/outages?active=true"))

    def wait_api(self, check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> float:
        """Poll the API until `check()` holds; return the moment it was first seen."""
        wait_until(check, timeout_s, what, poll_s=0.05)
        return time.monotonic()

    def is_quiet(self) -> bool:
        """Every planned probe up, no open outage, no agent impaired or stale."""
        targets = self.targets()
        if any(targets.get(p.name, {}).get("state") != "up" for p in PROBES):
            return False
        agents = self.get_json("/api/v1/agents")
        if any(a["impaired"] or a["stale"] for a in agents if a["id"] != SOLO.id):
            return False
        return not [o for o in self.open_outages() if o.get("probe") != SOLO_PROBE.name]

    def post_window(self, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.base_url + "/api/v1/maintenance", data=json.dumps(body).encode(),
            method="POST", headers={"Authorization": f"Bearer {self.admin_token}",
                                    "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.loads(response.read()))

    def delete_window(self, window_id: str) -> None:
        request = urllib.request.Request(
            f"{self.base_url}/api/v1/maintenance/{window_id}", method="DELETE",
            headers={"Authorization": f"Bearer {self.admin_token}"})
        with urllib.request.urlopen(request, timeout=10):
            pass

    # -- the solo agent ----------------------------------------------------------------------

    def start_solo(self) -> None:
        """Start the one agent of af-south, running only SOLO_PROBE."""
        assert self.harness.targets is not None
        plan = dataclasses.replace(self.plan, agents=(SOLO,), probes=(SOLO_PROBE,))
        config = agent_config(plan, SOLO, self.harness.targets, self.workdir)
        path = self.workdir / "agent-solo.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self.solo = ChildProcess(SOLO.id, [*probenet_command(), "agent", "--config", str(path),
                                           "--log-level", "info"],
                                 self.workdir / "logs" / f"{SOLO.id}.log")
        solo = self.solo
        self.harness.call(lambda _fleet: solo.__aenter__())

    def stop_solo(self) -> None:
        solo, self.solo = self.solo, None
        if solo is not None:
            self.harness.call(lambda _fleet: solo.stop())

    # -- public mode ---------------------------------------------------------------------------

    def restart_collector(self, status_page: dict[str, Any]) -> None:
        """Stop the collector, give it another `status_page:` section, start it again."""
        self.harness.call(lambda fleet: fleet.stop_collector())
        assert self.harness.fleet is not None
        path = self.harness.fleet.config_paths["collector"]
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        config["status_page"] = status_page
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self.harness.call(lambda fleet: fleet.start_collector())
        self.harness.call(lambda fleet: fleet.wait_agents_connected([a.id for a in AGENTS]))


def screenshot(page: Page, folder: Path, name: str) -> Path:
    """Save the whole page as `folder/status-<name>.png`; print where."""
    path = folder / f"status-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path
