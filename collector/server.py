"""`CollectorService`: journal, classifier, gRPC ingest, HTTP API and loops, wired together.

    async with CollectorService(config) as service:   # journal loaded, ports bound
        print(service.grpc_address, service.http.url)
        await stop.wait()
    # drained: health NOT_SERVING, streams ended, final tick journaled, journal closed

Start order: journal (restore open outages and watermarks) -> gRPC (ingest, health,
reflection) -> HTTP -> loops (tick, watermark group commit, event-loop lag) in one TaskGroup
-> ready. Stop order is the reverse, with a drain first so agents move to another collector
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from probenet.addresses import format_host_port, split_listen
from probenet.lifecycle import EnterOnce

from .api import HttpApi
from .classify import Classifier
from .config import CollectorConfig, config_summary, read_secret
from .details import DroppedValues, DroppedValuesMetrics, LatestDetails
from .errors import LifecycleError, ServiceError
from .exposition import MetricsPage
from .fleet import FleetMetrics, FleetPusher, load_fleet
from .ingest import SERVICE_NAME, AckMetrics, IngestServicer
from .journal import CommitMetrics, Journal, TransitionCommitter
from .looplag import LoopLagMonitor
from .maintenance import RETAIN_ENDED_S, MaintenanceStore
from .maintenance_api import MaintenanceMetrics
from .metrics import FailureCounts, IngestMetrics
from .status.routes import StatusPage
from .status.view import StatusSettings
from .traces import PathMetrics, TraceStore
from .uptime_api import outage_detail, uptime_reports

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .model import TransitionSink
    from .uptime import UptimeReport

log = logging.getLogger(__name__)

# With no ack waiting, changed watermarks (a new epoch's) are still committed this often.
WATERMARK_FLUSH_S = 2.0
_HEALTH = health_pb2.HealthCheckResponse


def grpc_server_options(config: CollectorConfig) -> list[tuple[str, Any]]:
    """The gRPC server's explicit options: message limits and keepalive."""
    limit = config.limits.max_message_bytes
    return [
        # Twice the limit at the transport: the ingest rejects (and counts) messages between
        # the limit and this hard cap itself; grpc ends streams past the cap uncounted.
        ("grpc.max_receive_message_length", 2 * limit),
        ("grpc.max_send_message_length", limit),
        # Keepalive: find dead agents within ~40 s; let agents ping every 10 s at most.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # A keepalive ping due while a flow-control ping is unanswered waits for that one,
        # under this timeout (default 60 s): without it "~40 s" could be ~90 s.
        ("grpc.http2.ping_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Two collectors must never share a port by accident (SO_REUSEPORT is grpc's default).
        ("grpc.so_reuseport", 0),
    ]


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ServiceError(f"cannot read {what} {path}: {exc.strerror}") from exc


class CollectorService:
    """The whole collector as one async context manager (enter once; leaving is idempotent).

    `clock` gives `now` to the classifier (tests move time by hand). `sinks` receive every
    committed transition (MQTT publisher, demo, tests). `registry` holds the small
    prometheus_client metrics; /metrics is `page` (`metrics:` in the config), which renders
    the classifier's and the per-kind families itself and appends the registry's.
    `kind_details=False` neither keeps nor exports the per-kind details, whatever the config
    says (measurements).
    """

    def __init__(self, config: CollectorConfig, *, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time,
                 sinks: Sequence[TransitionSink] = (), kind_details: bool = True) -> None:
        """Build every part; nothing is opened or bound until the service is entered."""
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self.classifier = Classifier(config.classification.params())
        settings = config.metrics
        if not kind_details:
            settings = settings.model_copy(update={"per_kind_details": False})
        self.details = LatestDetails() if settings.kind_details else None
        # Values left out: by the details store at scrape, and by the ingest (a stray step).
        self.dropped_values: DroppedValues[str] = (
            self.details.dropped if self.details is not None else DroppedValues())
        self.registry.register(DroppedValuesMetrics(self.dropped_values))
        self.journal = Journal(config.journal.path)
        self.traces = TraceStore(self.journal, open_outages=self.classifier.open_outages)
        self.registry.register(PathMetrics(self.traces))
        self.failures = FailureCounts(settings.max_failure_series)
        self.ingest_metrics = IngestMetrics(self.registry)
        self._commit_metrics = CommitMetrics(self.registry)
        self.registered_agents = [(a.id, a.region) for a in config.agents or ()]
        # With a fleet file: validated now (ConfigError: a bad file stops the start).
        self.fleet: FleetPusher | None = None
        if config.fleet is not None:
            self.fleet = FleetPusher(load_fleet(config.fleet.probes_file), clock=clock)
            self.registry.register(FleetMetrics(self.fleet))
        self._fleet_reload = asyncio.Event()
        agent_config = self.fleet.view if self.fleet is not None else None
        self.page = MetricsPage(self.registry, classifier=self.classifier, details=self.details,
                                failures=self.failures,
                                registered_agents=self.registered_agents, settings=settings)
        self.committer = TransitionCommitter(self.classifier, self.journal, sinks=sinks,
                                             observer=self._commit_metrics)
        self.ingest: IngestServicer | None = None
        self.maintenance = self._maintenance_store(config)
        self.registry.register(MaintenanceMetrics(self.maintenance, self.classifier))
        self.status_page = StatusPage(
            classifier=self.classifier, journal_path=self.journal.path,
            settings=StatusSettings(config.status_page, config.regions),
            registered_agents=self.registered_agents, maintenance=self.maintenance,
            uptime=self._uptime_reports, outage_detail=outage_detail, clock=self._clock,
            agent_config=agent_config)
        self.http = HttpApi(config.listen.http, classifier=self.classifier,
                            journal=self.journal, page=self.page,
                            ready=lambda: self.ready,
                            registered_agents=self.registered_agents,
                            maintenance=self.maintenance, status=self.status_page,
                            agent_config=agent_config, sharding=config.sharding,
                            registry=self.registry)
        self.grpc_port = 0
        self.ready = False
        self._lifecycle = EnterOnce("CollectorService", LifecycleError)
        self._drained = False
        self._grpc: grpc.aio.Server | None = None
        self._health: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._stopping = asyncio.Event()
        # Set when an ack waits for the group commit of its watermark (and at stop).
        self._commit_wanted = asyncio.Event()
        self._ack_metrics = AckMetrics(self.registry)
        # Measures how long anything (a scrape, a big API answer) holds the loop.
        self.loop_lag = LoopLagMonitor(self.registry)

    @property
    def grpc_address(self) -> str:
        """`host:port` the gRPC listener is bound to (the real port when configured as 0)."""
        host, _ = split_listen(self.config.listen.grpc)
        return format_host_port(host, self.grpc_port)

    # -- start ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the journal, restore, bind gRPC and HTTP, start the loops."""
        self._lifecycle.enter()
        self._check_exposure()
        async with contextlib.AsyncExitStack() as stack:
            self.journal.open()
            stack.callback(self.journal.close)
            self._restore()
            await self._start_grpc(stack)
            await stack.enter_async_context(self.http)
            tasks = asyncio.TaskGroup()
            await tasks.__aenter__()
            self._tasks = tasks
            tasks.create_task(self._tick_loop(), name="collector-tick")
            tasks.create_task(self._commit_loop(), name="collector-watermark-commit")
            tasks.create_task(self.loop_lag.run(self._stopping), name="collector-loop-lag")
            if self.fleet is not None:
                tasks.create_task(self._fleet_watch_loop(), name="collector-fleet-watch")
            await self._health.set("", _HEALTH.SERVING)
            await self._health.set(SERVICE_NAME, _HEALTH.SERVING)
            self.ready = True
            self._stack = stack.pop_all()
        log.info("collector started", extra={
            **config_summary(self.config), "grpc_bound": self.grpc_address,
            "http_bound": self.http.url,
            "open_outages": len(self.classifier.open_outages())})
        return self

    async def _uptime_reports(self, journal_path: str, probes: Sequence[str], days: int,
                              now: float) -> dict[str, UptimeReport]:
        """The status page's uptime bars, the running collector's time counted up to now."""
        return await uptime_reports(journal_path, probes, days, now,
                                    live_run=self.journal.run_id)

    def _maintenance_store(self, config: CollectorConfig) -> MaintenanceStore:
        """Config windows now; API windows are loaded from the journal when it opens."""
        token = None
        if config.api is not None:
            try:
                token = read_secret(config.api.admin_token_file) or None
            except (OSError, UnicodeDecodeError) as exc:
                raise ServiceError(f"cannot read api.admin_token_file "
                                   f"{config.api.admin_token_file}: {exc}") from exc
            if token is None:
                raise ServiceError(f"api.admin_token_file {config.api.admin_token_file} "
                                   "is empty")
        return MaintenanceStore((entry.window() for entry in config.maintenance),
                                admin_token=token, clock=self._clock)

    def apply_maintenance(self, *, commit: bool = True) -> None:
        """Tell the classifier what the open windows cover now (then journal what changed)."""
        now = self._clock()
        self.maintenance.prune(now)
        coverage = self.maintenance.coverage(now)
        self.classifier.set_maintenance(coverage.probes, now, services=coverage.services)
        if commit:
            self.committer.commit()

    def _check_exposure(self) -> None:
        config = self.config
        if config.grpc_on_loopback or config.insecure:
            return
        if config.tls is None:
            raise ServiceError(f"refusing plaintext gRPC on non-loopback {config.listen.grpc} "
                               "without `insecure: true`")
        if config.agents is None:
            raise ServiceError(f"refusing to accept any agent on non-loopback "
                               f"{config.listen.grpc} without an agents registry")

    def _restore(self) -> None:
        open_outages = self.journal.open_outages()
        now = self._clock()
        self.classifier.restore(open_outages, now)
        self.maintenance.load(self.journal.maintenance_windows(ended_after=now - RETAIN_ENDED_S))
        self.traces.load()
        self.apply_maintenance(commit=False)
        self.maintenance.subscribe(self.apply_maintenance)
        self.committer.commit()
        if open_outages:
            log.info("restored open outages", extra={
                "count": len(open_outages), "ids": ",".join(r.id for r in open_outages)})
        self.ingest = IngestServicer.build(
            self.config, classifier=self.classifier, committer=self.committer,
            metrics=self.ingest_metrics, failures=self.failures, details=self.details,
            dropped=self.dropped_values,
            watermarks=self.journal.watermarks(), request_commit=self._commit_wanted.set,
            ack_metrics=self._ack_metrics, clock=self._clock, fleet=self.fleet,
            traces=self.traces)

    async def _start_grpc(self, stack: contextlib.AsyncExitStack) -> None:
        assert self.ingest is not None
        config = self.config
        server = grpc.aio.server(options=grpc_server_options(config))
        server.add_generic_rpc_handlers((self.ingest.rpc_handler(),))
        self._health = health.aio.HealthServicer()
        await self._health.set("", _HEALTH.NOT_SERVING)
        await self._health.set(SERVICE_NAME, _HEALTH.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), server)
        address = config.listen.grpc
        try:
            if config.tls is not None:
                tls = config.tls
                ca = _read(tls.client_ca_file, "client CA") if tls.client_ca_file else None
                credentials = grpc.ssl_server_credentials(
                    [(_read(tls.key_file, "TLS key"), _read(tls.cert_file, "TLS certificate"))],
                    root_certificates=ca, require_client_auth=ca is not None)
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ServiceError(f"cannot listen on gRPC {address}: {exc}") from exc
        if not port:
            raise ServiceError(f"cannot listen on gRPC {address}")
        self.grpc_port = port
        await server.start()
        self._grpc = server

        async def stop_grpc() -> None:
            await server.stop(None)

        stack.push_async_callback(stop_grpc)
        log.info("gRPC listening", extra={"address": self.grpc_address,
                                          "tls": config.tls is not None})

    # -- loops ---------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when the service is stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        return self._stopping.is_set()

    async def _tick_loop(self) -> None:
        while not await self._sleep(self.config.tick):
            try:
                self.tick()
            except Exception:
                log.exception("tick failed")

    def request_fleet_reload(self) -> None:
        """Re-read the fleet file soon (SIGHUP's handler: it only sets an event)."""
        self._fleet_reload.set()

    def reload_fleet(self) -> bool:
        """Re-read the fleet file now; push changed sets. False when kept out (or none)."""
        return self.fleet.reload() if self.fleet is not None else False

    async def _fleet_watch_loop(self) -> None:
        """Reload on request (SIGHUP) or when the file changed (polled every watch_interval)."""
        assert self.fleet is not None
        assert self.config.fleet is not None
        fleet, interval = self.fleet, self.config.fleet.watch_interval
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._fleet_reload.wait()
            if self._stopping.is_set():
                return
            requested = self._fleet_reload.is_set()
            self._fleet_reload.clear()
            try:
                if requested or fleet.changed():
                    fleet.reload()
            except Exception:
                log.exception("fleet file reload failed")

    async def _commit_loop(self) -> None:
        """The group commit for acks waiting: at `commit_interval` after the last commit.

        A batch that finds a commit due runs it itself (collector/ingest.py); this loop
        commits for the acks that no later batch comes to release, and every
        WATERMARK_FLUSH_S what changed without an ack waiting.
        """
        assert self.ingest is not None
        ingest = self.ingest
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATERMARK_FLUSH_S):
                    await self._commit_wanted.wait()
            if self._stopping.is_set():
                return
            # (A batch may have run the commit meanwhile: then wait for the next one due.)
            while (delay_s := ingest.commit_due_in()) > 0:
                if await self._sleep(delay_s):
                    return
            self._commit_wanted.clear()
            failing = self._group_commit(failing=failing)

    def _group_commit(self, *, failing: bool) -> bool:
        """One group commit; True when it failed (logged once per run of failures)."""
        try:
            self.flush_watermarks()
        except Exception:
            if not failing:
                log.exception("watermark commit failed: acks wait until one succeeds")
            return True
        if failing:
            log.info("watermark commits succeed again")
        return False

    def tick(self) -> None:
        """One classifier tick at the service clock's now, journaled and published.

        Maintenance windows open and close by the clock: their coverage is applied first.
        """
        self.apply_maintenance(commit=False)
        self.classifier.tick(self._clock())
        self.committer.commit()

    def flush_watermarks(self) -> None:
        """Commit changed agent watermarks to the journal now (acks waiting for them go out)."""
        if self.ingest is not None:
            self.ingest.commit_watermarks()

    # -- stop ----------------------------------------------------------------------------

    async def drain(self) -> None:
        """Stop accepting: readyz 503, health NOT_SERVING, open streams ended (UNAVAILABLE)."""
        if self._drained:
            return
        self._drained = True
        self.ready = False
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self.ingest is not None:
            self.ingest.drain()

    async def __aexit__(self, *exc: object) -> None:
        """Drain, stop gRPC (bounded by shutdown_grace), final tick and flush, close."""
        await self.aclose()

    async def aclose(self) -> None:
        """Stop everything; calling it again does nothing."""
        if not self._lifecycle.leave():
            return
        await self.drain()
        if self._grpc is not None:
            await self._grpc.stop(self.config.shutdown_grace)
        self._stopping.set()
        self._commit_wanted.set()  # wakes the commit loop, which then ends
        self._fleet_reload.set()  # and the fleet watch
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            await tasks.__aexit__(None, None, None)
        try:
            self.tick()
            self.flush_watermarks()
        except Exception:
            log.exception("final tick or watermark flush failed")
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        log.info("collector stopped", extra={"collector_id": self.config.collector_id})
