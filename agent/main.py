"""The agent process: `Agent` wiring it together, and `run(path)` for `probenet agent`.

`Agent` holds the scheduler, one spool and stream per collector, and the self-metrics.

Signals (`probenet.lifecycle.StopSignals`): SIGTERM/SIGINT stop probing, flush
unacknowledged results for up to `scheduler.grace_period`, and exit 0 (a second signal exits
at once, status 1). SIGHUP
reloads the config: probes that did not change keep their schedule; a config with errors is
logged issue by issue and the running one is kept. Changes to `agent`, `collectors`,
`buffer`, `stream`, `metrics` and `remote_config` need a restart (the reload says so in
the log).

Remote configuration (`remote_config: true`, agent/remote.py): the probe set a collector
pushes is merged with the local `probes:` and applied like a SIGHUP reload (unchanged
probes keep their schedule); a SIGHUP keeps the pushed set merged. The running set is kept
in the state folder and run again at the next start, before any collector answers.

Sharding by probe (`shard` in the collector entries, agent/config.py): each collector's spool
takes only the results (and path traces) of its shard's probes, so a shard whose collectors
are down holds back no other shard, and its own results wait in its spools (and the state
file). Hellos and ConfigStatus go to every collector; a collector's Hello counts the probes
of its shard, and its interval is the shortest of theirs. Pushed probe sets are applied as
without shards: every collector group is assumed to push the same fleet file, and results
still go by shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Self

from prometheus_client import CollectorRegistry

from probenet.lifecycle import EnterOnce, StopSignals
from probenet.v1 import probenet_pb2 as pb
from probenet.version import __version__

from .config import AgentConfig, ConfigError, load_config
from .errors import AgentError, LifecycleError, ProbeBuildError
from .metrics import (
    AgentStateCollector,
    MetricsServer,
    ProbeCounters,
    RemoteConfigCollector,
    StateFileCollector,
    TraceCounters,
)
from .probes import unavailable_kinds
from .remote import (
    Merged,
    ParsedSet,
    Refusal,
    RemoteSet,
    RemoteSetError,
    choose,
    load_set,
    merge,
    parse_set,
    remote_set_path,
    save_set,
)
from .results import ResultFanout
from .scheduler import Scheduler
from .spool import ProbeShards, Spool
from .state import DurableSpools, StateFile, state_path
from .stream import CollectorStream
from .tracing import Tracer

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .config import ProbeSpec

log = logging.getLogger(__name__)

_RESTART_SECTIONS = ("agent", "collectors", "shards", "buffer", "stream", "metrics",
                     "remote_config")


def preflight(config: AgentConfig) -> list[str]:
    """Problems that stop the agent from starting: files it must read but cannot."""
    problems = []
    for collector in config.collectors:
        files = [("token_file", collector.token_file)]
        if collector.tls is not None:
            files += [("tls.ca_file", collector.tls.ca_file),
                      ("tls.cert_file", collector.tls.cert_file),
                      ("tls.key_file", collector.tls.key_file)]
        for what, path in files:
            if path is not None and not os.access(path, os.R_OK):
                problems.append(f"collector {collector.address}: {what} {path} is not readable")
    return problems


class Agent:
    """The whole agent as one async context manager (enter once; leaving is idempotent)."""

    def __init__(self, config: AgentConfig, *, registry: CollectorRegistry | None = None,
                 epoch: int | None = None, observers: Sequence[Callable[[pb.ProbeResult],
                                                                            None]] = (),
                 state_dir: Path | None = None, config_dir: Path | None = None,
                 icmp_problem: Callable[[str], str | None] | None = None) -> None:
        """Build the probes now (ProbeBuildError names one that cannot be built).

        `epoch` defaults to now in unix nanoseconds; `observers` see every result (tests).
        With `state_dir` (and `buffer.disk`), results are committed to the agent's state
        file before they are sent, and the epoch, sequence and unacknowledged results of
        the previous run in that folder are taken over when entering. With `state_dir` and
        `remote_config`, the pushed probe set is kept there and restored here.
        `config_dir` resolves relative paths of pushed probes (default: the working
        folder); `icmp_problem(ip_family)` says why icmp cannot run here (default: tries
        to open an icmp socket).
        """
        self.local_config = config
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.epoch = epoch if epoch is not None else time.time_ns()
        self.counters = ProbeCounters(self.registry)
        shards = config.shard_count
        self.probe_shards = ProbeShards(shards) if shards is not None else None
        self.spools = [Spool(config.buffer.max_results, takes=self._takes(c.shard))
                       for c in config.collectors]
        self.durable: DurableSpools | None = None
        if state_dir is not None and config.buffer.disk:
            buffer = config.buffer
            state = StateFile(state_path(state_dir, config.agent.id),
                              max_results=buffer.max_results, max_bytes=buffer.max_bytes,
                              sync=buffer.sync)
            self.durable = DurableSpools(state, {
                c.address: s for c, s in zip(config.collectors, self.spools, strict=True)})
        self.fanout = ResultFanout(self.spools, observers, durable=self.durable)
        if self.durable is not None:
            self.registry.register(StateFileCollector(self.durable))
        self.streams = [
            CollectorStream(target, spool, hello=functools.partial(self.hello, target.shard),
                            settings=config.stream, probe_configs=self)
            for target, spool in zip(config.collectors, self.spools, strict=True)]
        self.scheduler = Scheduler(
            config.probes, sink=self._publish, source_address=config.agent.source_address,
            max_concurrent=config.scheduler.max_concurrent,
            confirm_failures=config.scheduler.confirm_failures, counters=self.counters)
        # Path traces (agent/tracing.py): published like results, as kind "trace".
        self.tracer = Tracer(lambda: {n: e.spec for n, e in self.scheduler.probes.items()},
                             sink=self.fanout.publish,
                             source_address=config.agent.source_address,
                             counters=TraceCounters(self.registry))
        # Remote configuration: the last set of each collector (by collector id), the one
        # running, and how it merged with the local probes.
        self._config_dir = config_dir if config_dir is not None else Path()
        self._icmp_problem = icmp_problem if icmp_problem is not None else icmp_socket_problem
        self.remote_candidates: dict[str, RemoteSet] = {}
        self.remote_running: ParsedSet | None = None
        self.merged = Merged(tuple(config.probes), (), ())
        self.remote_path = (remote_set_path(state_dir, config.agent.id)
                            if state_dir is not None and config.remote_config else None)
        if self.remote_path is not None:
            self._restore_remote(self.remote_path)
        elif config.remote_config:
            log.warning("remote_config without a state folder: a pushed probe set is not "
                        "kept across restarts", extra={"agent": config.agent.id})
        self.registry.register(AgentStateCollector(lambda: self.streams,
                                                   lambda: len(self.config.probes)))
        self.registry.register(RemoteConfigCollector(self))
        self.metrics_server = (MetricsServer(config.metrics.listen, self.registry)
                               if config.metrics is not None else None)
        self._stack: contextlib.AsyncExitStack | None = None
        self._lifecycle = EnterOnce("Agent", LifecycleError)

    def _takes(self, shard: int | None) -> Callable[[pb.ProbeResult], bool] | None:
        """Which results the spool of a collector of `shard` holds (None: every one)."""
        if self.probe_shards is None or shard is None:
            return None
        return self.probe_shards.taker(shard)

    def shard_probes(self, shard: int | None) -> list[ProbeSpec]:
        """The running probes whose results go to the collectors of `shard` (None: all)."""
        probes = self.config.probes
        if self.probe_shards is None or shard is None:
            return list(probes)
        return [p for p in probes if self.probe_shards.of(p.name) == shard]

    def hello(self, shard: int | None = None) -> pb.Hello:
        """The Hello sent at every connect to a collector of `shard` (the current config).

        It counts the probes whose results that collector receives, and gives the shortest
        interval among them (`defaults.interval` when it receives none).
        """
        config = self.config
        probes = self.shard_probes(shard)
        interval = min((p.interval for p in probes), default=config.defaults.interval)
        return pb.Hello(
            agent_id=config.agent.id, region=config.agent.region,
            labels=dict(config.agent.labels), version=__version__, epoch=self.epoch,
            interval_ms=max(1, round(interval * 1000)), probe_count=len(probes),
            config_version=self.remote_version, remote_config=config.remote_config)

    # -- remote configuration (agent/remote.py) ---------------------------------------------

    @property
    def remote_config(self) -> bool:
        """Whether this agent accepts pushed probe sets."""
        return self.local_config.remote_config

    @property
    def remote_version(self) -> str:
        """The version of the pushed set running ("" when none)."""
        return self.remote_running.remote.version if self.remote_running is not None else ""

    def remote_summary(self) -> tuple[str, str, int, int]:
        """(version, collector id, pushed probes running, refused) for the metrics."""
        running = self.remote_running
        if running is None:
            return "", "", 0, 0
        return (running.remote.version, running.remote.collector_id, len(self.merged.remote),
                len(self.merged.refused))

    def next_runs(self) -> dict[str, float]:
        """Each probe's next firing, unix seconds (the scheduler's)."""
        return self.scheduler.next_runs()

    def running_status(self) -> pb.ConfigStatus | None:
        """What runs, for a collector (None when no pushed set runs)."""
        running = self.remote_running
        if running is None:
            return None
        return pb.ConfigStatus(
            version=running.remote.version, collector_id=running.remote.collector_id,
            refused=[pb.RefusedProbe(probe=r.probe, reason=r.reason)
                     for r in self.merged.refused])

    def apply_probe_config(self, collector_id: str,
                           probe_config: pb.ProbeConfig) -> pb.ConfigStatus:
        """Take a set from an authenticated collector; run the HA rule's choice."""
        remote = RemoteSet(version=probe_config.version, document=probe_config.document,
                           issued_at_ms=probe_config.issued_at_ms,
                           source=probe_config.source, collector_id=collector_id)
        error = ""
        try:
            self._parse(remote)
        except RemoteSetError as exc:
            error = str(exc)
            log.error("remote probe set refused: %s", error, extra={  # noqa: TRY400
                "collector_id": collector_id, "config_version": remote.version})
        else:
            self.remote_candidates[collector_id] = remote
            try:
                error = self._run_chosen()
            except ProbeBuildError as exc:  # a local probe whose inputs changed meanwhile
                error = str(exc)
                log.error("remote probe set not applied: %s", error)  # noqa: TRY400
        status = self.running_status() or pb.ConfigStatus()
        status.received_version = remote.version
        status.error = error
        return status

    def _parse(self, remote: RemoteSet) -> ParsedSet:
        return parse_set(remote, base_dir=self._config_dir, checks=(unavailable_kinds,))

    def _run_chosen(self) -> str:
        """Run the candidate the HA rule picks (if it is not running yet); an error or ""."""
        chosen = choose(self.remote_candidates.values())
        running = self.remote_running
        if chosen is None or (running is not None and running.remote == chosen):
            return ""
        try:
            parsed = self._parse(chosen)
        except RemoteSetError as exc:  # cannot happen for a candidate; never run it
            self.remote_candidates = {k: v for k, v in self.remote_candidates.items()
                                      if v != chosen}
            return str(exc)
        self._apply(self.local_config.probes, parsed)
        self.remote_running = parsed
        self._persist(chosen)
        log.info("remote probe set applied", extra={
            "config_version": chosen.version, "collector_id": chosen.collector_id,
            "source": chosen.source, "remote_probes": len(self.merged.remote),
            "refused": len(self.merged.refused)})
        for refusal in self.merged.refused:
            log.warning("remote probe refused: %s", refusal.reason, extra={
                "probe": refusal.probe, "config_version": chosen.version})
        running_status = self.running_status()
        if running_status is not None:
            for stream in self.streams:  # every collector learns what runs now
                if stream.collector_id != chosen.collector_id:
                    stream.announce(running_status)
        return ""

    def _apply(self, local: Sequence[ProbeSpec], parsed: ParsedSet | None) -> dict[str, int]:
        """Merge and hand to the scheduler; a pushed probe that cannot be built is refused."""
        merged = merge(local, parsed, icmp_problem=self._icmp_problem)
        remote_names = {spec.name for spec in merged.remote}
        while True:
            try:
                counts = self.scheduler.update(merged.probes)
            except ProbeBuildError as exc:
                if exc.probe not in remote_names:
                    raise
                remote_names.discard(exc.probe)
                merged = Merged(
                    tuple(p for p in merged.probes if p.name != exc.probe),
                    tuple(p for p in merged.remote if p.name != exc.probe),
                    (*merged.refused, Refusal(exc.probe, exc.message)))
                continue
            break
        self.merged = merged
        self.config = self.config.model_copy(update={"probes": list(merged.probes)})
        self.tracer.sync()
        return counts

    def _persist(self, remote: RemoteSet) -> None:
        if self.remote_path is None:
            return
        try:
            save_set(self.remote_path, remote)
        except OSError as exc:
            log.warning("remote probe set not kept on disk: %s", exc, extra={
                "path": str(self.remote_path), "config_version": remote.version})

    def _restore_remote(self, path: Path) -> None:
        """Run the set kept by the previous run (a bad one is logged and ignored)."""
        remote = load_set(path)
        if remote is None:
            return
        try:
            parsed = self._parse(remote)
            self._apply(self.local_config.probes, parsed)
        except (RemoteSetError, ProbeBuildError) as exc:
            log.warning("remote probe set not restored: %s", exc, extra={
                "path": str(path), "config_version": remote.version})
            return
        self.remote_candidates[remote.collector_id] = remote
        self.remote_running = parsed
        log.info("remote probe set restored", extra={
            "path": str(path), "config_version": remote.version,
            "collector_id": remote.collector_id, "source": remote.source,
            "remote_probes": len(self.merged.remote), "refused": len(self.merged.refused)})

    async def __aenter__(self) -> Self:
        """Start the metrics endpoint, the streams, then the probes."""
        self._lifecycle.enter()
        async with contextlib.AsyncExitStack() as stack:
            if self.durable is not None:
                self._restore(self.durable)
                stack.callback(self.durable.close)
                stack.push_async_callback(self.durable.drain)
                tasks = await stack.enter_async_context(asyncio.TaskGroup())
                acks = tasks.create_task(self.durable.run_acks(), name="agent-state-acks")
                stack.callback(acks.cancel)
            if self.metrics_server is not None:
                await stack.enter_async_context(self.metrics_server)
            for stream in self.streams:
                await stack.enter_async_context(stream)
            await stack.enter_async_context(self.scheduler)
            await stack.enter_async_context(self.tracer)
            self._stack = stack.pop_all()
        agent = self.config.agent
        log.info("agent started", extra={
            "agent": agent.id, "region": agent.region, "probes": len(self.config.probes),
            "collectors": ",".join(c.address for c in self.config.collectors),
            "source_address": agent.source_address or "", "epoch": self.epoch})
        _check_icmp_permission(self.config)
        return self

    def _publish(self, result: pb.ProbeResult) -> None:
        """Publish a probe result; a confirmed failure may start a path trace."""
        self.fanout.publish(result)
        self.tracer.observe(result)

    def _restore(self, durable: DurableSpools) -> None:
        """Take over the state file's epoch, sequence and unacknowledged results."""
        restored = durable.state.open(self.epoch)
        self.epoch = restored.epoch
        self.fanout.last_seq = restored.last_seq
        queued = durable.restore(restored)
        log.info("agent state %s", "created" if restored.fresh else "restored", extra={
            "path": str(durable.state.path), "epoch": restored.epoch,
            "last_seq": restored.last_seq, "unacknowledged": queued})

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop everything at once (idempotent); see `shutdown` for a graceful stop."""
        if not self._lifecycle.leave():
            return
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def shutdown(self, grace_s: float) -> bool:
        """Stop probing, then flush buffered results for up to `grace_s`; True if all went."""
        self.scheduler.stop()
        if self.durable is not None:
            await self.durable.drain()  # the last results reach the spools
        buffered = sum(len(s) for s in self.spools)
        log.info("agent stopping: flushing results", extra={
            "buffered": buffered, "grace_s": grace_s})
        flushed = all(await asyncio.gather(*(s.flush(grace_s) for s in self.streams)))
        if not flushed:
            log.warning("agent stopping with results not acknowledged", extra={
                "buffered": sum(len(s) for s in self.spools)})
        return flushed

    def reload(self, config: AgentConfig) -> dict[str, int]:
        """Apply a new config's probes and scheduler settings (ProbeBuildError: unchanged).

        The pushed probe set that runs stays merged with the new local probes.
        """
        counts = self._apply(config.probes, self.remote_running)
        self.local_config = config
        self.scheduler.set_max_concurrent(config.scheduler.max_concurrent)
        self.scheduler.confirm_failures = config.scheduler.confirm_failures
        needs_restart = [name for name in _RESTART_SECTIONS
                         if getattr(config, name) != getattr(self.config, name)]
        # Sections that need a restart keep their running values.
        kept = {n: getattr(self.config, n) for n in needs_restart}
        self.config = config.model_copy(update={**kept, "probes": list(self.merged.probes)})
        self.local_config = config.model_copy(update=kept)
        log.info("config reloaded", extra=counts)
        if needs_restart:
            log.warning("config sections changed that apply only after a restart",
                        extra={"sections": ",".join(needs_restart)})
        return counts


async def serve(path: Path, config: AgentConfig, *, ready: asyncio.Event | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; reload on SIGHUP. Return the exit status.

    A second SIGTERM/SIGINT while the agent flushes ends the process at once, status 1.
    """
    reload_requested = asyncio.Event()
    with StopSignals(log, forced_status=1,
                     handlers={signal.SIGHUP: reload_requested.set}) as signals:
        stop = signals.stop
        async with Agent(config, state_dir=choose_state_dir(path, config),
                         config_dir=path.parent) as agent, \
                asyncio.TaskGroup() as tasks:
            tasks.create_task(_reload_loop(agent, path, reload_requested, stop),
                              name="agent-reload")
            if ready is not None:
                ready.set()
            await stop.wait()
            await agent.shutdown(config.scheduler.grace_period)
    log.info("agent stopped")
    return 0


def choose_state_dir(path: Path, config: AgentConfig) -> Path | None:
    """The folder of the agent's state file (and kept probe set); None: memory only.

    Chosen with `buffer.disk` or `remote_config` (the pushed set is kept there).

    `agent.state_dir` when set (an unusable one fails the start, naming it); else systemd's
    $STATE_DIRECTORY; else `<config name>.state` next to the config file. A default folder
    that cannot be created (a read-only config folder) is logged, and the agent runs with
    its buffer in memory only.
    """
    if not config.buffer.disk and not config.remote_config:
        return None
    if config.agent.state_dir is not None:
        return Path(config.agent.state_dir)
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    folder = Path(systemd) if systemd else path.parent / f"{path.stem}.state"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        log.warning("no state directory: unacknowledged results are kept in memory only, "
                    "and a restart starts a new epoch; set agent.state_dir", extra={
                        "state_dir": str(folder), "error": exc.strerror or str(exc)})
        return None
    return folder


async def _reload_loop(agent: Agent, path: Path, requested: asyncio.Event,
                       stop: asyncio.Event) -> None:
    while not stop.is_set():
        waiter = asyncio.ensure_future(requested.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
        if stop.is_set():
            return
        requested.clear()
        log.info("reloading config", extra={"path": str(path)})
        try:
            config = load_config(path, checks=(unavailable_kinds,))
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("config reload rejected: %s", issue)  # noqa: TRY400 - no traceback
            continue
        try:
            agent.reload(config)
        except ProbeBuildError as exc:
            log.error("config reload rejected: %s", exc)  # noqa: TRY400 - no traceback
        release_freed_memory()


def release_freed_memory() -> None:
    """Give memory freed after a config load back to the OS (glibc keeps it otherwise).

    Parsing a config of ten thousand probes peaks at about twice what the parsed objects
    keep; without this the agent would idle at that peak.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Uvloop's loop when installed (optional speed-up), else asyncio's."""
    if os.environ.get("PROBENET_NO_UVLOOP"):
        return None
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def icmp_socket_problem(ip_family: str) -> str | None:
    """Why this process cannot open an icmp socket of `ip_family` (None when it can)."""
    from .probes.icmp import icmp_socket_mode  # noqa: PLC0415 - only with icmp probes

    try:
        icmp_socket_mode("ip6" if ip_family == "ip6" else "ip4")
    except (PermissionError, OSError) as exc:
        return str(exc)
    return None


def _check_icmp_permission(config: AgentConfig) -> None:
    """Say once, at start, when icmp probes cannot work here (not once per run)."""
    families = {(p.icmp.ip_family if p.icmp else None) or "ip4"
                for p in config.probes if p.kind == "icmp"}
    if not families:
        return
    from .probes.icmp import icmp_socket_mode  # noqa: PLC0415 - only with icmp probes

    for family in sorted(families):
        try:
            icmp_socket_mode(family)
        except (PermissionError, OSError) as exc:
            log.error("icmp probes will fail: %s", exc, extra={"ip_family": family})  # noqa: TRY400


def run(path: str | Path) -> int:
    """`probenet agent --config PATH`: 0 after a clean stop, 1 on a config error."""
    path = Path(path)
    try:
        config = load_config(path, checks=(unavailable_kinds,))
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)  # noqa: T201 - the CLI's error output
        return 1
    release_freed_memory()
    problems = preflight(config)
    if problems:
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)  # noqa: T201
        return 1
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(serve(path, config))
    except ProbeBuildError as exc:
        print(f"{path}: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    except AgentError as exc:
        log.error("agent failed: %s", exc)  # noqa: TRY400
        return 1
    except (asyncio.CancelledError, KeyboardInterrupt):
        return 1

