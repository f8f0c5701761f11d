"""The gRPC stream from the agent to one collector: hello, batches, acks, reconnects.

One `CollectorStream` per configured collector, each with its own Spool. While entered it
keeps one `Ingest.Stream` call open: it sends Hello, reads Welcome (whose `acked_seq` drops
what the collector already has), then a sender task writes batches (at most the collector's
`max_batch_results` and `max_message_bytes`, flushed when full or after `linger`) while a
receiver task applies cumulative Acks. When the stream fails it reconnects with capped,
jittered exponential backoff (`probenet.backoff.Backoff`: between half and all of
min(backoff_max, backoff_initial * 2^n)), and everything unacknowledged is sent again; the
collector deduplicates by sequence.

States (logged once per change, exported as metrics): connecting, connected, backoff,
closed. A stream that has results in flight and hears nothing for `ack_timeout` is treated
as dead and reconnected. Below that, HTTP/2 keepalive pings (`keepalive`, answered within
`keepalive_timeout`, per collector entry) find a silently dead connection, even an idle
one, and every session opens a connection of its own (never a pooled, possibly dead one).
Authentication: TLS (optionally mutual) and/or a bearer token read from `token_file` at
every connect (so a rotated token is picked up).

Remote configuration: a `ProbeConfig` from the collector goes to the agent's
`ProbeConfigHandler` only when the agent has `remote_config: true` and the collector is
authenticated (its entry has `tls`, or its address is loopback); otherwise it is refused
with a `ConfigStatus` saying why. Every `ConfigStatus` (answers, and the one sent after
each Welcome while a pushed set runs) is written by one task, between result batches.
Unknown collector messages are ignored.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

import grpc

from probenet.addresses import is_loopback_host, split_host_port
from probenet.backoff import Backoff
from probenet.lifecycle import EnterOnce
from probenet.v1 import probenet_pb2 as pb
from probenet.v1 import probenet_pb2_grpc as pb_grpc

from .errors import LifecycleError, StreamError, StreamRejectedError

if TYPE_CHECKING:
    from collections.abc import Callable

    from .config import CollectorTarget, StreamSettings
    from .spool import Spool

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_CLOSE_TIMEOUT_S = 2.0
# Collector answers that no reconnect can fix quickly: back off to the maximum at once.
_REJECTIONS = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                         grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION})


class ProbeConfigHandler(Protocol):
    """The agent's side of remote configuration, as a stream sees it (agent/main.py)."""

    @property
    def remote_config(self) -> bool:
        """Whether the agent accepts pushed probe sets (`remote_config: true`)."""
        ...

    def apply_probe_config(self, collector_id: str,
                           probe_config: pb.ProbeConfig) -> pb.ConfigStatus:
        """Apply a set from an authenticated collector; the status to answer."""
        ...

    def running_status(self) -> pb.ConfigStatus | None:
        """What the agent runs (None when no pushed set runs), sent after a Welcome."""
        ...


def is_authenticated(target: CollectorTarget) -> bool:
    """Whether the agent knows whom it talks to: TLS, or a loopback address."""
    if target.tls is not None:
        return True
    host, _ = split_host_port(target.address)
    return is_loopback_host(host)


def keepalive_options(target: CollectorTarget) -> list[tuple[str, int]]:
    """Channel options that make a silently dead connection fail within keepalive + timeout.

    The collector's policy (collector/server.py `grpc_server_options`) permits a ping every
    10 s at most, with or without calls; config validation keeps `keepalive` at or above it.
    """
    timeout_ms = round(target.keepalive_timeout * 1000)
    return [
        ("grpc.keepalive_time_ms", round(target.keepalive * 1000)),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        # The answer to *any* ping in flight: a keepalive ping due while another ping (a
        # flow-control BDP probe) is unanswered only waits for that one, under this timeout,
        # which defaults to 60 s; so a cut went unnoticed for a minute despite the keepalive.
        ("grpc.http2.ping_timeout_ms", timeout_ms),
        # Ping even while no call is open (between a reconnect and the Hello) ...
        ("grpc.keepalive_permit_without_calls", 1),
        # ... and while we have nothing to send: the default (2) stops pinging an idle
        # agent's connection, which then dies unnoticed until its next batch.
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _read_file(path: str, what: str, collector: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StreamError(collector, f"cannot read {what} {path}: {exc.strerror}") from exc


class CollectorStream:
    """Streams the results of one Spool to one collector (async context manager)."""

    def __init__(self, target: CollectorTarget, spool: Spool, *,
                 hello: Callable[[], pb.Hello], settings: StreamSettings,
                 rng: Callable[[], float] = random.random,
                 probe_configs: ProbeConfigHandler | None = None) -> None:
        """`hello` is called at every connect (it reflects the current config).

        `rng` (uniform in [0, 1)) jitters the reconnect backoff. `probe_configs` receives
        pushed probe sets (None: they are answered "remote_config is off").
        """
        self.target = target
        self.spool = spool
        self._hello = hello
        self.settings = settings
        self._backoff = Backoff(settings.backoff_initial, settings.backoff_max, rand=rng)
        self.epoch = 0
        self.state = "closed"
        self.reconnects = 0
        self.results_sent = 0
        self.collector_id = ""
        self.last_error = ""
        self._connected = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        # Set before the runner is cancelled: grpc.aio may turn a cancellation that lands
        # inside a call into an RPC error, which the reconnect loop would otherwise retry.
        self._closing = False
        self._lifecycle = EnterOnce("CollectorStream", LifecycleError)
        self._waiting_since: float | None = None  # results in flight with no ack since
        self._probe_configs = probe_configs
        self._statuses: collections.deque[pb.ConfigStatus] = collections.deque(maxlen=16)
        self._status_ready = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._told_remote_off = False

    # -- the StreamView of agent.metrics ---------------------------------------------------

    @property
    def address(self) -> str:
        """The collector's address."""
        return self.target.address

    @property
    def buffered(self) -> int:
        """Results not yet acknowledged."""
        return len(self.spool)

    @property
    def capacity(self) -> int:
        """The buffer's bound."""
        return self.spool.max_results

    @property
    def dropped(self) -> int:
        """Results dropped on overflow."""
        return self.spool.dropped

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start connecting in the background."""
        self._lifecycle.enter()
        tasks = asyncio.TaskGroup()
        await tasks.__aenter__()
        self._tasks = tasks
        self._runner = tasks.create_task(self._run_forever(),
                                         name=f"stream:{self.target.address}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the stream (idempotent); unacknowledged results are abandoned."""
        if not self._lifecycle.leave():
            return
        tasks, self._tasks = self._tasks, None
        if tasks is None:
            return
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
        await tasks.__aexit__(None, None, None)
        self._set_state("closed", "agent stopping")

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait until the stream is established; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every buffered result is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while len(self.spool):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    @property
    def pending_statuses(self) -> tuple[pb.ConfigStatus, ...]:
        """ConfigStatus messages not written yet."""
        return tuple(self._statuses)

    def announce(self, status: pb.ConfigStatus) -> None:
        """Send `status` to this collector (now if connected, else after the next Welcome)."""
        self._statuses.append(status)
        self._status_ready.set()

    def _set_state(self, state: str, reason: str = "", **fields: Any) -> None:
        if state == self.state:
            return
        previous, self.state = self.state, state
        if state == "connected":
            self._connected.set()
        else:
            self._connected.clear()
        extra = {"collector": self.target.address, "state": state, "previous": previous,
                 **fields}
        if reason:
            extra["reason"] = reason
        level = logging.WARNING if state == "backoff" and previous == "connected" else (
            logging.INFO)
        log.log(level, "collector stream %s", state, extra=extra)

    # -- connection loop -------------------------------------------------------------------

    async def _run_forever(self) -> None:
        failures = 0  # in a row, since the last established stream
        while True:
            self._set_state("connecting")
            established = False
            try:
                established = await self._session()
                reason = "the collector ended the stream"
                slow = False
            except StreamRejectedError as exc:
                reason, slow = str(exc), True
            except StreamError as exc:
                reason, slow = str(exc), False
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
                slow = exc.code() in _REJECTIONS
            except (OSError, TimeoutError, grpc.RpcError) as exc:
                reason, slow = f"{type(exc).__name__}: {exc}", False
            except Exception as exc:  # a bug of ours: log it, keep the agent streaming
                log.exception("collector stream failed", extra={
                    "collector": self.target.address})
                reason, slow = f"{type(exc).__name__}: {exc}", True
            self.last_error = reason
            if self._closing:
                return
            failures = 1 if established else failures + 1
            delay = self._backoff.longest() if slow else self._backoff.delay(failures)
            self._set_state("backoff", reason, retry_in_s=round(delay, 3), attempt=failures)
            await asyncio.sleep(delay)

    def _channel(self) -> grpc.aio.Channel:
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # Our own reconnect loop decides when to retry, with its own backoff.
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            # A connection of our own per channel: from the process-wide pool a new channel
            # to a partitioned collector got the dead connection's subchannel, READY at once,
            # and wrote into that dead socket until a ping timed out (56 s, issue 11).
            ("grpc.use_local_subchannel_pool", 1),
            *keepalive_options(self.target),
        ]
        tls = self.target.tls
        if tls is None:
            return grpc.aio.insecure_channel(self.target.address, options=options)
        address = self.target.address
        root = _read_file(tls.ca_file, "CA file", address) if tls.ca_file else None
        key = _read_file(tls.key_file, "key file", address) if tls.key_file else None
        chain = _read_file(tls.cert_file, "certificate file", address) if tls.cert_file else None
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                                   certificate_chain=chain)
        return grpc.aio.secure_channel(address, credentials, options=options)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self.target.token_file is None:
            return ()
        token = _read_file(self.target.token_file, "token file", self.target.address)
        text = token.decode("utf-8", errors="replace").strip()
        if not text:
            raise StreamError(self.target.address, f"token file {self.target.token_file} is "
                                                   "empty")
        return (("authorization", f"Bearer {text}"),)

    async def _session(self) -> bool:
        """One stream, from connect to its end; True if it was established."""
        address = self.target.address
        metadata = self._metadata()
        channel = self._channel()
        call = None
        try:
            try:
                async with asyncio.timeout(self.target.connect_timeout):
                    await channel.channel_ready()
            except TimeoutError as exc:
                raise StreamError(address, f"not reachable within "
                                           f"{self.target.connect_timeout:g}s") from exc
            call = pb_grpc.IngestStub(channel).Stream(metadata=metadata)
            hello = self._hello()
            self.epoch = hello.epoch
            welcome = await self._handshake(call, hello)
            self.collector_id = welcome.collector_id
            self.spool.rewind()
            self.spool.ack(welcome.acked_seq)
            self._waiting_since = None
            self.reconnects += 1
            self._set_state("connected", collector_id=welcome.collector_id,
                            acked_seq=welcome.acked_seq, buffered=len(self.spool))
            self._statuses.clear()  # answers meant for the previous session
            running = (self._probe_configs.running_status()
                       if self._probe_configs is not None else None)
            if running is not None:
                self.announce(running)
            max_batch = min(welcome.max_batch_results or self.settings.max_batch_results,
                            self.settings.max_batch_results)
            max_bytes = min(welcome.max_message_bytes or MAX_MESSAGE_BYTES,
                            MAX_MESSAGE_BYTES) * 9 // 10
            async with asyncio.TaskGroup() as tasks:
                receiver = tasks.create_task(self._receive(call),
                                             name=f"stream-acks:{address}")
                sender = tasks.create_task(self._send(call, max_batch, max_bytes),
                                           name=f"stream-batches:{address}")
                watchdog = tasks.create_task(self._watch_acks(),
                                             name=f"stream-ack-watchdog:{address}")
                statuses = tasks.create_task(self._send_statuses(call),
                                             name=f"stream-config-status:{address}")
                await asyncio.wait([receiver, sender, watchdog, statuses],
                                   return_when=asyncio.FIRST_COMPLETED)
                for task in (receiver, sender, watchdog, statuses):
                    task.cancel()
        except* grpc.aio.AioRpcError as group:
            raise group.exceptions[0] from None
        except* StreamError as group:
            raise group.exceptions[0] from None
        finally:
            if call is not None:
                call.cancel()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await channel.close(grace=None)
        return True

    async def _handshake(self, call: Any, hello: pb.Hello) -> pb.Welcome:
        address = self.target.address
        async with asyncio.timeout(self.target.connect_timeout):
            try:
                await call.write(pb.AgentMessage(hello=hello))
                message = await call.read()
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _REJECTIONS:
                    raise StreamRejectedError(address, exc.code().name,
                                              exc.details() or "") from exc
                raise
            except TimeoutError as exc:
                raise StreamError(address, "no Welcome within "
                                           f"{self.target.connect_timeout:g}s") from exc
        if message is grpc.aio.EOF:
            code = await call.code()
            details = await call.details()
            if code in _REJECTIONS:
                raise StreamRejectedError(address, code.name, details or "")
            raise StreamError(address, f"stream ended before Welcome ({code.name}: {details})")
        if message.WhichOneof("body") != "welcome":
            raise StreamError(address, "the collector's first message is not a Welcome")
        welcome: pb.Welcome = message.welcome
        return welcome

    async def _receive(self, call: Any) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                code = await call.code()
                details = await call.details()
                raise StreamError(self.target.address,
                                  f"the collector ended the stream ({code.name}: {details})")
            body = message.WhichOneof("body")
            if body == "ack":
                if message.ack.epoch == self.epoch and self.spool.ack(message.ack.acked_seq):
                    self._waiting_since = time.monotonic() if len(self.spool) > \
                        self.spool.unsent else None
            elif body == "notice":
                log.info("collector notice", extra={
                    "collector": self.target.address, "code": message.notice.code,
                    "notice": message.notice.message})
            elif body == "probe_config":
                self.handle_probe_config(message.probe_config)
            # Other bodies (a newer collector's) are ignored: they must not end the stream.

    def handle_probe_config(self, probe_config: pb.ProbeConfig) -> None:
        """Apply (or refuse) a pushed set, and queue the ConfigStatus that answers it."""
        address = self.target.address
        handler = self._probe_configs
        if handler is None or not handler.remote_config:
            if not self._told_remote_off:
                self._told_remote_off = True
                log.info("collector pushes probes; ignored: remote_config is off", extra={
                    "collector": address, "config_version": probe_config.version})
            self.announce(pb.ConfigStatus(received_version=probe_config.version,
                                          error="remote_config is off"))
            return
        if not is_authenticated(self.target):
            error = (f"collector {address} is not authenticated (no tls in its entry and not "
                     "a loopback address): pushed probes refused")
            log.warning("remote probe set refused: %s", error, extra={
                "collector": address, "config_version": probe_config.version})
            status = pb.ConfigStatus()
            running = handler.running_status()
            if running is not None:
                status.CopyFrom(running)
            status.received_version = probe_config.version
            status.error = error
            self.announce(status)
            return
        self.announce(handler.apply_probe_config(self.collector_id, probe_config))

    async def _send_statuses(self, call: Any) -> None:
        while True:
            await self._status_ready.wait()
            self._status_ready.clear()
            while self._statuses:
                status = self._statuses.popleft()
                async with self._write_lock:
                    await call.write(pb.AgentMessage(config_status=status))

    async def _send(self, call: Any, max_batch: int, max_bytes: int) -> None:
        linger = self.settings.linger
        spool = self.spool
        while True:
            await spool.wait_unsent()
            if linger > 0 and spool.unsent < max_batch:
                await asyncio.sleep(linger)
            while batch := spool.take(max_batch, max_bytes):
                if self._waiting_since is None:
                    self._waiting_since = time.monotonic()
                async with self._write_lock:
                    await call.write(pb.AgentMessage(batch=pb.ResultBatch(results=batch)))
                self.results_sent += len(batch)

    async def _watch_acks(self) -> None:
        timeout_s = self.settings.ack_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout_s / 4))
            since = self._waiting_since
            if since is not None and time.monotonic() - since > timeout_s:
                raise StreamError(self.target.address,
                                  f"no acknowledgement for {timeout_s:g}s")
