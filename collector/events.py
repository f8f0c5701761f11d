"""MQTT events: committed outage transitions and the retained state of every probe, on a broker.

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
levels, `+` and `#` are wildcards, NUL is forbidden). `topic_level` percent-encodes exactly
`%`, `/`, `+`, `#` and NUL (`%25`, `%2F`, `%2B`, `%23`, `%00`) and leaves everything else as
written, so `urllib.parse.unquote(level)` gives the name back; the payload always carries the
original name. A probe `api/v2+beta#1` is published on `{prefix}/state/api%2Fv2%2Bbeta%231`.

Delivery. `submit` never blocks and never raises: it queues. One task publishes the queue in
order, one message at a time; with QoS 1 or 2 a message counts as published (and leaves the
queue) only when the broker acknowledged it (with QoS 0, once written to the socket). While
the broker is away the collector keeps running and the publisher reconnects with capped,
jittered exponential backoff (each change of connection state is logged once). Meanwhile:

- events wait in a queue of at most `queue_size` (plus the one being published); when it is
  full the oldest waiting event is dropped and counted in
  `probenet_mqtt_dropped_total{kind="event"}` (logged once per episode);
- state changes are coalesced per probe (only the newest view of a probe waits), so they
  never overflow the queue;
- an event whose publish was cut off stays at the head of the queue and is sent again after
  reconnecting: nothing is lost or reordered, but with QoS 1 a consumer may see an event twice
  (the broker may have delivered it before the connection died). `seq` increases per
  collector (it is the journal's event id), so consumers deduplicate on
  (`collector_id`, `seq`);
- after every (re)connect the newest state of every probe is published again (and, from
  `initial_states`, that of probes that had no change yet, stamped with the time it was
  first seen), so the retained state is current even when the broker restarted without
  persistence.

What is still queued when the publisher stops is counted as dropped too (the journal keeps
every event). TLS is used with `mqtts://` or when `mqtt.tls` is set; the password is read
from `mqtt.password_file` when the publisher starts.

Metrics (on the registry passed in): `probenet_mqtt_connected`,
`probenet_mqtt_published_total{kind}`, `probenet_mqtt_dropped_total{kind}`,
`probenet_mqtt_queue_depth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import random
import ssl
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import urlsplit

import aiomqtt
from prometheus_client import CollectorRegistry, Counter, Gauge

from .config import MqttConfig, read_secret
from .errors import AlreadyRunningError, ServiceError
from .model import (
    JournaledTransition,
    OutageEvent,
    OutageTransition,
    TargetChange,
    TargetView,
    rfc3339,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from types import TracebackType

log = logging.getLogger(__name__)
# paho reports every socket error at ERROR; the publisher logs each connection change once
# itself. Lower this logger's level to DEBUG to see paho's own account.
paho_log = logging.getLogger(f"{__name__}.paho")
paho_log.setLevel(logging.CRITICAL)

Kind = Literal["event", "state"]

_LEVEL_ESCAPES = str.maketrans({"%": "%25", "/": "%2F", "+": "%2B", "#": "%23", "\0": "%00"})
_PUBLISHED_EVENTS = frozenset({OutageEvent.OPENED, OutageEvent.SCOPE_CHANGED,
                               OutageEvent.RESOLVED})
# paho's blocking socket connect (and TLS handshake) gives up after 5 s by default.
_SOCKET_CONNECT_TIMEOUT_S = 5.0
_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# A session that lasted this long was a real one: the next reconnect starts the backoff over.
_STABLE_SESSION_S = 10.0


def topic_level(name: str) -> str:
    """`name` as one MQTT topic level: `%`, `/`, `+`, `#`, NUL percent-encoded (reversible)."""
    return name.translate(_LEVEL_ESCAPES)


def reconnect_delay(attempt: int, *, initial_s: float, max_s: float,
                    rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnect `attempt` (1-based): capped exponential, jittered.

    Between half and all of min(max_s, initial_s * 2**(attempt-1)); the jitter keeps a fleet
    of collectors from reconnecting in step after a broker restart.
    """
    ceiling = min(max_s, initial_s * 2.0 ** min(max(attempt - 1, 0), 30))
    return ceiling / 2 + rand() * ceiling / 2


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


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """One message waiting to be published; `order` is its place in submit order."""

    kind: Kind
    key: str  # the probe for a state, the seq for an event
    topic: str
    payload: bytes
    order: int


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
        self._prefix = config.topic_prefix.rstrip("/")
        self._queue_size = max(1, config.queue_size)
        self._initial_states = initial_states
        self._clock = clock
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._operation_timeout_s = operation_timeout_s
        self._drain_timeout_s = drain_timeout_s

        self._events: deque[_Outgoing] = deque()
        self._states: OrderedDict[str, _Outgoing] = OrderedDict()
        self._latest_states: dict[str, _Outgoing] = {}
        self._in_flight: _Outgoing | None = None
        self._order = itertools.count()
        self._dropping = 0  # events dropped in the current overflow episode
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._password: str | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._task_group: asyncio.TaskGroup | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._entered = False
        self._closed = False
        self._connected = False

        self._connected_gauge = Gauge(
            "probenet_mqtt_connected", "1 while connected to the MQTT broker",
            registry=registry)
        self._published = Counter(
            "probenet_mqtt_published_total",
            "MQTT messages the broker accepted (acknowledged with QoS 1 and 2)",
            ["kind"], registry=registry)
        self._dropped = Counter(
            "probenet_mqtt_dropped_total",
            "MQTT messages given up: the event queue overflowed, or the broker refused them",
            ["kind"], registry=registry)
        self._queue_depth = Gauge(
            "probenet_mqtt_queue_depth", "MQTT messages waiting to be published",
            registry=registry)
        self._queue_depth.set_function(lambda: float(self.queue_depth))
        for kind in ("event", "state"):
            self._published.labels(kind=kind)
            self._dropped.labels(kind=kind)

    # -- the sink ---------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Messages waiting, including the one being published."""
        return len(self._events) + len(self._states) + (self._in_flight is not None)

    @property
    def connected(self) -> bool:
        """True while a broker session is up."""
        return self._connected

    def topic_for_state(self, probe: str) -> str:
        """The retained state topic of `probe` (escaped, see `topic_level`)."""
        return f"{self._prefix}/state/{topic_level(probe)}"

    @property
    def events_topic(self) -> str:
        """The topic of outage events."""
        return f"{self._prefix}/events"

    @property
    def status_topic(self) -> str:
        """The retained online/offline topic of this collector."""
        return f"{self._prefix}/status/{topic_level(self._collector_id)}"

    def submit(self, items: Sequence[JournaledTransition]) -> None:
        """Queue committed transitions, in order; never blocks, never raises."""
        for item in items:
            transition = item.transition
            kind: Kind = "state" if isinstance(transition, TargetChange) else "event"
            try:
                if isinstance(transition, TargetChange):
                    self._queue_state(transition)
                elif transition.event in _PUBLISHED_EVENTS:
                    self._queue_event(item.seq, transition)
            except Exception:
                # One transition that cannot be rendered must not break the collector's path.
                self._dropped.labels(kind=kind).inc()
                log.exception("mqtt: transition could not be rendered, dropped",
                              extra={"seq": item.seq, "kind": kind})
        self._wakeup.set()

    def _queue_state(self, change: TargetChange) -> None:
        payload = change.view.to_json()
        payload["changed_at"] = rfc3339(change.at)
        outgoing = _Outgoing(kind="state", key=change.view.probe,
                             topic=self.topic_for_state(change.view.probe),
                             payload=_encode(payload), order=next(self._order))
        self._latest_states[outgoing.key] = outgoing
        self._states.pop(outgoing.key, None)
        self._states[outgoing.key] = outgoing

    def _queue_event(self, seq: int, transition: OutageTransition) -> None:
        payload = transition.record.to_json()
        payload["event"] = str(transition.event)
        payload["at"] = rfc3339(transition.at)
        payload["seq"] = seq
        payload["collector_id"] = self._collector_id
        self._events.append(_Outgoing(kind="event", key=str(seq), topic=self.events_topic,
                                      payload=_encode(payload), order=next(self._order)))
        self._trim_events()

    def _trim_events(self) -> None:
        while len(self._events) > self._queue_size:
            dropped = self._events.popleft()
            self._dropped.labels(kind="event").inc()
            self._dropping += 1
            if self._dropping == 1:
                log.warning("mqtt: event queue full, dropping the oldest events",
                            extra={"queue_size": self._queue_size, "seq": dropped.key,
                                   "broker": str(self._broker)})

    def _take_next(self) -> _Outgoing | None:
        """The oldest waiting message (events and states in submit order), off the queue."""
        event = self._events[0] if self._events else None
        state = next(iter(self._states.values())) if self._states else None
        if event is not None and (state is None or event.order < state.order):
            return self._events.popleft()
        if state is not None:
            del self._states[state.key]
            return state
        return None

    def _put_back(self, outgoing: _Outgoing) -> None:
        """A publish was cut off: the message goes back to the head of the queue."""
        if outgoing.kind == "event":
            self._events.appendleft(outgoing)
            self._trim_events()
        elif outgoing.key not in self._states:  # else a newer view of the probe is waiting
            self._states[outgoing.key] = outgoing
            self._states.move_to_end(outgoing.key, last=False)

    def _queue_all_states(self) -> None:
        """After a (re)connect: the newest state of every probe goes out again."""
        self._seed_initial_states()
        for probe, outgoing in self._latest_states.items():
            if probe not in self._states:
                self._states[probe] = dataclasses.replace(outgoing, order=next(self._order))

    def _seed_initial_states(self) -> None:
        """Queue the views of probes that had no change yet, from `initial_states`.

        Asked on every connect: at the first one the collector may not know its targets yet.
        """
        if self._initial_states is None:
            return
        try:
            views = list(self._initial_states())
        except Exception:
            log.exception("mqtt: initial_states failed; retained state starts from changes")
            return
        now = self._clock()
        for view in views:
            if view.probe not in self._latest_states:
                self._queue_state(TargetChange(view=view, at=now))

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Read the password and TLS files and start the publishing task; returns at once.

        Does not wait for the broker. Raises ServiceError when a file cannot be read,
        AlreadyRunningError when entered a second time.
        """
        if self._entered:
            raise AlreadyRunningError("MqttPublisher can be entered only once")
        self._entered = True
        self._password = self._read_password()
        self._tls_context = self._make_tls_context()
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        self._run_task = self._task_group.create_task(self._run(), name="mqtt-publisher")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        """Drain briefly if connected, say goodbye, stop; idempotent."""
        if self._task_group is None or self._closed:
            return
        self._closed = True
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
            self._set_connected(False)
            self._count_unpublished()

    def _count_unpublished(self) -> None:
        """At exit, what is still queued is lost to MQTT (the journal keeps the events)."""
        events, states = len(self._events), len(self._states)
        if events or states:
            self._dropped.labels(kind="event").inc(events)
            self._dropped.labels(kind="state").inc(states)
            log.warning("mqtt: stopped with messages unpublished", extra={
                "events": events, "states": states, "broker": str(self._broker)})
        self._events.clear()
        self._states.clear()

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

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        self._connected_gauge.set(1 if connected else 0)

    def _status_payload(self, status: str) -> bytes:
        return _encode({"collector_id": self._collector_id, "status": status})

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
        backoff_step = 0  # grows with failed connects and with sessions that die young
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
                    self._set_connected(True)
                    log.info("mqtt: connected", extra={
                        "broker": str(self._broker), "client_id": self._client_id,
                        "failed_attempts": failed_connects})
                    failed_connects = 0
                    warned = False
                    self._queue_all_states()
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
                    backoff_step = 1 if lived_s >= _STABLE_SESSION_S else backoff_step + 1
                    warned = True
                    log.warning("mqtt: connection lost, reconnecting", extra={
                        "broker": str(self._broker), "error": error,
                        "session_s": round(lived_s, 3), "queue_depth": self.queue_depth})
                else:
                    backoff_step += 1
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
                self._set_connected(False)
                if client is not None:
                    _close_socket(client)
            delay = reconnect_delay(backoff_step, initial_s=self._reconnect_initial_s,
                                    max_s=self._reconnect_max_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Publish until stopping; a lost connection ends it with an error."""
        async with asyncio.TaskGroup() as session:
            watch = session.create_task(self._watch_connection(client),
                                        name="mqtt-connection-watch")
            await self._publish(client, self.status_topic, self._status_payload("online"))
            await self._publish_queue(client)
            # A clean DISCONNECT discards the will: say offline ourselves.
            await self._publish(client, self.status_topic, self._status_payload("offline"))
            watch.cancel()

    @staticmethod
    async def _watch_connection(client: aiomqtt.Client) -> None:
        """Raise aiomqtt.MqttError as soon as the connection is lost.

        We subscribe to nothing; the message iterator is aiomqtt's public signal of a
        disconnect, and its error cancels the publishing in the same session TaskGroup.
        """
        async for _ in client.messages:
            pass

    async def _publish(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        await client.publish(topic, payload, qos=self._config.qos, retain=True,
                             timeout=self._operation_timeout_s)

    async def _publish_queue(self, client: aiomqtt.Client) -> None:
        """Publish the queue in order until it is empty and we are stopping."""
        while True:
            outgoing = self._take_next()
            if outgoing is None:
                if self._stopping.is_set():
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._in_flight = outgoing
            try:
                await client.publish(outgoing.topic, outgoing.payload, qos=self._config.qos,
                                     retain=outgoing.kind == "state",
                                     timeout=self._operation_timeout_s)
            except ValueError as exc:
                # paho refuses the message itself (e.g. too large): retrying cannot help.
                self._dropped.labels(kind=outgoing.kind).inc()
                log.error("mqtt: message refused, dropped", extra={  # noqa: TRY400 (no trace)
                    "kind": outgoing.kind, "key": outgoing.key, "error": str(exc)})
                continue
            except BaseException:
                self._put_back(outgoing)
                raise
            finally:
                self._in_flight = None
            self._published.labels(kind=outgoing.kind).inc()
            if outgoing.kind == "event" and self._dropping:
                log.warning("mqtt: event queue recovered", extra={
                    "dropped_events": self._dropping, "broker": str(self._broker)})
                self._dropping = 0


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


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _describe(exc: BaseException) -> str:
    """One line for a log: the leaves of an exception group, or the exception itself."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
