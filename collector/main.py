"""`probenet collector --config F`: load the config, run the service until SIGTERM/SIGINT.

SIGHUP re-reads the fleet file (`fleet.probes_file`), as its file watch does on a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from probenet.configfile import ConfigError
from probenet.lifecycle import StopSignals

from .config import CollectorConfig, MqttConfig, load_config
from .errors import CollectorError
from .fleet import load_fleet
from .server import CollectorService

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from .events import MqttPublisher
    from .model import TargetView, TransitionSink

log = logging.getLogger(__name__)


def run(path: str | Path) -> int:
    """Run the collector of config file `path`; 0 after a clean stop, 1 on a bad config."""
    try:
        config = load_config(path)
        if config.fleet is not None:
            load_fleet(config.fleet.probes_file)  # a bad fleet file is a config error
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)  # noqa: T201 - the user's terminal, not a log
        return 1
    try:
        return asyncio.run(serve(config))
    except CollectorError as exc:
        # No traceback: the message names the file or address at fault.
        log.error("collector failed: %s", exc, extra={"error": type(exc).__name__})  # noqa: TRY400
        return 1


def _mqtt_publisher(config: MqttConfig, registry: CollectorRegistry, collector_id: str,
                    initial_states: Callable[[], Iterable[TargetView]]) -> MqttPublisher:
    # Imported here: the MQTT dependencies load only when a broker is configured.
    from .events import MqttPublisher  # noqa: PLC0415

    return MqttPublisher(config, registry=registry, collector_id=collector_id,
                                initial_states=initial_states)


def _reload_on_sighup(stack: contextlib.AsyncExitStack, service: CollectorService) -> None:
    """SIGHUP asks the service to re-read its fleet file (the handler only sets an event)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, service.request_fleet_reload)
    except (NotImplementedError, RuntimeError, ValueError):
        log.info("no SIGHUP here: the fleet file is reloaded by its file watch only")
        return
    stack.callback(loop.remove_signal_handler, signal.SIGHUP)


async def serve(config: CollectorConfig, stop: asyncio.Event | None = None) -> int:
    """Run until `stop` is set or SIGTERM/SIGINT arrives; a second signal exits at once (1).

    The signal policy is `probenet.lifecycle.StopSignals`: the first signal drains.
    """
    registry = CollectorRegistry()
    service: CollectorService | None = None

    def current_targets() -> Iterable[TargetView]:
        return service.classifier.targets() if service is not None else ()

    with StopSignals(log, stop_message="stopping: draining streams", forced_status=1,
                     stop=stop) as signals:
        async with contextlib.AsyncExitStack() as stack:
            sinks: list[TransitionSink] = []
            if config.mqtt is not None:
                publisher = _mqtt_publisher(config.mqtt, registry, config.collector_id,
                                            current_targets)
                await stack.enter_async_context(publisher)
                sinks.append(publisher)
            service = CollectorService(config, registry=registry, sinks=sinks)
            await stack.enter_async_context(service)
            if config.fleet is not None:
                _reload_on_sighup(stack, service)
            await signals.stop.wait()
    return 0
