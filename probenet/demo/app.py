"""`probenet demo`: targets, collector and agents on loopback, the schedule, the live view."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.live import Live

from probenet.lab.client import CollectorApi
from probenet.lab.errors import ApiError, FleetError, LabError
from probenet.lab.fleet import Fleet, FleetPlan, pick_free_port, port_is_free
from probenet.lab.targets import FaultyTargets
from probenet.lifecycle import StopSignals, abandoned_on

from .errors import DemoError
from .report import DemoEvent, DemoSummary, FleetObserver
from .scenario import demo_plan, demo_schedule
from .schedule import ScheduledFaults, SchedulePosition
from .table import DemoStatus, format_seconds, render_dashboard

if TYPE_CHECKING:
    from collections.abc import Iterator

    from probenet.lab.snapshot import FleetSnapshot

log = logging.getLogger("probenet.demo")

MIN_INTERVAL_S = 0.2
MAX_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """The demo's command-line options, parsed."""

    interval_s: float = 2.0
    duration_s: float | None = None
    ui: bool = True
    http_port: int = 9464
    log_level: str = "info"

    def __post_init__(self) -> None:
        """Refuse values the fleet could not run with."""
        if not MIN_INTERVAL_S <= self.interval_s <= MAX_INTERVAL_S:
            raise DemoError(f"--interval must be between {MIN_INTERVAL_S:g}s and "
                            f"{MAX_INTERVAL_S:g}s (got {self.interval_s:g}s)")
        if self.duration_s is not None and self.duration_s <= 0:
            raise DemoError("--duration must be positive")
        if not 1 <= self.http_port <= 65535:
            raise DemoError(f"--port must be a TCP port number (got {self.http_port})")


class _ConsoleLogHandler(logging.Handler):
    """Log lines printed through the live console, above the table instead of through it.

    A person watches the table: each line is the time and the message only (the structured
    fields are what `--no-ui` prints, for machines).
    """

    def __init__(self, console: Console) -> None:
        super().__init__()
        self._console = console
        self.setFormatter(logging.Formatter("%(asctime)s  %(message)s", datefmt="%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._console.print(self.format(record), markup=False, highlight=False,
                                soft_wrap=True, style="dim")
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _logs_through(console: Console) -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [_ConsoleLogHandler(console)]
    try:
        yield
    finally:
        root.handlers[:] = saved


class DemoRun:
    """One run of the demo: the loops of the running phase (clock, poller, fleet watch)."""

    def __init__(self, options: DemoOptions, *, plan: FleetPlan, policy: ScheduledFaults,
                 fleet: Fleet, api: CollectorApi, live: Live | None) -> None:
        """Everything is started already; `play` runs until a stop."""
        self.options = options
        self.plan = plan
        self.policy = policy
        self.fleet = fleet
        self.api = api
        self.live = live
        self.stop = asyncio.Event()
        self.failure: LabError | None = None
        self.observer = FleetObserver()
        self.phases_played: list[str] = []
        self.snapshot: FleetSnapshot | None = None
        self._api_error: str | None = None
        self._poll_s = max(0.25, min(1.0, options.interval_s / 2))

    def _status(self) -> DemoStatus:
        return DemoStatus(self.plan.http_base, self.policy.position(),
                          len(self.policy.schedule.phases), self._api_error)

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(render_dashboard(self.snapshot, self._status(), time.time()))

    async def play(self) -> None:
        """Run the loops until `stop` is set (deadline, signal or a dead child)."""
        self.policy.start()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._phase_clock(), name="phase-clock")
            group.create_task(self._poll_collector(), name="poll-collector")
            watch = group.create_task(self._watch_fleet(), name="watch-fleet")
            if self.options.duration_s is not None:
                group.create_task(self._deadline(self.options.duration_s), name="deadline")
            await self.stop.wait()
            watch.cancel()

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stop.wait()

    async def _deadline(self, seconds: float) -> None:
        await self._sleep_unless_stopped(seconds)
        if not self.stop.is_set():
            log.info("duration reached; stopping", extra={"duration_s": seconds})
            self.stop.set()

    async def _watch_fleet(self) -> None:
        failure = await self.fleet.wait_failure()
        self.failure = failure
        self.stop.set()

    async def _phase_clock(self) -> None:
        last: tuple[int, int] | None = None
        while not self.stop.is_set():
            position = self.policy.position()
            if position is not None and (position.cycle, position.index) != last:
                last = (position.cycle, position.index)
                self._announce(position)
            self._refresh()
            await self._sleep_unless_stopped(0.25)

    def _announce(self, position: SchedulePosition) -> None:
        self.phases_played.append(position.phase.name)
        log.info("phase %d/%d: %s", position.index + 1, len(self.policy.schedule.phases),
                 position.phase.title,
                 extra={"phase": position.phase.name, "cycle": position.cycle + 1,
                        "lasts_s": round(self.policy.schedule.phase_seconds, 1)})

    async def _poll_collector(self) -> None:
        while not self.stop.is_set():
            try:
                snapshot = await self.api.snapshot()
            except ApiError as exc:
                if str(exc) != self._api_error:
                    log.warning("cannot read the collector's API", extra={"error": str(exc)})
                self._api_error = str(exc)
            else:
                self._api_error = None
                self.snapshot = snapshot
                for event in self.observer.update(snapshot):
                    self._report(event)
                await self._report_paths(snapshot)
            self._refresh()
            await self._sleep_unless_stopped(self._poll_s)

    async def _report_paths(self, snapshot: FleetSnapshot) -> None:
        """Tell where the paths of each open probe outage break, once their traces are in."""
        for outage in snapshot.outages:
            if outage.kind != "probe":
                continue
            try:
                detail = await self.api.get_json(f"/api/v1/outages/{outage.id}")
            except ApiError:
                continue  # resolved meanwhile, or the API is away: the next poll tells
            if isinstance(detail, dict) and (event := self.observer.paths(outage, detail)):
                self._report(event)

    def _report(self, event: DemoEvent) -> None:
        if self.live is not None and event.event == "target_state":
            return  # the live table shows every probe's state already
        log.info("%s", event.message, extra={"event": event.event, **event.fields})

    async def summary(self) -> DemoSummary:
        """Every outage the collector journaled during the run, and the impaired agents."""
        try:
            outages = await self.api.outages()
        except ApiError as exc:
            log.warning("cannot read the outage history; summarising what was seen",
                        extra={"error": str(exc)})
            outages = list(self.observer.seen_outages.values())
        try:
            final = await self.api.snapshot()
        except ApiError:
            pass
        else:
            self.observer.update(final)
        return DemoSummary(outages, dict(self.observer.impaired_agents),
                           self.phases_played, self.policy.elapsed_s)


def _say(text: str, file: TextIO) -> None:
    """A line of the demo's own output (the command's output, not a log line)."""
    file.write(text + "\n")


def _print_fleet_failure(error: FleetError, out: TextIO) -> None:
    _say(f"probenet demo: {error}", file=out)
    if error.log_tail:
        _say(f"--- last lines of {error.name}'s log ---", file=out)
        _say(error.log_tail, file=out)




async def _run(options: DemoOptions, out: TextIO) -> int:
    # A second Ctrl-C exits at once (status 130); the children then get SIGTERM from the
    # kernel (PR_SET_PDEATHSIG), so none is left running.
    with StopSignals(log, stop_message="signal received; stopping every child (again to force)",
                     forced_status=130) as signals:
        return await _run_until(signals.stop, options, out)


async def _run_until(stop_requested: asyncio.Event, options: DemoOptions, out: TextIO) -> int:
    schedule = demo_schedule(options.interval_s)
    plan = demo_plan(options.interval_s, options.http_port, pick_free_port())
    policy = ScheduledFaults(schedule, plan.agents_by_address())
    regions = plan.regions
    _say(f"probenet demo: {len(regions)} regions ({', '.join(regions)}), "
          f"{len(plan.agents)} agents, {len(plan.probes)} probes each, every "
          f"{options.interval_s:g}s; {len(schedule.phases)} phases of "
          f"{format_seconds(schedule.phase_seconds)} (one cycle "
          f"{format_seconds(schedule.cycle_seconds)})", file=out)
    _say(f"  status   {plan.http_base}/status   (the status page: open it in a browser)",
         file=out)
    _say(f"  metrics  {plan.http_base}/metrics", file=out)
    _say(f"  api      {plan.http_base}/api/v1/targets  {plan.http_base}/api/v1/outages  "
          f"{plan.http_base}/api/v1/agents", file=out)
    out.flush()

    try:
        with tempfile.TemporaryDirectory(prefix="probenet-demo-") as workdir:
            async with contextlib.AsyncExitStack() as stack:
                with abandoned_on(stop_requested):  # children started so far are stopped
                    targets = await stack.enter_async_context(
                        FaultyTargets(policy, tcp_probes=plan.tcp_probes))
                    fleet = await stack.enter_async_context(
                        Fleet(plan, targets, Path(workdir), log_level=options.log_level))
                return await _play(options, plan=plan, policy=policy, fleet=fleet,
                                   stop_requested=stop_requested, out=out)
    except asyncio.CancelledError:
        if not stop_requested.is_set():
            raise
        _say("probenet demo: stopped while starting", file=out)
        return 0
    except FleetError as exc:
        _print_fleet_failure(exc, out)
        return 1
    except (DemoError, LabError) as exc:
        _say(f"probenet demo: {exc}", file=out)
        return 1


async def _play(options: DemoOptions, *, plan: FleetPlan, policy: ScheduledFaults,
                fleet: Fleet, stop_requested: asyncio.Event, out: TextIO) -> int:
    _say(f"fleet up: collector and {len(plan.agents)} agents connected; the schedule starts "
          "now (Ctrl-C to stop)", file=out)
    out.flush()
    console = Console(file=out) if options.ui else None
    async with CollectorApi(plan.http_base) as api:
        live_cm: contextlib.AbstractContextManager[Live | None]
        if console is not None:
            live_cm = Live(console=console, refresh_per_second=4, transient=False,
                           redirect_stdout=False, redirect_stderr=False)
        else:
            live_cm = contextlib.nullcontext()
        with live_cm as live, (_logs_through(console) if console is not None
                               else contextlib.nullcontext()):
            run = DemoRun(options, plan=plan, policy=policy, fleet=fleet, api=api, live=live)

            async def forward_stop() -> None:
                await stop_requested.wait()
                run.stop.set()

            forwarder = asyncio.ensure_future(forward_stop())
            try:
                await run.play()
            finally:
                forwarder.cancel()
        if run.failure is not None:
            if isinstance(run.failure, FleetError):
                _print_fleet_failure(run.failure, out)
            else:
                _say(f"probenet demo: {run.failure}", file=out)
            return 1
        summary = await run.summary()
    for line in summary.lines():
        _say(line, file=out)
    if not options.ui:
        _say(json.dumps(summary.to_json()), file=out)  # for scripts: the last line
    out.flush()
    return 0


def run_demo(options: DemoOptions, out: TextIO | None = None) -> int:
    """Run the demo until `duration_s` passes or a signal; return the exit status."""
    stream = out or sys.stdout
    if not port_is_free(options.http_port):
        _say(f"probenet demo: port {options.http_port} on 127.0.0.1 is in use; pick "
              "another with --port", file=stream)
        return 1
    return asyncio.run(_run(options, stream))
