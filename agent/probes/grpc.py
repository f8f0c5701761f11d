"""The `grpc` probe: the standard `grpc.health.v1.Health/Check`, with or without TLS.

Target `host:port` (`[v6]:port`). Success = the server answers SERVING for `service` (""
asks about the server as a whole). Every run uses a fresh channel with its own subchannel
pool, so each probe opens a new connection (a pooled one would measure nothing about
reachability). Reports `pb.GrpcDetails{serving_status}` whenever the server answered.

Failure reasons: dns_* (phase dns); grpc_unavailable (connect: refused, unreachable, TLS
failure, ...); grpc_not_serving, grpc_service_unknown (validation); grpc_<status> for any
other status of the call, e.g. grpc_unimplemented (no health service), in phase request.
Timing phases: resolve, connect (TCP, TLS and HTTP/2 set-up), request.

Not applied: `source_address`. gRPC Python has no channel argument to bind the local
address of its connections (C++'s socket mutator is not exposed); the agent logs this once
per probe at build time.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from probenet.addresses import format_host_port, split_host_port
from probenet.v1 import probenet_pb2 as pb

from .base import PhaseTracker, ProbeFailure, ProbeOutcome
from .resolve import Resolver, resolve_addresses, system_resolver

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..config import ProbeSpec, TlsClientOptions

log = logging.getLogger(__name__)

# The probe's own deadline sits a little beyond the scheduler's, so that a slow server is
# reported by the scheduler as a timeout in the phase it was in; the explicit gRPC deadline
# still bounds the call when the probe runs on its own.
_DEADLINE_SLACK_S = 1.0

_SERVING_STATUS_NAMES = {
    health_pb2.HealthCheckResponse.UNKNOWN: "UNKNOWN",
    health_pb2.HealthCheckResponse.SERVING: "SERVING",
    health_pb2.HealthCheckResponse.NOT_SERVING: "NOT_SERVING",
    health_pb2.HealthCheckResponse.SERVICE_UNKNOWN: "SERVICE_UNKNOWN",
}

_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.use_local_subchannel_pool", 1),  # a fresh connection per channel
    ("grpc.enable_retries", 0),
    ("grpc.max_receive_message_length", 64 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 1000),
)


def grpc_target(address: str, port: int) -> str:
    """A gRPC target naming one resolved address (no second resolution inside gRPC)."""
    scheme = "ipv6" if ":" in address else "ipv4"
    return f"{scheme}:{format_host_port(address, port)}"


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from exc


def channel_credentials(tls: TlsClientOptions) -> grpc.ChannelCredentials:
    """TLS credentials from a probe's `tls` options; ValueError for an unreadable file."""
    if tls.insecure_skip_verify:
        raise ValueError(
            "grpc probes cannot skip certificate verification (gRPC Python has no such "
            "option): give the server's CA as ca_file instead of insecure_skip_verify")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file, "ca_file"),
        private_key=_read(tls.key_file, "key_file"),
        certificate_chain=_read(tls.cert_file, "cert_file"),
    )


class GrpcProbe:
    """Ask a gRPC server's health service about `service`."""

    def __init__(self, host: str, port: int, *, service: str = "",
                 credentials: grpc.ChannelCredentials | None = None,
                 server_name: str | None = None, timeout_s: float = 5.0,
                 resolver: Resolver = system_resolver) -> None:
        """`credentials` None means plaintext; `server_name` overrides the TLS name check."""
        self.host = host
        self.port = port
        self.service = service
        self.credentials = credentials
        self.server_name = server_name or host
        self.timeout_s = timeout_s
        self.resolver = resolver

    def _channel(self, address: str) -> grpc.aio.Channel:
        # The :authority header names the host (for TLS: the name checked against the
        # certificate, which gRPC requires to agree with it), not the resolved address.
        target = grpc_target(address, self.port)
        if self.credentials is None:
            authority = format_host_port(self.host, self.port)
            return grpc.aio.insecure_channel(
                target, options=[*_CHANNEL_OPTIONS, ("grpc.default_authority", authority)])
        authority = format_host_port(self.server_name, self.port)
        options = [*_CHANNEL_OPTIONS, ("grpc.default_authority", authority),
                   ("grpc.ssl_target_name_override", self.server_name)]
        return grpc.aio.secure_channel(target, self.credentials, options=options)

    async def run(self, tracker: PhaseTracker) -> Sequence[ProbeOutcome]:
        """Probe once: resolve, connect a fresh channel, call Health/Check."""
        tracker.enter("dns", "resolve")
        address = (await resolve_addresses(self.host, resolver=self.resolver))[0]
        where = format_host_port(self.host, self.port)
        tracker.enter("connect", "connect")
        channel = self._channel(address)
        try:
            await self._connect(channel, where)
            tracker.enter("request", "request")
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                response = await stub.Check(
                    health_pb2.HealthCheckRequest(service=self.service),
                    timeout=self.timeout_s + _DEADLINE_SLACK_S, wait_for_ready=False)
            except grpc.aio.AioRpcError as exc:
                return [self._rpc_error_outcome(tracker, exc, address, where)]
        finally:
            await channel.close(grace=None)
        status = _SERVING_STATUS_NAMES.get(response.status, "UNKNOWN")
        outcome = ProbeOutcome(success=status == "SERVING", duration_seconds=0.0,
                               address=address, details=pb.GrpcDetails(serving_status=status))
        if status == "SERVICE_UNKNOWN":
            outcome.failed_phase, outcome.reason = "validation", "grpc_service_unknown"
        elif status != "SERVING":
            outcome.failed_phase, outcome.reason = "validation", "grpc_not_serving"
        if not outcome.success:
            outcome.error = f"{where} health of {self.service or '(server)'!s}: {status}"
        outcome.duration_seconds = tracker.finish()
        outcome.phases = dict(tracker.durations)
        return [outcome]

    async def _connect(self, channel: grpc.aio.Channel, where: str) -> None:
        """Wait until the channel is READY; ProbeFailure when the connection attempt fails."""
        try:
            async with asyncio.timeout(self.timeout_s + _DEADLINE_SLACK_S):
                state = channel.get_state(try_to_connect=True)
                while state != grpc.ChannelConnectivity.READY:
                    if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                                 grpc.ChannelConnectivity.SHUTDOWN):
                        raise ProbeFailure("connect", "grpc_unavailable",
                                           await self._why_unavailable(channel, where))
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError as exc:  # only without the scheduler's (shorter) deadline
            raise ProbeFailure("connect", "connect_timeout",
                               f"{where}: not connected within {self.timeout_s:g}s") from exc

    async def _why_unavailable(self, channel: grpc.aio.Channel, where: str) -> str:
        """The channel's last connection error, which only a failing call reports."""
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            await stub.Check(health_pb2.HealthCheckRequest(service=self.service),
                             timeout=self.timeout_s, wait_for_ready=False)
        except grpc.aio.AioRpcError as exc:
            return f"{where}: {exc.details() or exc.code().name}"
        return f"{where}: connection failed"

    def _rpc_error_outcome(self, tracker: PhaseTracker, exc: grpc.aio.AioRpcError,
                           address: str, where: str) -> ProbeOutcome:
        code = exc.code()
        error = f"{where}: {code.name}: {exc.details() or ''}".rstrip(": ")
        details = None
        if code == grpc.StatusCode.NOT_FOUND:
            phase, reason = "validation", "grpc_service_unknown"
            details = pb.GrpcDetails(serving_status="SERVICE_UNKNOWN")
        elif code == grpc.StatusCode.UNAVAILABLE:
            phase, reason = "connect", "grpc_unavailable"
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            phase, reason = "timeout", "timeout"
        else:
            phase, reason = "request", f"grpc_{code.name.lower()}"
        duration = tracker.finish()
        return ProbeOutcome(success=False, duration_seconds=duration, failed_phase=phase,
                            timeout_phase="request" if phase == "timeout" else "",
                            reason=reason, error=error, phases=dict(tracker.durations),
                            address=address, details=details)


def build(spec: ProbeSpec, *, source_address: str | None,
          resolver: Resolver = system_resolver) -> GrpcProbe:
    """Build a `grpc` probe from its spec; ValueError for unusable TLS settings."""
    options = spec.grpc
    host, port = split_host_port(spec.target)
    tls = options.tls if options else None
    if source_address is not None:
        log.info("grpc probes cannot bind a source address; connecting from the default one",
                 extra={"probe": spec.name, "source_address": source_address})
    return GrpcProbe(host, port, service=options.service if options else "",
                     credentials=channel_credentials(tls) if tls else None,
                     server_name=tls.server_name if tls else None, timeout_s=spec.timeout,
                     resolver=resolver)
