"""MqttPublisher against a real Mosquitto: events, retained state, restarts, overflow, escaping."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from urllib.parse import unquote

import aiomqtt
import pytest
from prometheus_client import CollectorRegistry

from probenet.collector.config import MqttConfig, MqttTlsConfig, parse_config
from probenet.collector.errors import LifecycleError, ServiceError
from probenet.collector.events import MqttPublisher
from probenet.collector.model import (
    JournaledTransition,
    OutageEvent,
    OutageKind,
    OutageRecord,
    OutageTransition,
    RegionVerdict,
    Scope,
    TargetChange,
    TargetState,
    TargetView,
    rfc3339,
)
from probenet.collector.outbox import topic_level
from probenet.collector.server import CollectorService
from support.certs import TestCA
from support.collector_client import ManualClock, TestAgent, collector_yaml
from support.mosquitto import (
    BrokerTls,
    ReceivedMessage,
    collect_messages,
    start_broker,
    subscribed,
    write_password_file,
)
from support.system import free_port

T0 = 1_795_000_000.0  # 2026-11-18T11:06:40Z, a fixed moment: payload times are checked exactly
COLLECTOR = "test-collector"
WAIT_S = 30.0  # generous: other helpers load the machine


@pytest.fixture
def broker(mosquitto_broker):
    return mosquitto_broker


@pytest.fixture
def persistent_broker(tmp_path):
    """Keeps sessions and retained messages across a restart: a subscriber that was away
    gets what was published meanwhile, so no test races the publisher's reconnect.
    """
    started = start_broker(tmp_path / "mosquitto", persistent=True)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def prefix():
    return f"test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def registry():
    return CollectorRegistry()


def make_publisher(url: str, prefix: str, registry: CollectorRegistry, **options) -> MqttPublisher:
    config_keys = {"queue_size", "qos", "username", "password_file", "tls", "client_id"}
    config = MqttConfig(url=url, topic_prefix=prefix,
                        **{k: v for k, v in options.items() if k in config_keys})
    kwargs = {k: v for k, v in options.items() if k not in config_keys}
    kwargs.setdefault("reconnect_initial_s", 0.1)
    kwargs.setdefault("reconnect_max_s", 1.0)
    return MqttPublisher(config, registry=registry, collector_id=COLLECTOR, **kwargs)


def record(probe: str, *, scope: Scope = Scope.GLOBAL, regions=("eu-central", "us-east"),
           ended_at: float | None = None, outage_id: str | None = None) -> OutageRecord:
    return OutageRecord(
        id=outage_id or f"out-{probe}", kind=OutageKind.PROBE, probe=probe, service="meta",
        region=None, probes=(), scope=scope, peak_scope=scope, regions=tuple(regions),
        regions_ever=tuple(regions), phase="dns", reason="dns_servfail",
        started_at=T0, detected_at=T0 + 4.5, ended_at=ended_at,
    )


def outage(seq: int, event: OutageEvent, rec: OutageRecord, at: float) -> JournaledTransition:
    return JournaledTransition(seq=seq, transition=OutageTransition(event=event, record=rec, at=at))


def view(probe: str, state: TargetState, **regions: RegionVerdict) -> TargetView:
    return TargetView(probe=probe, target=f"https://{probe}.example/", service="meta",
                      kind="http", state=state, regions=regions)


def change(probe: str, state: TargetState, at: float, **regions: RegionVerdict):
    return JournaledTransition(seq=0, transition=TargetChange(view=view(probe, state, **regions),
                                                              at=at))


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def eventually(predicate, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


def events_of(messages: list[ReceivedMessage]) -> list[dict]:
    return [json.loads(m.payload) for m in messages]


def has_seq(seq: int):
    return lambda received: any(json.loads(m.payload).get("seq") == seq for m in received)


# -- delivery -------------------------------------------------------------------------------


async def test_events_arrive_in_order_with_payload_and_seq(broker, prefix, registry):
    opened = record("facebook-web", scope=Scope.REGIONAL, regions=("eu-central",))
    escalated = record("facebook-web", regions=("eu-central", "us-east"))
    updated = record("facebook-web", regions=("eu-central", "us-east", "ap-south"))
    resolved = record("facebook-web", regions=(), ended_at=T0 + 7200)
    async with (subscribed(broker, f"{prefix}/events") as subscriber,
                make_publisher(broker.url, prefix, registry) as publisher):
        publisher.submit([
            outage(11, OutageEvent.OPENED, opened, T0 + 5),
            change("facebook-web", TargetState.REGIONAL_OUTAGE, T0 + 5,
                   **{"eu-central": RegionVerdict.DOWN, "us-east": RegionVerdict.UP}),
        ])
        publisher.submit([
            outage(12, OutageEvent.SCOPE_CHANGED, escalated, T0 + 20),
            outage(13, OutageEvent.UPDATED, updated, T0 + 30),
            outage(14, OutageEvent.RESOLVED, resolved, T0 + 7200),
        ])
        received = await collect_messages(subscriber, until=has_seq(14), timeout_s=WAIT_S)
        await eventually(lambda: publisher.queue_depth == 0, "an empty queue")

    payloads = events_of(received)
    # Published in order, one at a time: had `updated` (13) been sent, it would precede 14.
    assert [p["seq"] for p in payloads] == [11, 12, 14]
    assert [p["event"] for p in payloads] == ["opened", "scope_changed", "resolved"]
    assert [p["at"] for p in payloads] == [rfc3339(T0 + 5), rfc3339(T0 + 20),
                                           rfc3339(T0 + 7200)]
    assert all(m.topic == f"{prefix}/events" for m in received)
    assert not any(m.retain for m in received)
    assert all(m.qos == 1 for m in received)
    for payload, rec in zip(payloads, [opened, escalated, resolved], strict=True):
        assert OutageRecord.from_json(payload) == rec
        assert payload["collector_id"] == COLLECTOR
    assert payloads[2]["ended_at"] == rfc3339(T0 + 7200)
    assert sample(registry, "probenet_mqtt_published_total", kind="event") == 3
    assert sample(registry, "probenet_mqtt_published_total", kind="state") == 1
    assert sample(registry, "probenet_mqtt_dropped_total", kind="event") == 0
    assert sample(registry, "probenet_mqtt_connected") == 0  # after leaving


async def test_retained_state_for_late_subscriber_is_the_latest_view(broker, prefix, registry):
    seeded = [view("only-seeded", TargetState.UP, eu=RegionVerdict.UP),
              view("api", TargetState.UP, eu=RegionVerdict.UP)]
    publisher = make_publisher(broker.url, prefix, registry, initial_states=lambda: seeded,
                               clock=lambda: T0)
    async with publisher:
        publisher.submit([change("api", TargetState.UP, T0 + 1, eu=RegionVerdict.UP,
                                 us=RegionVerdict.UP)])
        await eventually(lambda: publisher.connected and publisher.queue_depth == 0,
                         "the first states published")
        publisher.submit([change("api", TargetState.REGIONAL_OUTAGE, T0 + 2,
                                 eu=RegionVerdict.DOWN, us=RegionVerdict.UP)])
        await eventually(lambda: publisher.queue_depth == 0, "the second api state published")
        publisher.submit([
            change("api", TargetState.GLOBAL_OUTAGE, T0 + 3, eu=RegionVerdict.DOWN,
                   us=RegionVerdict.DOWN),
            change("web", TargetState.UNKNOWN, T0 + 4, eu=RegionVerdict.UNKNOWN),
        ])
        await eventually(lambda: publisher.queue_depth == 0, "the last states published")

        async with subscribed(broker, f"{prefix}/state/+") as late:
            received = await collect_messages(late, count=3, timeout_s=WAIT_S)

    states = {m.topic: (m.retain, json.loads(m.payload)) for m in received}
    assert set(states) == {f"{prefix}/state/api", f"{prefix}/state/web",
                           f"{prefix}/state/only-seeded"}
    assert all(retained for retained, _ in states.values())
    api = states[f"{prefix}/state/api"][1]
    assert api == {**view("api", TargetState.GLOBAL_OUTAGE, eu=RegionVerdict.DOWN,
                          us=RegionVerdict.DOWN).to_json(), "changed_at": rfc3339(T0 + 3)}
    assert states[f"{prefix}/state/web"][1]["state"] == "unknown"
    seeded_payload = states[f"{prefix}/state/only-seeded"][1]
    assert seeded_payload == {**seeded[0].to_json(), "changed_at": rfc3339(T0)}
    assert sample(registry, "probenet_mqtt_dropped_total", kind="state") == 0


async def test_probe_name_with_topic_wildcards_is_escaped(broker, prefix, registry):
    name = "api/v2+beta#1 100%"
    # A single-level wildcard: an unescaped `/` would put the state two levels deep, and
    # `+`/`#` in a topic name would make the broker or paho refuse the publish.
    async with (make_publisher(broker.url, prefix, registry) as publisher,
                subscribed(broker, f"{prefix}/state/+") as subscriber):
        publisher.submit([change(name, TargetState.GLOBAL_OUTAGE, T0, eu=RegionVerdict.DOWN)])
        received = await collect_messages(subscriber, count=1, timeout_s=WAIT_S)

    assert len(received) == 1
    level = received[0].topic.removeprefix(f"{prefix}/state/")
    assert level == "api%2Fv2%2Bbeta%231 100%25"
    assert unquote(level) == name
    assert json.loads(received[0].payload)["probe"] == name
    assert publisher.topic_for_state(name) == received[0].topic


def test_topic_level_escaping_is_reversible():
    for name in ["plain", "a/b", "+", "#", "%2F", "50%/x+#", "caf\u00e9", "nul\0byte"]:
        level = topic_level(name)
        assert not any(c in level for c in "/+#\0")
        assert unquote(level) == name
    assert topic_level("plain-name_1.x") == "plain-name_1.x"


# -- broker away --------------------------------------------------------------------------


async def test_broker_restart_mid_outage_loses_nothing(persistent_broker, prefix, registry,
                                                       caplog):
    caplog.set_level(logging.INFO, logger="probenet.collector.events")
    broker = persistent_broker
    sub_id = f"sub-{uuid.uuid4().hex[:8]}"
    outage_record = record("meta-edge", scope=Scope.REGIONAL, regions=("eu-central",))
    async with make_publisher(broker.url, prefix, registry) as publisher:
        async with subscribed(broker, f"{prefix}/#", identifier=sub_id,
                              clean_session=False) as subscriber:
            publisher.submit([
                outage(1, OutageEvent.OPENED, outage_record, T0),
                change("meta-edge", TargetState.REGIONAL_OUTAGE, T0,
                       **{"eu-central": RegionVerdict.DOWN, "us-east": RegionVerdict.UP}),
            ])
            before = await collect_messages(subscriber, until=has_seq(1), timeout_s=WAIT_S)
            await eventually(lambda: publisher.queue_depth == 0, "an idle publisher")
            await broker.stop_async()
            # The subscriber notices too (after what it had buffered); reading its error
            # keeps asyncio quiet about it.
            with pytest.raises(aiomqtt.MqttError):
                await collect_messages(subscriber, timeout_s=WAIT_S)

        await eventually(lambda: not publisher.connected, "the publisher to notice")
        assert sample(registry, "probenet_mqtt_connected") == 0
        # The collector raises transitions while the broker is away; nothing may raise.
        escalated = record("meta-edge", regions=("eu-central", "us-east"))
        publisher.submit([
            outage(2, OutageEvent.SCOPE_CHANGED, escalated, T0 + 30),
            change("meta-edge", TargetState.GLOBAL_OUTAGE, T0 + 30,
                   **{"eu-central": RegionVerdict.DOWN, "us-east": RegionVerdict.DOWN}),
        ])
        publisher.submit([outage(3, OutageEvent.UPDATED, escalated, T0 + 40)])
        publisher.submit([outage(seq, OutageEvent.OPENED, record(f"p{seq}"), T0 + seq)
                          for seq in range(4, 9)])
        assert publisher.queue_depth == 7  # 6 events + 1 state; `updated` is not queued
        await asyncio.sleep(1.0)  # a few failed reconnects
        assert publisher._run_task is not None
        assert not publisher._run_task.done()

        await broker.start_async()
        async with subscribed(broker, f"{prefix}/#", identifier=sub_id,
                              clean_session=False) as subscriber:
            after = await collect_messages(subscriber, until=has_seq(8), timeout_s=WAIT_S)
        await eventually(lambda: publisher.queue_depth == 0, "the queue drained")

        async with subscribed(broker, f"{prefix}/state/+") as late:
            retained = await collect_messages(late, count=1, timeout_s=WAIT_S)

    seqs = [p["seq"] for p in events_of([*before, *after]) if "seq" in p]
    # QoS 1 may repeat a message cut off mid-flight (consumers dedup on seq), never reorder.
    assert seqs == sorted(seqs)
    assert list(dict.fromkeys(seqs)) == [1, 2, 4, 5, 6, 7, 8]
    state = json.loads(retained[0].payload)
    assert state["state"] == "global_outage"
    assert state["changed_at"] == rfc3339(T0 + 30)
    assert sample(registry, "probenet_mqtt_dropped_total", kind="event") == 0
    assert sample(registry, "probenet_mqtt_published_total", kind="event") >= 7
    # Each change of connection state is logged once; the failed retries in between at debug.
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and r.name.startswith("probenet.collector.events")]
    assert warnings == ["mqtt: connection lost, reconnecting"]
    assert [r.getMessage() for r in caplog.records].count("mqtt: connected") == 2


class CuttableProxy:
    """A TCP proxy in front of the broker that can hold back the broker's replies (PUBACKs)
    and cut every connection abruptly, to catch a publish in flight.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.hold_replies = False
        self.connections = 0
        self._tasks: list[asyncio.Task] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"mqtt://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self):
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]
        self._tasks += [asyncio.create_task(self._pump(reader, up_writer, replies=False)),
                        asyncio.create_task(self._pump(up_reader, writer, replies=True))]

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    *, replies: bool) -> None:
        held = bytearray()
        while data := await source.read(65536):
            if replies and self.hold_replies:
                held += data  # never forwarded: cut() drops it with the connection
                continue
            sink.write(data)
            await sink.drain()
        sink.close()

    def cut(self) -> None:
        """Abort every proxied connection at once (no DISCONNECT: the will fires)."""
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.transport.abort()
        self._tasks.clear()
        self._writers.clear()


async def test_event_cut_off_in_flight_is_resent_not_lost(broker, prefix, registry):
    async with (
        subscribed(broker, f"{prefix}/#") as subscriber,
        CuttableProxy(broker.port) as proxy,
        make_publisher(proxy.url, prefix, registry) as publisher,
    ):
        publisher.submit([outage(1, OutageEvent.OPENED, record("a"), T0)])
        received = await collect_messages(subscriber, until=has_seq(1), timeout_s=WAIT_S)
        await eventually(lambda: publisher.queue_depth == 0, "event 1 acknowledged")

        proxy.hold_replies = True  # the broker gets event 2, its PUBACK never comes back
        publisher.submit([outage(2, OutageEvent.RESOLVED, record("a", ended_at=T0 + 60), T0)])
        received += await collect_messages(subscriber, until=has_seq(2), timeout_s=WAIT_S)
        assert publisher.queue_depth == 1  # in flight: delivered, but not acknowledged
        assert sample(registry, "probenet_mqtt_published_total", kind="event") == 1

        proxy.cut()
        proxy.hold_replies = False
        publisher.submit([outage(3, OutageEvent.OPENED, record("b"), T0 + 70)])
        received += await collect_messages(subscriber, until=has_seq(3), timeout_s=WAIT_S)
        await eventually(lambda: publisher.queue_depth == 0, "the queue drained")
        assert proxy.connections == 2

    seqs = [p["seq"] for p in events_of(received) if "seq" in p]
    assert seqs == [1, 2, 2, 3]  # resent after reconnecting: a duplicate, never a loss
    assert sample(registry, "probenet_mqtt_published_total", kind="event") == 3
    statuses = [json.loads(m.payload)["status"] for m in received
                if m.topic == f"{prefix}/status/{COLLECTOR}"]
    # online, then the will when the connection was cut, then online again.
    assert statuses[0] == "online"
    assert "offline" in statuses
    assert statuses[-1] == "online"


@pytest.mark.parametrize("qos", [0, 2])
async def test_qos_comes_from_config(broker, prefix, registry, qos):
    async with (subscribed(broker, f"{prefix}/events", qos=2) as subscriber,
                make_publisher(broker.url, prefix, registry, qos=qos) as publisher):
        publisher.submit([outage(1, OutageEvent.OPENED, record("a"), T0)])
        received = await collect_messages(subscriber, count=1, timeout_s=WAIT_S)
    assert [m.qos for m in received] == [qos]


async def test_leaving_drains_the_queue_and_says_offline(broker, prefix, registry):
    async with subscribed(broker, f"{prefix}/#") as subscriber:
        async with make_publisher(broker.url, prefix, registry,
                                  drain_timeout_s=WAIT_S) as publisher:
            await eventually(lambda: publisher.connected, "a connection")
            publisher.submit([outage(seq, OutageEvent.OPENED, record(f"p{seq}"), T0)
                              for seq in range(1, 51)])
        assert publisher.queue_depth == 0
        received = await collect_messages(
            subscriber, timeout_s=WAIT_S,
            until=lambda got: any(b'"offline"' in m.payload for m in got))
    seqs = [p["seq"] for p in events_of(received) if "seq" in p]
    assert seqs == list(range(1, 51))
    assert json.loads(received[-1].payload) == {"collector_id": COLLECTOR, "status": "offline"}
    assert received[-1].topic == f"{prefix}/status/{COLLECTOR}"
    assert sample(registry, "probenet_mqtt_published_total", kind="event") == 50


async def test_retained_state_restored_after_broker_lost_it(broker, prefix, registry):
    known: list[TargetView] = []  # what the collector knows; empty at the first connect
    publisher = make_publisher(broker.url, prefix, registry, initial_states=lambda: list(known),
                               clock=lambda: T0 + 100)
    async with publisher:
        publisher.submit([change(f"probe-{i}", TargetState.UP, T0 + i, eu=RegionVerdict.UP)
                          for i in range(3)])
        await eventually(lambda: publisher.connected and publisher.queue_depth == 0,
                         "states published")
        known.append(view("known-later", TargetState.UP, eu=RegionVerdict.UP))
        await broker.stop_async()
        await eventually(lambda: not publisher.connected, "the publisher to notice")
        await broker.start_async()  # no persistence: every retained message is gone
        await eventually(lambda: publisher.connected and publisher.queue_depth == 0,
                         "states republished")
        async with subscribed(broker, f"{prefix}/#") as late:
            received = await collect_messages(late, count=5, timeout_s=WAIT_S)

    by_topic = {m.topic: json.loads(m.payload) for m in received}
    for i in range(3):
        assert by_topic[f"{prefix}/state/probe-{i}"]["changed_at"] == rfc3339(T0 + i)
    assert by_topic[f"{prefix}/state/known-later"]["changed_at"] == rfc3339(T0 + 100)
    assert by_topic[f"{prefix}/status/{COLLECTOR}"] == {"collector_id": COLLECTOR,
                                                        "status": "online"}
    assert sample(registry, "probenet_mqtt_published_total", kind="state") == 7


async def test_queue_overflow_while_broker_down_is_counted(persistent_broker, prefix, registry):
    broker = persistent_broker
    sub_id = f"sub-{uuid.uuid4().hex[:8]}"
    async with subscribed(broker, f"{prefix}/events", identifier=sub_id, clean_session=False):
        pass  # the broker now keeps this subscription while the subscriber is away
    await broker.stop_async()
    async with make_publisher(broker.url, prefix, registry, queue_size=3) as publisher:
        publisher.submit([outage(seq, OutageEvent.OPENED, record(f"p{seq}"), T0 + seq)
                          for seq in range(1, 11)])
        # State changes are coalesced per probe: 100 of them never overflow anything.
        for i in range(50):
            publisher.submit([change("a", TargetState.UP, T0 + i, eu=RegionVerdict.UP),
                              change("b", TargetState.UP, T0 + i, eu=RegionVerdict.UP)])
        assert sample(registry, "probenet_mqtt_dropped_total", kind="event") == 7
        assert sample(registry, "probenet_mqtt_dropped_total", kind="state") == 0
        assert sample(registry, "probenet_mqtt_queue_depth") == 5
        assert publisher.queue_depth == 5

        await broker.start_async()
        async with subscribed(broker, f"{prefix}/events", identifier=sub_id,
                              clean_session=False) as subscriber:
            received = await collect_messages(subscriber, until=has_seq(10), timeout_s=WAIT_S)
        await eventually(lambda: publisher.queue_depth == 0, "the queue drained")

    assert [p["seq"] for p in events_of(received)] == [8, 9, 10]
    assert sample(registry, "probenet_mqtt_published_total", kind="event") == 3
    assert sample(registry, "probenet_mqtt_dropped_total", kind="event") == 7


async def test_unreachable_broker_does_not_block_start(prefix, registry, caplog):
    caplog.set_level(logging.DEBUG, logger="probenet.collector.events")
    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    publisher = make_publisher(url, prefix, registry)
    async with asyncio.timeout(5):
        await publisher.__aenter__()
    try:
        publisher.submit([outage(1, OutageEvent.OPENED, record("x"), T0)])
        await eventually(lambda: any(r.getMessage() == "mqtt: connect attempt failed"
                                     for r in caplog.records), "a few retries")
        assert not publisher.connected
        assert publisher.queue_depth == 1
        assert sample(registry, "probenet_mqtt_connected") == 0
    finally:
        async with asyncio.timeout(10):
            await publisher.__aexit__(None, None, None)
    # What could not be published before leaving is counted, not silently lost.
    assert sample(registry, "probenet_mqtt_dropped_total", kind="event") == 1
    assert publisher.queue_depth == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and r.getMessage() == "mqtt: broker unreachable, retrying with backoff"]
    retries = [r for r in caplog.records if r.getMessage() == "mqtt: connect attempt failed"]
    assert len(warnings) == 1  # logged once, then quietly at debug
    assert retries  # it kept trying (backoff 0.1 s .. 1 s)


async def test_silent_broker_is_abandoned_after_the_deadline(prefix, registry):
    """A peer that accepts TCP but never answers CONNACK: bounded waits, retries, no hang."""
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        publisher = make_publisher(f"mqtt://127.0.0.1:{port}", prefix, registry,
                                   operation_timeout_s=0.5)
        async with asyncio.timeout(WAIT_S):
            async with publisher:
                await eventually(lambda: len(accepted) >= 2, "a second connect attempt")
                assert not publisher.connected
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


# -- credentials and TLS ------------------------------------------------------------------


async def test_password_and_tls(tmp_path, prefix, registry):
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("localhost", "127.0.0.1")
    passwords = write_password_file(tmp_path / "mosquitto" / "passwd",
                                    {"collector": "s3cret", "reader": "r3ad"})
    broker = start_broker(tmp_path / "mosquitto", password_file=passwords,
                          tls=BrokerTls(cert_file=server.chain_file, key_file=server.key_file))
    password_file = tmp_path / "mqtt-password"
    password_file.write_text("s3cret\n")
    try:
        async with subscribed(broker, f"{prefix}/events", username="reader",
                              password="r3ad") as subscriber:
            publisher = make_publisher(
                broker.tls_url, prefix, registry, username="collector",
                password_file=str(password_file), tls=MqttTlsConfig(ca_file=str(ca.ca_file)))
            async with publisher:
                publisher.submit([outage(1, OutageEvent.OPENED, record("tls"), T0)])
                received = await collect_messages(subscriber, count=1, timeout_s=WAIT_S)
        assert [p["seq"] for p in events_of(received)] == [1]
    finally:
        broker.stop()


async def test_wrong_password_or_untrusted_broker_never_raises(tmp_path, prefix, caplog):
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("localhost", "127.0.0.1")
    passwords = write_password_file(tmp_path / "mosquitto" / "passwd", {"collector": "s3cret"})
    broker = start_broker(tmp_path / "mosquitto", password_file=passwords,
                          tls=BrokerTls(cert_file=server.chain_file, key_file=server.key_file))
    wrong = tmp_path / "wrong-password"
    wrong.write_text("guess\n")
    try:
        cases = [
            (broker.url, {"username": "collector", "password_file": str(wrong)},
             "not authori"),
            # The system trust store does not know the test CA.
            (broker.tls_url, {"username": "collector", "password_file": str(passwords)},
             "certificate verify failed"),
        ]
        for url, options, cause in cases:
            caplog.clear()
            registry = CollectorRegistry()
            async with make_publisher(url, prefix, registry, **options) as publisher:
                publisher.submit([outage(1, OutageEvent.OPENED, record("x"), T0)])
                await eventually(lambda: any(r.getMessage().startswith("mqtt: broker unr")
                                             for r in caplog.records), "a failed connect")
                assert not publisher.connected
                assert publisher.queue_depth == 1
            failures = [r for r in caplog.records
                        if r.getMessage() == "mqtt: broker unreachable, retrying with backoff"]
            assert len(failures) == 1
            assert cause in failures[0].error.lower()
    finally:
        broker.stop()


# -- lifecycle ----------------------------------------------------------------------------


async def test_enter_twice_is_an_error_and_exit_is_idempotent(prefix, registry):
    publisher = make_publisher(f"mqtt://127.0.0.1:{free_port()}", prefix, registry)
    async with publisher:
        with pytest.raises(LifecycleError, match=r"^MqttPublisher entered twice$"):
            await publisher.__aenter__()
    await publisher.__aexit__(None, None, None)
    with pytest.raises(LifecycleError):
        await publisher.__aenter__()


async def test_missing_password_file_is_a_service_error(tmp_path, prefix, registry):
    secret = tmp_path / "secret"
    secret.write_text("x")
    publisher = make_publisher(f"mqtt://127.0.0.1:{free_port()}", prefix, registry,
                               username="u", password_file=str(secret))
    secret.unlink()  # gone between config load and start
    with pytest.raises(ServiceError, match="password_file"):
        await publisher.__aenter__()


async def test_unrenderable_transition_is_counted_not_raised(broker, prefix, registry):
    async with (subscribed(broker, f"{prefix}/events") as subscriber,
                make_publisher(broker.url, prefix, registry) as publisher):
        publisher.submit([
            outage(1, OutageEvent.OPENED, record("a"), float("nan")),  # no RFC 3339 for NaN
            change("b", TargetState.UP, float("inf")),
            outage(2, OutageEvent.OPENED, record("c"), T0),
        ])
        received = await collect_messages(subscriber, until=has_seq(2), timeout_s=WAIT_S)
    assert [p["seq"] for p in events_of(received)] == [2]
    assert sample(registry, "probenet_mqtt_dropped_total", kind="event") == 1
    assert sample(registry, "probenet_mqtt_dropped_total", kind="state") == 1


# -- with the real collector --------------------------------------------------------------


async def test_collector_outage_reaches_mqtt(broker, prefix, registry, tmp_path):
    """The real service (gRPC ingest, classifier, journal) with the publisher as its sink."""
    config = parse_config(collector_yaml(
        str(tmp_path / "journal.db"),
        extra=f"mqtt: {{url: '{broker.url}', topic_prefix: '{prefix}'}}\n"))
    assert config.mqtt is not None
    clock = ManualClock()
    service: CollectorService | None = None
    publisher = MqttPublisher(
        config.mqtt, registry=registry, collector_id=config.collector_id,
        initial_states=lambda: service.classifier.targets() if service else ())
    service = CollectorService(config, registry=registry, clock=clock, sinks=[publisher])
    fleet_spec = [("fra-1", "eu"), ("iad-1", "us"), ("sin-1", "ap")]
    async with (subscribed(broker, f"{prefix}/#") as subscriber, publisher, service,
                contextlib.AsyncExitStack() as stack):
        fleet = [await stack.enter_async_context(TestAgent(service.grpc_address, a, r))
                 for a, r in fleet_spec]
        for failing in (False, True, True):
            for agent in fleet:
                await agent.send([agent.result("web", success=not failing),
                                  agent.result("api")])
        opened = await collect_messages(
            subscriber, timeout_s=WAIT_S,
            until=lambda got: any(b'"opened"' in m.payload for m in got))
        for _ in range(2):
            for agent in fleet:
                await agent.send([agent.result("web"), agent.result("api")])
        resolved = await collect_messages(
            subscriber, timeout_s=WAIT_S,
            until=lambda got: any(b'"resolved"' in m.payload for m in got))
        journaled = [(seq, event) for seq, event, _ in service.journal.events()]

    received = [*opened, *resolved]
    events = [json.loads(m.payload) for m in received if m.topic == f"{prefix}/events"]
    # Every journaled transition but `updated`, with the journal's seq, in order.
    assert [(e["seq"], e["event"]) for e in events] == [
        (seq, event) for seq, event in journaled if event != "updated"]
    # The agents report one after the other, yet the outage opens global (the scope hold
    # waits for the regions whose result is due); recovering region by region, it narrows.
    assert (events[0]["event"], events[0]["scope"]) == ("opened", "global")
    assert ("scope_changed", "regional") in [(e["event"], e["scope"]) for e in events]
    assert events[-1]["event"] == "resolved"
    assert events[-1]["ended_at"] is not None
    assert {e["id"] for e in events} == {events[0]["id"]}
    assert {e["probe"] for e in events} == {"web"}
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    web_states = [json.loads(m.payload)["state"] for m in received
                  if m.topic == f"{prefix}/state/web"]
    assert "global_outage" in web_states
    assert web_states[-1] == "up"
