"""A collector and its agents as real child processes, started from generated config files.

`FleetPlan` says who is in the fleet (agents with their region and loopback source address,
probes, interval, classification thresholds, ports); `Fleet` writes one collector config and
one config per agent into a work folder, starts `probenet collector` and `probenet agent`
for each, waits until the collector is ready and every agent is connected, and stops them
all on exit. The demo and the end-to-end test suite both drive their fleet through it.

With `FleetPlan(fleet_file=True)` the probes go into one `fleet.yaml` that the collector
pushes to every agent (`fleet: {probes_file: ...}`); each agent's file then holds only its
identity, its collector, its token, its state folder and `remote_config: true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import yaml

from probenet.configfile import format_duration
from probenet.lifecycle import EnterOnce

from .client import CollectorApi
from .errors import ApiError, FleetError, LabError, LifecycleError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .targets import FaultyTargets

log = logging.getLogger("probenet.lab.fleet")

ProbeKind = Literal["http", "tcp", "dns", "flow"]

# Run as `python -c` because `probenet` is a namespace package (no `python -m probenet`).
# PR_SET_PDEATHSIG makes the child get SIGTERM if the process that started it dies without
# stopping it (e.g. `kill -9` of the demo), so no agent is left behind probing forever.
CHILD_MAIN = """\
import os, signal, sys
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
except (OSError, AttributeError):
    pass
expected = os.environ.get("PROBENET_DEMO_PARENT")
if expected and os.getppid() != int(expected):
    sys.exit("probenet demo child: the demo that started me is gone")
from probenet.cli import main
main()
"""


def probenet_command() -> list[str]:
    """The command line that runs `probenet` with this interpreter."""
    return [sys.executable, "-c", CHILD_MAIN]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for children that must be told their port).

    Chosen below the kernel's ephemeral range when there is room: a port from that range can
    be taken by any outgoing connection between this check and the child's bind.
    """
    low, _ = _ephemeral_range()
    if low > 11_000:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(10_000, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if `host:port` can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class AgentSeat:
    """One agent of the fleet: identity, region, loopback source address and network."""

    id: str
    region: str
    source_address: str
    network: str


@dataclass(frozen=True, slots=True)
class ProbePlan:
    """One probe every agent runs against the fault-injecting targets."""

    name: str
    kind: ProbeKind
    service: str = ""


@dataclass(frozen=True, slots=True)
class FleetPlan:
    """Everything needed to write the fleet's config files."""

    agents: tuple[AgentSeat, ...]
    probes: tuple[ProbePlan, ...]
    interval_s: float
    http_port: int
    grpc_port: int
    timeout_s: float | None = None  # default: 80% of the interval, at most 5s
    classification: Mapping[str, Any] = field(default_factory=dict)
    tokens: bool = True
    confirm_delay_s: float | None = None  # None: the agent's default
    collector_settings: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"tick": "250ms"}
    # True: the probes live in the collector's fleet file and are pushed to the agents.
    fleet_file: bool = False

    def __post_init__(self) -> None:
        """Refuse plans the agents or the collector would refuse later, with a clearer word."""
        ids = [a.id for a in self.agents]
        if len(set(ids)) != len(ids):
            raise LabError(f"duplicate agent ids in the fleet plan: {ids}")
        names = [p.name for p in self.probes]
        if len(set(names)) != len(names):
            raise LabError(f"duplicate probe names in the fleet plan: {names}")
        if self.interval_s <= 0:
            raise LabError("the probe interval must be positive")
        if self.effective_timeout_s >= self.interval_s:
            raise LabError("the probe timeout must be shorter than the interval")

    @property
    def effective_timeout_s(self) -> float:
        """The probes' timeout."""
        if self.timeout_s is not None:
            return self.timeout_s
        return round(min(self.interval_s * 0.8, 5.0), 3)

    @property
    def regions(self) -> list[str]:
        """Regions in the order their first agent is listed."""
        return list(dict.fromkeys(a.region for a in self.agents))

    def agent(self, agent_id: str) -> AgentSeat:
        """The seat of `agent_id`."""
        for seat in self.agents:
            if seat.id == agent_id:
                return seat
        raise LabError(f"no agent {agent_id!r} in the fleet plan")

    def agents_by_address(self) -> dict[str, AgentSeat]:
        """Source address -> agent (how a target tells who is asking)."""
        return {a.source_address: a for a in self.agents}

    @property
    def tcp_probes(self) -> list[str]:
        """Names of the tcp probes (each gets its own target port)."""
        return [p.name for p in self.probes if p.kind == "tcp"]

    @property
    def http_base(self) -> str:
        """The collector's HTTP base URL."""
        return f"http://127.0.0.1:{self.http_port}"


def flow_config(targets: FaultyTargets, password_file: Path) -> dict[str, Any]:
    """The `flow:` options of a login journey: home (read the CSRF token), login, feed.

    The password comes from `password_file` (a secret: never logged, sent or exported);
    the login step does not follow its redirect, so a refused login fails at `login`
    rather than at `feed`.
    """
    return {
        "variables": {"user": targets.journey.user},
        "secrets": {"password": {"file": str(password_file)}},
        "steps": [
            {"name": "home", "expect": {"status": ["200"]},
             "extract": {"csrf": {"body_regex": 'name="csrf" value="([^"]+)"'}}},
            {"name": "login",
             "request": {"method": "POST", "url": "login", "follow_redirects": False,
                         "form": {"user": "${user}", "password": "${password}",
                                  "csrf": "${csrf}"}},
             "expect": {"status": ["303"], "headers": {"location": "feed$"}}},
            {"name": "feed", "request": {"url": "feed"},
             "expect": {"status": ["200"], "body_regex": "Welcome"}},
        ],
    }


def probe_config(probe: ProbePlan, targets: FaultyTargets,
                 secrets_dir: Path | None = None) -> dict[str, Any]:
    """One entry of an agent's `probes:` list, pointing at the fault-injecting targets.

    A `flow` probe reads its password from `secrets_dir/<probe>` (see `write_configs`).
    """
    entry: dict[str, Any] = {"name": probe.name}
    if probe.service:
        entry["service"] = probe.service
    entry["kind"] = probe.kind
    if probe.kind == "http":
        entry["target"] = targets.http_url(probe.name)
        entry["http"] = {"expect_status": ["2xx"]}
        entry["trace"] = {"on_failure": True}  # a path trace when a failure is confirmed
    elif probe.kind == "tcp":
        entry["target"] = targets.tcp_address(probe.name)
        entry["tcp"] = {"expect": "ready"}
        entry["trace"] = {"on_failure": True}
    elif probe.kind == "flow":
        if secrets_dir is None:
            raise LabError(f"flow probe {probe.name!r}: no folder for its secret file")
        entry["target"] = targets.flow_url(probe.name)
        entry["flow"] = flow_config(targets, secrets_dir / probe.name)
    else:
        entry["target"] = targets.dns_name(probe.name)
        entry["dns"] = {"server": targets.dns_server(), "record": "A",
                        "expect_rcode": "NOERROR"}
    return entry


FLEET_FILE_NAME = "fleet.yaml"


def probe_defaults(plan: FleetPlan) -> dict[str, Any]:
    """The `defaults:` every probe of the plan shares (interval, timeout, confirm delay)."""
    defaults: dict[str, Any] = {"interval": format_duration(plan.interval_s),
                                "timeout": format_duration(plan.effective_timeout_s)}
    if plan.confirm_delay_s is not None:
        defaults["confirm_delay"] = format_duration(plan.confirm_delay_s)
    return defaults


def fleet_file_config(plan: FleetPlan, targets: FaultyTargets, workdir: Path) -> dict[str, Any]:
    """The collector's fleet file: the plan's defaults and probes, for every agent."""
    return {"defaults": probe_defaults(plan),
            "probes": [probe_config(p, targets, workdir / "secrets") for p in plan.probes]}


def collector_config(plan: FleetPlan, workdir: Path) -> dict[str, Any]:
    """The collector's config: loopback listeners, the agent registry, journal, thresholds."""
    registry = []
    for seat in plan.agents:
        entry: dict[str, Any] = {"id": seat.id, "region": seat.region}
        if plan.tokens:
            entry["token_file"] = str(workdir / "tokens" / seat.id)
        registry.append(entry)
    config: dict[str, Any] = {
        "listen": {"grpc": f"127.0.0.1:{plan.grpc_port}", "http": f"127.0.0.1:{plan.http_port}"},
        "agents": registry,
        "journal": {"path": str(workdir / "journal.db")},
    }
    if plan.classification:
        config["classification"] = dict(plan.classification)
    if plan.fleet_file:
        config["fleet"] = {"probes_file": str(workdir / FLEET_FILE_NAME)}
    config.update(plan.collector_settings)
    return config


def agent_config(plan: FleetPlan, seat: AgentSeat, targets: FaultyTargets,
                 workdir: Path) -> dict[str, Any]:
    """One agent's config: identity, source address, its collector, and every probe.

    With `plan.fleet_file`, no probe: identity, collector, token, state folder and
    `remote_config: true` (the collector pushes the probes).
    """
    collector: dict[str, Any] = {"address": f"127.0.0.1:{plan.grpc_port}"}
    if plan.tokens:
        collector["token_file"] = str(workdir / "tokens" / seat.id)
    identity: dict[str, Any] = {"id": seat.id, "region": seat.region,
                                "labels": {"network": seat.network},
                                "source_address": seat.source_address}
    if plan.fleet_file:
        identity["state_dir"] = str(workdir / "state" / seat.id)
        return {"agent": identity, "collectors": [collector], "remote_config": True}
    return {
        "agent": identity,
        "collectors": [collector],
        "defaults": probe_defaults(plan),
        "probes": [probe_config(p, targets, workdir / "secrets") for p in plan.probes],
    }


def write_configs(plan: FleetPlan, targets: FaultyTargets, workdir: Path) -> dict[str, Path]:
    """Write tokens, `collector.yaml` and `agent-<id>.yaml`; return name -> config path.

    With `plan.fleet_file`, also `fleet.yaml` (returned as `fleet`).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    if plan.tokens:
        tokens = workdir / "tokens"
        tokens.mkdir(mode=0o700, exist_ok=True)
        for seat in plan.agents:
            path = tokens / seat.id
            if not path.exists():
                path.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
                path.chmod(0o600)
    flows = [p.name for p in plan.probes if p.kind == "flow"]
    if flows:
        folder = workdir / "secrets"
        folder.mkdir(mode=0o700, exist_ok=True)
        for name in flows:
            path = folder / name
            path.write_text(targets.login_password + "\n", encoding="utf-8")
            path.chmod(0o600)
    paths = {"collector": workdir / "collector.yaml"}
    if plan.fleet_file:
        paths["fleet"] = workdir / FLEET_FILE_NAME
        _dump(paths["fleet"], fleet_file_config(plan, targets, workdir))
    _dump(paths["collector"], collector_config(plan, workdir))
    for seat in plan.agents:
        paths[seat.id] = workdir / f"agent-{seat.id}.yaml"
        _dump(paths[seat.id], agent_config(plan, seat, targets, workdir))
    return paths


def _dump(path: Path, data: dict[str, Any]) -> None:
    text = "# generated by probenet demo\n" + yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")


def log_tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a child's log file ('' if there is none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass(slots=True)
class _Child:
    name: str
    argv: list[str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    stopping: bool = False
    watcher: asyncio.Task[None] | None = None


class Fleet:
    """The collector and every agent of a `FleetPlan`, as child processes.

    An async context manager: entering writes the configs into `workdir`, starts the
    collector and waits for `/readyz`, starts every agent and waits until the collector sees
    each connected; leaving stops every child (SIGTERM, then SIGKILL after `stop_grace_s`).
    A child that exits without being asked to is reported by `wait_failure()`.
    """

    def __init__(
        self,
        plan: FleetPlan,
        targets: FaultyTargets,
        workdir: Path,
        *,
        command: Sequence[str] | None = None,
        log_level: str = "info",
        ready_timeout_s: float = 60.0,
        stop_grace_s: float = 10.0,
    ) -> None:
        """Nothing starts until the context is entered."""
        self.plan = plan
        self.workdir = workdir
        self._targets = targets
        self._command = list(command or probenet_command())
        self._log_level = log_level
        self._ready_timeout_s = ready_timeout_s
        self._stop_grace_s = stop_grace_s
        self._children: dict[str, _Child] = {}
        self._failures: asyncio.Queue[FleetError] = asyncio.Queue()
        self._task_group: asyncio.TaskGroup | None = None
        self._lifecycle = EnterOnce("Fleet", LifecycleError)
        self.config_paths: dict[str, Path] = {}

    @property
    def api_url(self) -> str:
        """The collector's HTTP base URL."""
        return self.plan.http_base

    def log_path(self, name: str) -> Path:
        """Where the child `name` (`collector` or an agent id) writes its log."""
        return self.workdir / "logs" / f"{name}.log"

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the collector, then every agent; wait until all are up."""
        self._lifecycle.enter()
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        try:
            self.config_paths = write_configs(self.plan, self._targets, self.workdir)
            await self.start_collector()
            await asyncio.gather(*(self.start_agent(a.id, wait=False)
                                   for a in self.plan.agents))
            await self.wait_agents_connected([a.id for a in self.plan.agents])
            if self.plan.fleet_file:
                await self.wait_agents_configured([a.id for a in self.plan.agents])
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop every child; idempotent."""
        if not self._lifecycle.leave():
            return
        agents = [name for name in self._children if name != "collector"]
        await asyncio.gather(*(self._stop(name) for name in agents))
        if "collector" in self._children:
            await self._stop("collector")
        if self._task_group is not None:
            for child in self._children.values():
                if child.watcher is not None:
                    child.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task_group.__aexit__(None, None, None)

    async def wait_failure(self) -> FleetError:
        """Wait until a child exits without being asked to; return what happened."""
        return await self._failures.get()

    # -- children --------------------------------------------------------------------------

    async def _spawn(self, name: str, subcommand: str, config: Path) -> None:
        self._lifecycle.check_running()
        assert self._task_group is not None
        old = self._children.get(name)
        if old is not None and old.process is not None and old.process.returncode is None:
            raise LabError(f"{name} is already running")
        argv = [*self._command, subcommand, "--config", str(config),
                "--log-level", self._log_level]
        child = _Child(name, argv, self.log_path(name))
        env = dict(os.environ, PROBENET_DEMO_PARENT=str(os.getpid()), PYTHONUNBUFFERED="1")
        with child.log_path.open("ab") as log_file:
            log_file.write(f"--- {time.strftime('%H:%M:%S')} starting {name}\n".encode())
            log_file.flush()
            try:
                child.process = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT, env=env,
                    # Own session: a Ctrl-C in the terminal reaches the demo only, and the
                    # demo stops its children in order.
                    start_new_session=True)
            except OSError as exc:
                raise FleetError(name, f"cannot start: {exc}") from exc
        self._children[name] = child
        child.watcher = self._task_group.create_task(self._watch(child), name=f"watch:{name}")
        log.debug("child started", extra={"child": name, "pid": child.process.pid})

    async def _watch(self, child: _Child) -> None:
        assert child.process is not None
        code = await child.process.wait()
        if not child.stopping:
            tail = log_tail(child.log_path)
            log.error("child exited unexpectedly",
                      extra={"child": child.name, "status": code, "log": str(child.log_path)})
            self._failures.put_nowait(FleetError(child.name, f"exited with status {code}", tail))

    async def _stop(self, name: str, sig: signal.Signals = signal.SIGTERM) -> int | None:
        child = self._children.get(name)
        if child is None or child.process is None:
            return None
        child.stopping = True
        process = child.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                async with asyncio.timeout(self._stop_grace_s):
                    await process.wait()
            except TimeoutError:
                log.warning("child did not stop in time; killing it",
                            extra={"child": name, "grace_s": self._stop_grace_s})
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if child.watcher is not None:
            await asyncio.wait([child.watcher], timeout=1.0)
        return process.returncode

    def is_running(self, name: str) -> bool:
        """True while the child `name` runs."""
        child = self._children.get(name)
        return bool(child and child.process and child.process.returncode is None)

    async def start_collector(self) -> None:
        """Start the collector (again) and wait for `/readyz`."""
        await self._spawn("collector", "collector", self.config_paths["collector"])
        await self.wait_collector_ready()

    async def stop_collector(self, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Stop the collector with `sig` (SIGKILL for a crash); return its exit status."""
        return await self._stop("collector", sig)

    async def start_agent(self, agent_id: str, *, wait: bool = True) -> None:
        """Start one agent (again); with `wait`, until the collector sees it connected."""
        self.plan.agent(agent_id)
        await self._spawn(agent_id, "agent", self.config_paths[agent_id])
        if wait:
            await self.wait_agents_connected([agent_id])

    async def stop_agent(self, agent_id: str,
                         sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Stop one agent with `sig`; return its exit status."""
        self.plan.agent(agent_id)
        return await self._stop(agent_id, sig)

    # -- readiness -------------------------------------------------------------------------

    def _check_alive(self, names: Sequence[str]) -> None:
        for name in names:
            child = self._children.get(name)
            if child is not None and child.process is not None \
                    and child.process.returncode is not None:
                raise FleetError(name, f"exited with status {child.process.returncode}",
                                 log_tail(child.log_path))

    async def wait_collector_ready(self) -> None:
        """Wait until the collector answers `/readyz` with 200."""
        deadline = time.monotonic() + self._ready_timeout_s
        async with CollectorApi(self.api_url, timeout_s=2.0) as api:
            while not await api.ready():
                self._check_alive(["collector"])
                if time.monotonic() > deadline:
                    raise FleetError("collector", f"not ready within {self._ready_timeout_s:g}s "
                                     f"at {self.api_url}/readyz",
                                     log_tail(self.log_path("collector")))
                await asyncio.sleep(0.1)

    async def wait_agents_connected(self, agent_ids: Sequence[str]) -> None:
        """Wait until `/api/v1/agents` shows each of `agent_ids` connected and fresh."""
        deadline = time.monotonic() + self._ready_timeout_s
        waiting = set(agent_ids)
        async with CollectorApi(self.api_url, timeout_s=2.0) as api:
            while waiting:
                self._check_alive(["collector", *waiting])
                try:
                    agents = await api.agents()
                except ApiError as exc:
                    log.debug("agents not readable yet", extra={"error": str(exc)})
                else:
                    waiting -= {a.id for a in agents if a.connected and not a.stale}
                if not waiting:
                    break
                if time.monotonic() > deadline:
                    name = min(waiting)
                    raise FleetError(name, f"not connected within {self._ready_timeout_s:g}s "
                                     f"(still waiting for {sorted(waiting)})",
                                     log_tail(self.log_path(name)))
                await asyncio.sleep(0.2)

    async def wait_agents_configured(self, agent_ids: Sequence[str]) -> None:
        """Wait until `/api/v1/agents` shows each of `agent_ids` running the fleet file's set.

        Only with `plan.fleet_file`: an agent has no probe until the collector's first push
        is applied (`config_current: true`).
        """
        deadline = time.monotonic() + self._ready_timeout_s
        waiting = set(agent_ids)
        seen: dict[str, Any] = {}
        async with CollectorApi(self.api_url, timeout_s=2.0) as api:
            while waiting:
                self._check_alive(["collector", *waiting])
                try:
                    entries = await api.get_json("/api/v1/agents")
                except ApiError as exc:
                    log.debug("agents not readable yet", extra={"error": str(exc)})
                else:
                    for entry in entries if isinstance(entries, list) else []:
                        if isinstance(entry, dict) and entry.get("id") in waiting:
                            seen[entry["id"]] = entry
                            if entry.get("config_current") is True:
                                waiting.discard(entry["id"])
                if not waiting:
                    break
                if time.monotonic() > deadline:
                    name = min(waiting)
                    state = {key: seen.get(name, {}).get(key) for key in
                             ("config_version", "config_current", "config_error")}
                    raise FleetError(name, f"not running the fleet file's probes within "
                                     f"{self._ready_timeout_s:g}s ({state})",
                                     log_tail(self.log_path(name)))
                await asyncio.sleep(0.2)
