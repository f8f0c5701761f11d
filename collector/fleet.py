"""The fleet file: probes defined once on the collector and pushed to every agent they select.

    # collector.yaml
    fleet: {probes_file: fleet.yaml, watch_interval: 2s}

    # fleet.yaml: `defaults` and `probes` in the agent's own probe syntax, plus selectors
    defaults: {interval: 30s, timeout: 5s}
    probes:
      - {name: web, kind: http, target: "https://example.net/"}          # every agent
      - {name: dns-eu, kind: dns, target: example.net, regions: [eu-central]}
      - {name: lab, kind: tcp, target: "10.0.0.1:22", agents: [fra-1], labels: {lab: "yes"}}

Selectors (`regions`, `agents`, `labels`; all given must match, none = every agent) are read
here and removed: the agent receives each selected probe's mapping as written. `labels` on a
fleet probe is a selector (the agent's Hello labels plus its registry labels must hold each
pair), never the probe's own labels. Probes are validated with the agent's models and checks
(agent/config.py), so an error is reported at the fleet file's `file:line:col`; file paths
(`*_file`, flow secrets' `file`) must be absolute, since each agent resolves them on its own
host. The pure part (`load_fleet`, `Fleet.probe_set`, `selector_warnings`) is separate from
`FleetPusher`, which holds the last good fleet, each agent's config state and the pushes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import Field

from probenet.agent.config import (
    CHECKS as AGENT_CHECKS,
)
from probenet.agent.config import (
    AgentConfig,
    flow_secret_problems,
)
from probenet.configfile import (
    ConfigError,
    ConfigIssue,
    FrozenModel,
    Labels,
    Name,
    Path_,
    load_tree,
    read_config_text,
    validate_tree,
)
from probenet.v1 import probenet_pb2 as pb

from .model import AgentConfigView

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

SELECTOR_KEYS = ("regions", "agents", "labels")
_TOP_KEYS = ("defaults", "probes")
# The agent's cross checks that hold for a fleet file: flow secrets are read on each agent's
# host (checked there), not on the collector's.
_PROBE_CHECKS = tuple(c for c in AGENT_CHECKS if c is not flow_secret_problems)


class _ProbeSelectors(FrozenModel):
    regions: list[Name] = Field(default_factory=list)
    agents: list[Name] = Field(default_factory=list)
    labels: Labels = Field(default_factory=dict)


class _FleetSelectors(FrozenModel):
    probes: list[_ProbeSelectors] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Selector:
    """Which agents run a probe: every given selector must match (none: every agent)."""

    regions: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, agent: str, region: str, labels: Mapping[str, str]) -> bool:
        """Whether the agent (id, region, labels) runs the probe."""
        return ((not self.regions or region in self.regions)
                and (not self.agents or agent in self.agents)
                and all(labels.get(k) == v for k, v in self.labels.items()))


@dataclass(frozen=True, slots=True)
class FleetProbe:
    """One fleet probe: its selector and its mapping as written (selectors removed)."""

    name: str
    selector: Selector
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ProbeSet:
    """One agent's set: the canonical JSON document and its version (sha256 hex)."""

    version: str
    document: str
    probes: tuple[str, ...]


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal content, equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


@dataclass(frozen=True, slots=True)
class Fleet:
    """A validated fleet file."""

    path: str
    defaults: Mapping[str, Any]
    probes: tuple[FleetProbe, ...]
    issued_at_ms: int
    content_hash: str  # sha256 of the file's bytes (the watch compares it)

    @property
    def source(self) -> str:
        """The file's name (for the agent's log lines)."""
        return Path(self.path).name

    def probe_set(self, agent: str, region: str, labels: Mapping[str, str]) -> ProbeSet:
        """The set of an agent: its selected probes in a canonical document."""
        chosen = [p for p in self.probes if p.selector.matches(agent, region, labels)]
        document = canonical_json({"defaults": dict(self.defaults),
                                   "probes": [dict(p.raw) for p in chosen]})
        version = hashlib.sha256(document.encode()).hexdigest()
        return ProbeSet(version, document, tuple(p.name for p in chosen))

    def message(self, probe_set: ProbeSet) -> pb.CollectorMessage:
        """The ProbeConfig that carries `probe_set`."""
        return pb.CollectorMessage(probe_config=pb.ProbeConfig(
            version=probe_set.version, document=probe_set.document,
            issued_at_ms=self.issued_at_ms, source=self.source))


def _file_paths(value: Any, path: Path_) -> Iterator[tuple[Path_, str]]:
    """(path, text) of every `*_file` string and flow secret `file` under `value`."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = (*path, key)
            if isinstance(item, str) and (key.endswith("_file") or (
                    key == "file" and len(path) >= 2 and path[-2] == "secrets")):
                yield here, item
            else:
                yield from _file_paths(item, here)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _file_paths(item, (*path, index))


def _relative_paths(probes: Sequence[Any]) -> list[tuple[Path_, str]]:
    found = []
    for index, probe in enumerate(probes):
        for where, text in _file_paths(probe, ("probes", index)):
            if not Path(text).is_absolute():
                found.append((where, (
                    f"{where[-1]} {text!r} is relative: each agent resolves it on its own "
                    "host, so write an absolute path (or use a secret's `env`)")))
    return found


def parse_fleet(text: str, file: str, *, mtime_ms: int = 0) -> Fleet:
    """Validate fleet YAML text; ConfigError lists every `file:line:col` problem."""
    data, marks = load_tree(text, file, allow_empty=False)
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(file, 1, 1, "the top level must be a mapping of keys")])
    issues: list[ConfigIssue] = [
        ConfigIssue(file, *marks.find((key,), at_key=True),
                    f"unknown key {key!r} (a fleet file holds defaults and probes)")
        for key in data if key not in _TOP_KEYS]
    raw_probes = data.get("probes")
    probes = raw_probes if isinstance(raw_probes, list) else []
    stripped = [{k: v for k, v in p.items() if k not in SELECTOR_KEYS}
                if isinstance(p, dict) else p for p in probes]
    selectors: _FleetSelectors | None = None
    try:
        selectors = validate_tree(_FleetSelectors, {"probes": [
            {k: p[k] for k in SELECTOR_KEYS if k in p} if isinstance(p, dict) else {}
            for p in probes]}, marks, file)
    except ConfigError as exc:
        issues.extend(exc.issues)
    defaults = data.get("defaults", {})
    # The agent's own model and checks, on an agent config made of the fleet's sections:
    # paths inside `defaults` and `probes` are the fleet file's, so positions are too.
    agent_view = {"agent": {"id": "fleet", "region": "fleet"},
                  "collectors": [{"address": "127.0.0.1:7070"}],
                  "defaults": defaults,
                  "probes": stripped if raw_probes is None or isinstance(raw_probes, list)
                  else raw_probes}
    agent_config: AgentConfig | None = None
    try:
        agent_config = validate_tree(AgentConfig, agent_view, marks, file, _PROBE_CHECKS)
    except ConfigError as exc:
        issues.extend(exc.issues)
    issues.extend(ConfigIssue(file, *marks.find(where), message)
                  for where, message in _relative_paths(probes))
    if issues or selectors is None or agent_config is None:
        issues.sort(key=lambda i: (i.line, i.col))
        raise ConfigError(issues)
    fleet_probes = tuple(
        FleetProbe(spec.name, Selector(frozenset(sel.regions), frozenset(sel.agents),
                                       dict(sel.labels)), raw)
        for spec, sel, raw in zip(agent_config.probes, selectors.probes, stripped, strict=True))
    return Fleet(path=file, defaults=defaults if isinstance(defaults, dict) else {},
                 probes=fleet_probes, issued_at_ms=mtime_ms,
                 content_hash=hashlib.sha256(text.encode()).hexdigest())


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet file (its mtime is the sets' `issued_at_ms`)."""
    file = str(path)
    text = read_config_text(path)
    try:
        mtime_ms = Path(path).stat().st_mtime_ns // 1_000_000
    except OSError:
        mtime_ms = 0
    return parse_fleet(text, file, mtime_ms=mtime_ms)


def selector_warnings(fleet: Fleet, text: str,
                      registered: Iterable[tuple[str, str, Mapping[str, str]]]
                      ) -> list[ConfigIssue]:
    """Probes whose selectors match no registered agent (id, region, registry labels).

    Warnings, not errors: an agent's Hello may add labels the registry does not list.
    """
    agents = list(registered)
    _, marks = load_tree(text, fleet.path)
    found = []
    for index, probe in enumerate(fleet.probes):
        selector = probe.selector
        if selector == Selector() or any(selector.matches(a, r, labels)
                                         for a, r, labels in agents):
            continue
        key = next(k for k in SELECTOR_KEYS if getattr(selector, k))
        found.append(ConfigIssue(fleet.path, *marks.find(("probes", index, key), at_key=True),
                                 f"warning: probe {probe.name!r}: its selectors match no "
                                 "registered agent"))
    return found


# --------------------------------------------------------------------------- at run time


@dataclass(slots=True)
class _AgentState:
    """What the collector knows of an agent's remote configuration."""

    region: str
    labels: Mapping[str, str]
    remote_config: bool
    running: str = ""  # the version the agent says it runs
    error: str = ""
    refused: tuple[tuple[str, str], ...] = ()
    collector_id: str = ""
    pushed: str = ""  # the last version sent
    current: ProbeSet | None = None  # the fleet's set for it (recomputed on reload)
    connected: bool = True
    send: Callable[[bytes], None] | None = None


class FleetPusher:
    """The last good fleet, each agent's set and config state, and the pushes on reload.

    The ingest calls `attach` once an agent's Welcome is written (with a `send` that queues a
    message on the stream), `config_status` for each ConfigStatus, `detach` when the stream
    ends. `reload` re-reads the file: a valid one replaces the fleet and pushes the sets
    that changed; an invalid one is logged issue by issue and kept out.
    """

    def __init__(self, fleet: Fleet, *, clock: Callable[[], float]) -> None:
        """Start with `fleet` (already validated: a bad file stops the collector at start)."""
        self.fleet = fleet
        self._clock = clock
        self.last_reload_success = True
        self.last_reload_at = clock()
        self._agents: dict[str, _AgentState] = {}
        self._last_hash = fleet.content_hash
        self._last_stat: tuple[int, int] | None = _stat(fleet.path)

    # -- agents ------------------------------------------------------------------------

    def attach(self, agent: str, region: str, labels: Mapping[str, str], hello: pb.Hello,
               send: Callable[[bytes], None]) -> None:
        """An agent's stream is open: push its set if it takes remote config."""
        state = _AgentState(region, dict(labels), hello.remote_config,
                            running=hello.config_version, send=send)
        state.current = self.fleet.probe_set(agent, region, state.labels)
        self._agents[agent] = state
        if state.remote_config:
            self._push(agent, state)
        else:
            log.info("agent does not take remote config", extra={
                "agent": agent, "region": region})

    def detach(self, agent: str) -> None:
        """The agent's stream ended (its last known state stays for the API)."""
        state = self._agents.get(agent)
        if state is not None:
            state.connected = False
            state.send = None

    def config_status(self, agent: str, status: pb.ConfigStatus) -> None:
        """Record what the agent runs (validated by the ingest)."""
        state = self._agents.get(agent)
        if state is None:
            return
        state.running = status.version
        state.error = status.error
        state.refused = tuple((r.probe, r.reason) for r in status.refused)
        state.collector_id = status.collector_id
        log.info("agent config status", extra={
            "agent": agent, "region": state.region, "config_version": status.version,
            "received_version": status.received_version, "error": status.error,
            "refused": ",".join(r.probe for r in status.refused)})

    def _push(self, agent: str, state: _AgentState) -> bool:
        probe_set = state.current
        if probe_set is None or state.send is None or probe_set.version == state.pushed:
            return False
        state.pushed = probe_set.version
        state.send(self.fleet.message(probe_set).SerializeToString())
        log.info("probe set pushed", extra={
            "agent": agent, "region": state.region, "config_version": probe_set.version,
            "probes": len(probe_set.probes)})
        return True

    def current_version(self, agent: str) -> str | None:
        """The fleet's version for a known agent (None when never seen)."""
        state = self._agents.get(agent)
        if state is None or state.current is None:
            return None
        return state.current.version

    def view(self, agent: str) -> AgentConfigView:
        """The agent's config fields for /api/v1/agents and the status page."""
        state = self._agents.get(agent)
        if state is None:
            return AgentConfigView(remote_config=False)
        current = None
        if state.remote_config:
            current = state.running == self.current_version(agent)
        return AgentConfigView(
            remote_config=state.remote_config, version=state.running or None,
            current=current, error=state.error or None, refused=state.refused)

    def current_flags(self) -> Iterator[tuple[str, str, bool]]:
        """(agent, region, running the fleet's version) of connected remote-config agents."""
        for agent, state in sorted(self._agents.items()):
            if state.connected and state.remote_config:
                yield agent, state.region, state.running == self.current_version(agent)

    # -- reloads -----------------------------------------------------------------------

    def changed(self) -> bool:
        """Whether the file differs from the last one read (mtime, size, then content hash)."""
        stat = _stat(self.fleet.path)
        if stat == self._last_stat:
            return False  # unchanged, or still missing (reported once)
        self._last_stat = stat
        try:
            digest = hashlib.sha256(Path(self.fleet.path).read_bytes()).hexdigest()
        except OSError:
            return True  # reload reports the file as unreadable
        return digest != self._last_hash

    def reload(self) -> bool:
        """Re-read the fleet file; on success push the sets that changed. True when valid."""
        self.last_reload_at = self._clock()
        self._last_stat = _stat(self.fleet.path)
        try:
            fleet = load_fleet(self.fleet.path)
        except ConfigError as exc:
            self.last_reload_success = False
            try:
                self._last_hash = hashlib.sha256(
                    Path(self.fleet.path).read_bytes()).hexdigest()
            except OSError:
                self._last_hash = ""
            for issue in exc.issues:
                log.error("fleet file rejected: %s", issue, extra={  # noqa: TRY400
                    "file": issue.file, "line": issue.line, "col": issue.col,
                    "error": issue.message})
            log.warning("fleet file not applied: the last good set stays", extra={
                "file": self.fleet.path, "issues": len(exc.issues)})
            return False
        self.last_reload_success = True
        self._last_hash = fleet.content_hash
        self.fleet = fleet
        for agent, state in self._agents.items():
            state.current = fleet.probe_set(agent, state.region, state.labels)
        pushed = sum(self._push(agent, state) for agent, state in sorted(self._agents.items())
                     if state.connected and state.remote_config)
        log.info("fleet file reloaded", extra={
            "file": fleet.path, "probes": len(fleet.probes), "pushed": pushed})
        return True


def _stat(path: str) -> tuple[int, int] | None:
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class FleetMetrics(Collector):
    """The fleet's reload state and which agents run their current set (scrape-time)."""

    def __init__(self, pusher: FleetPusher) -> None:
        """Read `pusher` at each scrape."""
        self._pusher = pusher

    def describe(self) -> list[Metric]:
        """Nothing: scrape-time families."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The three families."""
        pusher = self._pusher
        yield GaugeMetricFamily(
            "probenet_fleet_config_last_reload_success",
            "1 when the last (re)load of the fleet file was valid; 0: it was kept out and "
            "the last good probe sets stay.", value=1.0 if pusher.last_reload_success else 0.0)
        yield GaugeMetricFamily(
            "probenet_fleet_config_last_reload_timestamp_seconds",
            "When the fleet file was last (re)loaded, valid or not (unix seconds).",
            value=pusher.last_reload_at)
        current = GaugeMetricFamily(
            "probenet_agent_config_current",
            "1 while a connected remote-config agent runs the fleet's probe set for it, "
            "0 while it runs another version (or none).", labels=["agent", "region"])
        for agent, region, is_current in pusher.current_flags():
            current.add_metric([agent, region], 1.0 if is_current else 0.0)
        yield current
