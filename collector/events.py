"""MQTT events: the session that publishes the collector's outbox on a broker.

Topics (`prefix` is `mqtt.topic_prefix`):

    {prefix}/events                   not retained: an outage record (as /api/v1/outages) plus
                                      `event` (opened | scope_changed | resolved), `at`,
                                      `seq` and `collector_id`
    {prefix}/state/{probe}            retained: the probe's /api/v1/targets entry plus
                                      `changed_at`
    {prefix}/status/{collector_id}    retained: {"collector_id", "status": "online"|"offline"};
                                      the broker publishes "offline" as our will when the
                                      connection dies without a goodbye

Topic levels. A probe name may hold characters MQTT gives a meaning to in topics (`/` splits
levels, `+` and `#` are wildcards, NUL is forbidden). `outbox.topic_level` percent-encodes
exactly `%`, `/`, `+`, `#` and NUL (`%25`, `%2F`, `%2B`, `%23`, `%00`) and leaves everything
else as written, so `urllib.parse.unquote(level)` gives the name back; the payload always
carries the original name. A probe `api/v2+beta#1` is published on
`{prefix}/state/api%2Fv2%2Bbeta%231`.

Delivery. `submit` never blocks and never raises: it adds to a `collector.outbox.Outbox`,
which decides what waits, in what order, and what is lost (events bounded by `queue_size`,
states merged per probe, an event cut off in flight put back at the head). This module is
the session around it: one task connects, publishes the outbox in order, one message at a
time, and reconnects with capped, jittered exponential backoff (`probenet.backoff`) while
the collector keeps running; each change of connection state is logged once. With QoS 1 or 2
a message counts as published only when the broker acknowledged it (with QoS 0, once written
to the socket); an event whose publish was cut off is sent again after reconnecting, so with
QoS 1 a consumer may see it twice and deduplicates on (`collector_id`, `seq`). After every
(re)connect the newest state of every probe is published again (and, from `initial_states`,
that of probes that had no change yet, stamped with the time it was first seen).

What is still queued when the publisher stops is counted as dropped (the journal keeps every
event). TLS is used with `mqtts://` or when `mqtt.tls` is set; the password is read from
`mqtt.password_file` when the publisher starts.

Metrics (on the registry passed in, read from the outbox at scrape time):
`probenet_mqtt_connected`, `probenet_mqtt_published_total{kind}`,
`probenet_mqtt_dropped_total{kind}`, `probenet_mqtt_queue_depth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit

import aiomqtt
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from probenet.backoff import Backoff
from probenet.lifecycle import EnterOnce

from .config import MqttConfig, read_secret
from .errors import LifecycleError, ServiceError
from .outbox import KINDS, Outbox, Queued, encode_json

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from types import TracebackType

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from .model import JournaledTransition, TargetView

log = logging.getLogger(__name__)
# paho reports every socket error at ERROR; the publisher logs each connection change once
# itself. Lower this logger's level to DEBUG to see paho's own account.
paho_log = logging.getLogger(f"{__name__}.paho")
paho_log.setLevel(logging.CRITICAL)

# paho's blocking socket connect (and TLS handshake) gives up after 5 s by default.
_SOCKET_CONNECT_TIMEOUT_S = 5.0
_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# A session that lasted this long was a real one: the next reconnect starts the backoff over.
_STABLE_SESSION_S = 10.0


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker is, from `mqtt://host:port` or `mqtts://host:port`."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse an MQTT URL; the port defaults to 1883 (mqtt) or 8883 (mqtts)."""
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ServiceError(f"mqtt.url {url!r} is not like mqtt://host:1883 or mqtts://host:8883")
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError as exc:
            raise ServiceError(f"mqtt.url {url!r} has an invalid port") from exc
        return cls(host=parts.hostname, port=port, tls=parts.scheme == "mqtts")

    def __str__(self) -> str:
        """`host:port`, for logs."""
        return f"{self.host}:{self.port}"


class MqttPublisher:
    """Publishes committed transitions to an MQTT broker; a `collector.model.TransitionSink`.

    An async context manager: entering starts the publishing task and returns at once, even
    when the broker is unreachable (the collector must start without it); leaving publishes
    what is queued for up to `drain_timeout_s` if connected, says goodbye, and stops. Enter
    and leave it in the same task; call `submit` on the event loop's thread (before entering
    is fine: it queues).
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        registry: CollectorRegistry,
        collector_id: str,
        initial_states: Callable[[], Iterable[TargetView]] | None = None,
        clock: Callable[[], float] = time.time,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        operation_timeout_s: float = 10.0,
        drain_timeout_s: float = 2.0,
    ) -> None:
        """`operation_timeout_s` bounds each wait for a CONNACK or a PUBACK."""
        self._config = config
        self._broker = BrokerAddress.parse(config.url)
        self._collector_id = collector_id
        self._client_id = config.client_id or f"probenet-collector-{collector_id}"
        self._outbox = Outbox(collector_id=collector_id, topic_prefix=config.topic_prefix,
                              capacity=max(1, config.queue_size))
        self._initial_states = initial_states
        self._clock = clock
        self._backoff = Backoff(reconnect_initial_s, reconnect_max_s)
        self._operation_timeout_s = operation_timeout_s
        self._drain_timeout_s = drain_timeout_s

        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._password: str | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._task_group: asyncio.TaskGroup | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._lifecycle = EnterOnce("MqttPublisher", LifecycleError)
        self._connected = False
        registry.register(_PublisherMetrics(self._outbox, lambda: self._connected))

    # -- the sink ---------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Messages waiting, including the one being published."""
        return self._outbox.depth

    @property
    def connected(self) -> bool:
        """True while a broker session is up."""
        return self._connected

    def topic_for_state(self, probe: str) -> str:
        """The retained state topic of `probe` (escaped, see `outbox.topic_level`)."""
        return self._outbox.topic_for_state(probe)

    @property
    def events_topic(self) -> str:
        """The topic of outage events."""
        return self._outbox.events_topic

    @property
    def status_topic(self) -> str:
        """The retained online/offline topic of this collector."""
        return self._outbox.status_topic

    def submit(self, items: Sequence[JournaledTransition]) -> None:
        """Queue committed transitions, in order; never blocks, never raises."""
        self._report(self._outbox.add(items))
        self._wakeup.set()

    def _report(self, queued: Queued) -> None:
        """Log what queueing cost: each rejected transition, and an overflow once."""
        for rejected in queued.rejected:
            log.error("mqtt: transition could not be rendered, dropped",
                      exc_info=rejected.error, extra={"seq": rejected.seq, "kind": rejected.kind})
        if queued.overflow_began:
            log.warning("mqtt: event queue full, dropping the oldest events", extra={
                "queue_size": self._outbox.capacity, "seq": queued.overflowed[0].key,
                "broker": str(self._broker)})

    def _requeue_states(self) -> None:
        """After a (re)connect: the newest state of every probe goes out again.

        `initial_states` is asked on every connect: at the first one the collector may not
        know its targets yet.
        """
        views: list[TargetView] = []
        if self._initial_states is not None:
            try:
                views = list(self._initial_states())
            except Exception:
                log.exception("mqtt: initial_states failed; retained state starts from changes")
        self._report(self._outbox.requeue_states(views, self._clock()))

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Read the password and TLS files and start the publishing task; returns at once.

        Does not wait for the broker. Raises ServiceError when a file cannot be read,
        LifecycleError when entered a second time.
        """
        self._lifecycle.enter()
        self._password = self._read_password()
        self._tls_context = self._make_tls_context()
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        self._run_task = self._task_group.create_task(self._run(), name="mqtt-publisher")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        """Drain briefly if connected, say goodbye, stop; idempotent."""
        # No task group: entering failed reading the password or TLS files.
        if not self._lifecycle.leave() or self._task_group is None:
            return
        self._stopping.set()
        self._wakeup.set()
        task = self._run_task
        if task is not None:
            if exc_type is None:
                await asyncio.wait({task}, timeout=self._drain_timeout_s)
            if not task.done():
                task.cancel()
        try:
            # The body's own exception is not ours to wrap: it propagates unchanged.
            await self._task_group.__aexit__(None, None, None)
        finally:
            self._connected = False
            self._count_unpublished()

    def _count_unpublished(self) -> None:
        """At exit, what is still queued is lost to MQTT (the journal keeps the events)."""
        abandoned = self._outbox.abandon()
        if any(abandoned.values()):
            log.warning("mqtt: stopped with messages unpublished", extra={
                "events": abandoned["event"], "states": abandoned["state"],
                "broker": str(self._broker)})

    def _read_password(self) -> str | None:
        path = self._config.password_file
        if path is None:
            return None
        try:
            return read_secret(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ServiceError(f"mqtt.password_file {path}: {exc}") from exc

    def _make_tls_context(self) -> ssl.SSLContext | None:
        tls = self._config.tls
        if tls is None and not self._broker.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=tls.ca_file if tls else None)
            if tls is not None and tls.cert_file is not None:
                context.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ServiceError(f"mqtt.tls: {exc}") from exc
        if tls is not None and tls.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.sslsocket_class = _ClosingSSLSocket
        return context

    def _status_payload(self, status: str) -> bytes:
        return encode_json({"collector_id": self._collector_id, "status": status})

    def _make_client(self) -> aiomqtt.Client:
        keepalive = round(self._config.keepalive)
        return aiomqtt.Client(
            self._broker.host, self._broker.port,
            identifier=self._client_id,
            username=self._config.username,
            password=self._password,
            keepalive=max(1, keepalive),
            timeout=self._operation_timeout_s,
            tls_context=self._tls_context,
            will=aiomqtt.Will(self.status_topic, self._status_payload("offline"),
                              qos=self._config.qos, retain=True),
            logger=paho_log,
        )

    # -- the publishing task ----------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, publish, reconnect after backoff; only returns when stopping."""
        failures = 0  # grows with failed connects and with sessions that die young
        failed_connects = 0
        warned = False  # one warning per outage of the broker, then debug until connected
        while not self._stopping.is_set():
            session_started_at: float | None = None
            client: aiomqtt.Client | None = None
            try:
                client = self._make_client()
                async with contextlib.AsyncExitStack() as stack:
                    async with asyncio.timeout(_SOCKET_CONNECT_TIMEOUT_S
                                               + self._operation_timeout_s + 5.0):
                        await stack.enter_async_context(client)
                    session_started_at = time.monotonic()
                    self._connected = True
                    log.info("mqtt: connected", extra={
                        "broker": str(self._broker), "client_id": self._client_id,
                        "failed_attempts": failed_connects})
                    failed_connects = 0
                    warned = False
                    self._requeue_states()
                    await self._serve(client)
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = _describe(exc)
                if session_started_at is not None:
                    lived_s = time.monotonic() - session_started_at
                    # A broker that accepts then drops us at once (e.g. another client with
                    # our id) must not be hammered: only a stable session resets the backoff.
                    failures = 1 if lived_s >= _STABLE_SESSION_S else failures + 1
                    warned = True
                    log.warning("mqtt: connection lost, reconnecting", extra={
                        "broker": str(self._broker), "error": error,
                        "session_s": round(lived_s, 3), "queue_depth": self.queue_depth})
                else:
                    failures += 1
                    failed_connects += 1
                    if not warned:
                        warned = True
                        log.warning("mqtt: broker unreachable, retrying with backoff", extra={
                            "broker": str(self._broker), "error": error})
                    else:
                        log.debug("mqtt: connect attempt failed", extra={
                            "broker": str(self._broker), "error": error,
                            "attempt": failed_connects})
            finally:
                self._connected = False
                if client is not None:
                    _close_socket(client)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(),
                                       timeout=self._backoff.delay(failures))

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Publish until stopping; a lost connection ends it with an error."""
        async with asyncio.TaskGroup() as session:
            watch = session.create_task(self._watch_connection(client),
                                        name="mqtt-connection-watch")
            await self._publish_status(client, "online")
            await self._publish_outbox(client)
            # A clean DISCONNECT discards the will: say offline ourselves.
            await self._publish_status(client, "offline")
            watch.cancel()

    @staticmethod
    async def _watch_connection(client: aiomqtt.Client) -> None:
        """Raise aiomqtt.MqttError as soon as the connection is lost.

        We subscribe to nothing; the message iterator is aiomqtt's public signal of a
        disconnect, and its error cancels the publishing in the same session TaskGroup.
        """
        async for _ in client.messages:
            pass

    async def _publish_status(self, client: aiomqtt.Client, status: str) -> None:
        await client.publish(self.status_topic, self._status_payload(status),
                             qos=self._config.qos, retain=True,
                             timeout=self._operation_timeout_s)

    async def _publish_outbox(self, client: aiomqtt.Client) -> None:
        """Publish the outbox in order until it is empty and we are stopping."""
        outbox = self._outbox
        while True:
            message = outbox.take()
            if message is None:
                if self._stopping.is_set():
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await client.publish(message.topic, message.payload, qos=self._config.qos,
                                     retain=message.retain, timeout=self._operation_timeout_s)
            except ValueError as exc:
                # paho refuses the message itself (e.g. too large): retrying cannot help.
                outbox.give_up(message)
                log.error("mqtt: message refused, dropped", extra={  # noqa: TRY400 (no trace)
                    "kind": message.kind, "key": message.key, "error": str(exc)})
                continue
            except BaseException:
                self._report(outbox.put_back(message))
                raise
            if dropped_events := outbox.acknowledged(message):
                log.warning("mqtt: event queue recovered", extra={
                    "dropped_events": dropped_events, "broker": str(self._broker)})


class _PublisherMetrics(Collector):
    """The publisher's metrics, read from its outbox and session at scrape time."""

    def __init__(self, outbox: Outbox, connected: Callable[[], bool]) -> None:
        self._outbox = outbox
        self._connected = connected

    def describe(self) -> Iterator[Metric]:
        """The families, so that the registry refuses a second publisher on it."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        """Yield the current values."""
        yield GaugeMetricFamily("probenet_mqtt_connected", "1 while connected to the MQTT broker",
                                value=1.0 if self._connected() else 0.0)
        published = CounterMetricFamily(
            "probenet_mqtt_published",
            "MQTT messages the broker accepted (acknowledged with QoS 1 and 2)", labels=["kind"])
        dropped = CounterMetricFamily(
            "probenet_mqtt_dropped",
            "MQTT messages given up: the event queue overflowed, or the broker refused them",
            labels=["kind"])
        for kind in KINDS:
            published.add_metric([kind], self._outbox.published[kind])
            dropped.add_metric([kind], self._outbox.dropped[kind])
        yield published
        yield dropped
        yield GaugeMetricFamily("probenet_mqtt_queue_depth",
                                "MQTT messages waiting to be published",
                                value=self._outbox.depth)


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSLSocket that closes itself when its handshake fails.

    paho drops the socket without closing it when the TLS handshake fails (an untrusted
    broker certificate), leaking a file descriptor per reconnect attempt.
    """

    def do_handshake(self, block: bool = False) -> None:
        """Handshake; on failure close the socket, then raise."""
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _close_socket(client: aiomqtt.Client) -> None:
    """Close what is left of a client's socket after a session or a failed connect.

    aiomqtt leaves the socket open (and registered with the event loop) when the CONNACK
    never came or said no; paho's `_sock_close` is a no-op once paho closed it itself.
    """
    try:
        client._client._sock_close()  # noqa: SLF001 (no public way; see docstring)
    except Exception:
        log.debug("mqtt: closing the client socket failed", exc_info=True)


def _describe(exc: BaseException) -> str:
    """One line for a log: the leaves of an exception group, or the exception itself."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
