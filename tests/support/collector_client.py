"""A small test agent speaking the real probenet.v1 protocol to a collector (for every suite).

    async with TestAgent(service.grpc_address, "fra-1", "eu-central") as agent:
        ack = await agent.send([agent.result("web", success=False)])

`result()` numbers results with the agent's next seq; `send()` writes one batch and waits
for its Ack. Every wait has a deadline. `raw_stream()` opens the stream without Hello for
tests that send garbage.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Self

import grpc

from probenet.v1 import probenet_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Sequence

METHOD = "/probenet.v1.Ingest/Stream"
DEADLINE_S = 15.0
PHASES = {"": pb.PHASE_UNSPECIFIED, "dns": pb.PHASE_DNS, "connect": pb.PHASE_CONNECT,
          "tls": pb.PHASE_TLS, "request": pb.PHASE_REQUEST, "response": pb.PHASE_RESPONSE,
          "validation": pb.PHASE_VALIDATION, "timeout": pb.PHASE_TIMEOUT}


def make_result(seq: int, probe: str, *, success: bool = True, confirmed: bool = True,
                kind: str = "http", target: str | None = None, service: str = "",
                phase: str = "connect", reason: str = "connect_refused",
                duration_seconds: float = 0.012, status_code: int = 0,
                timestamp_ms: int | None = None, interval_ms: int = 200,
                **extra: Any) -> pb.ProbeResult:
    """One ProbeResult; a failure defaults to a confirmed `connect` failure."""
    return pb.ProbeResult(
        seq=seq, probe=probe, target=target or f"https://{probe}.example/", kind=kind,
        service=service, success=success, confirmed=confirmed and not success,
        failed_phase=pb.PHASE_UNSPECIFIED if success else PHASES[phase],
        reason="" if success else reason,
        duration_seconds=duration_seconds,
        status_code=status_code or (200 if success and kind == "http" else 0),
        timestamp_ms=timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
        interval_ms=interval_ms, **extra)


class StreamEndedError(Exception):
    """The collector ended the stream; `code` and `details` say why."""

    def __init__(self, code: grpc.StatusCode | None, details: str | None) -> None:
        """Keep the status."""
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token is not None else ()


class TestAgent:
    """A test agent: one stream, Hello on enter, batches with `send`."""

    __test__ = False  # not a pytest class

    def __init__(self, address: str, agent_id: str, region: str, *, token: str | None = None,
                 epoch: int | None = None, interval_ms: int = 200, probe_count: int = 0,
                 labels: dict[str, str] | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, Any]] = (),
                 next_seq: int = 1, remote_config: bool = False,
                 config_version: str = "") -> None:
        """Connect on enter; `epoch` defaults to now in unix nanoseconds."""
        self.address = address
        self.agent_id = agent_id
        self.region = region
        self.token = token
        self.epoch = epoch if epoch is not None else time.time_ns()
        self.interval_ms = interval_ms
        self.probe_count = probe_count
        self.labels = labels or {}
        self.credentials = credentials
        self.options = list(options)
        self.next_seq = next_seq
        self.remote_config = remote_config
        self.config_version = config_version
        self.welcome: pb.Welcome | None = None
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None

    def _open_channel(self) -> grpc.aio.Channel:
        if self.credentials is not None:
            return grpc.aio.secure_channel(self.address, self.credentials, options=self.options)
        return grpc.aio.insecure_channel(self.address, options=self.options)

    async def __aenter__(self) -> Self:
        """Open the stream, say Hello, wait for Welcome (StreamEndedError if refused)."""
        self._channel = self._open_channel()
        stream = self._channel.stream_stream(
            METHOD, request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.CollectorMessage.FromString)
        self._call = stream(metadata=_metadata(self.token))
        await self.write(pb.AgentMessage(hello=pb.Hello(
            agent_id=self.agent_id, region=self.region, labels=self.labels,
            version="test", epoch=self.epoch, interval_ms=self.interval_ms,
            probe_count=self.probe_count, remote_config=self.remote_config,
            config_version=self.config_version)))
        try:
            message = await self.read()
        except BaseException:
            await self.close()
            raise
        if message.WhichOneof("body") != "welcome":
            await self.close()
            raise AssertionError(f"expected Welcome, got {message}")
        self.welcome = message.welcome
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the stream and channel."""
        await self.close()

    async def close(self) -> None:
        """Half-close and drop the channel (idempotent)."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(grace=None)

    async def write(self, message: pb.AgentMessage) -> None:
        """Send one message (bounded wait)."""
        try:
            async with asyncio.timeout(DEADLINE_S):
                await self._call.write(message)
        except grpc.aio.AioRpcError as exc:
            raise StreamEndedError(exc.code(), exc.details()) from exc
        except (grpc.aio.UsageError, asyncio.InvalidStateError):
            # The collector already ended the stream: report its status.
            raise StreamEndedError(*await self.status()) from None

    async def read(self) -> pb.CollectorMessage:
        """The next collector message; StreamEndedError when the stream ended."""
        try:
            async with asyncio.timeout(DEADLINE_S):
                message = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise StreamEndedError(exc.code(), exc.details()) from exc
        if message is grpc.aio.EOF:
            raise StreamEndedError(await self._call.code(), await self._call.details())
        assert isinstance(message, pb.CollectorMessage)
        return message

    def result(self, probe: str, *, seq: int | None = None, **fields: Any) -> pb.ProbeResult:
        """A result numbered with the next seq (or `seq`), interval from the agent."""
        if seq is None:
            seq = self.next_seq
            self.next_seq += 1
        fields.setdefault("interval_ms", self.interval_ms)
        return make_result(seq, probe, **fields)

    def results(self, probes: Sequence[str], **fields: Any) -> list[pb.ProbeResult]:
        """One result per probe, same fields."""
        return [self.result(p, **fields) for p in probes]

    async def send(self, results: Sequence[pb.ProbeResult]) -> pb.Ack:
        """Write one batch; return its Ack."""
        await self.write(pb.AgentMessage(batch=pb.ResultBatch(results=results)))
        message = await self.read()
        if message.WhichOneof("body") != "ack":
            raise AssertionError(f"expected Ack, got {message}")
        return message.ack

    async def status(self) -> tuple[grpc.StatusCode, str]:
        """Wait for the stream's final status."""
        async with asyncio.timeout(DEADLINE_S):
            return await self._call.code(), await self._call.details()


class RawStream:
    """The Ingest stream with raw bytes: for garbage, oversized or out-of-order messages."""

    def __init__(self, address: str, *, token: str | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        """Open on enter."""
        self.address = address
        self.token = token
        self.options = list(options)
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None

    async def __aenter__(self) -> Self:
        """Open the stream (nothing sent yet)."""
        self._channel = grpc.aio.insecure_channel(self.address, options=self.options)
        stream = self._channel.stream_stream(
            METHOD, request_serializer=None, response_deserializer=pb.CollectorMessage.FromString)
        self._call = stream(metadata=_metadata(self.token))
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the channel."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(grace=None)

    async def send(self, data: bytes) -> None:
        """Write raw bytes as one message (errors are left to `outcome`)."""
        try:
            async with asyncio.timeout(DEADLINE_S):
                await self._call.write(data)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            pass  # the stream already ended: `outcome` tells how

    async def read(self) -> pb.CollectorMessage | None:
        """The next message, or None once the stream ended."""
        try:
            async with asyncio.timeout(DEADLINE_S):
                message = await self._call.read()
        except grpc.aio.AioRpcError:
            return None
        return None if message is grpc.aio.EOF else message

    async def outcome(self) -> tuple[grpc.StatusCode, str]:
        """Read until the stream ends; its status code and details."""
        async with asyncio.timeout(DEADLINE_S):
            while await self.read() is not None:
                pass
            return await self._call.code(), await self._call.details()


def hello_bytes(agent_id: str, region: str, *, epoch: int = 1, interval_ms: int = 200) -> bytes:
    """A serialized Hello message."""
    return pb.AgentMessage(hello=pb.Hello(agent_id=agent_id, region=region, epoch=epoch,
                                          interval_ms=interval_ms)).SerializeToString()


def batch_bytes(results: Sequence[pb.ProbeResult]) -> bytes:
    """A serialized ResultBatch message."""
    return pb.AgentMessage(batch=pb.ResultBatch(results=results)).SerializeToString()


# -- helpers for suites that run a real collector ------------------------------------------


class ManualClock:
    """A clock tests move by hand (`CollectorService(clock=...)`)."""

    def __init__(self, start: float | None = None) -> None:
        """Start at `start` (default: the real now)."""
        self.now = start if start is not None else time.time()

    def __call__(self) -> float:
        """The current fake time."""
        return self.now

    def advance(self, seconds: float) -> float:
        """Move forward; return the new now."""
        self.now += seconds
        return self.now


def collector_yaml(journal: str, *, grpc_listen: str = "127.0.0.1:0",
                   http_listen: str = "127.0.0.1:0", extra: str = "") -> str:
    """A collector config text for tests (loopback, port 0, the given journal)."""
    return (f"listen: {{grpc: '{grpc_listen}', http: '{http_listen}'}}\n"
            f"journal: {{path: '{journal}'}}\ncollector_id: test-collector\n{extra}")


async def http_get(url: str, *, accept: str | None = None) -> tuple[int, str, str]:
    """GET `url`: (status, content type, body), with a deadline."""
    import aiohttp  # noqa: PLC0415 - only suites that talk HTTP need it

    headers = {"Accept": accept} if accept else {}
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(url, headers=headers) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def http_json(url: str) -> Any:
    """GET `url` and decode its JSON body (asserting 200)."""
    import json  # noqa: PLC0415

    status, _, body = await http_get(url)
    assert status == 200, f"{url}: {status} {body}"
    return json.loads(body)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of sample `name` with exactly-matching `labels` in exposition `text`."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def counter(service: Any, name: str, **labels: str) -> float:
    """A sample of the service's /metrics families (0 when absent), read in process.

    The registry holds the ingest counters; the page's own families (probe failures, ...)
    come through prometheus_client's reference rendering of the page, which includes it.
    """
    value = service.page.reference_registry().get_sample_value(name, labels)
    return value or 0.0


def rejections(service: Any, reason: str) -> float:
    """probenet_ingest_rejections_total for `reason`."""
    return counter(service, "probenet_ingest_rejections_total", reason=reason)


def applied(service: Any) -> float:
    """Results the ingest applied."""
    return counter(service, "probenet_ingest_results_total", outcome="applied")
