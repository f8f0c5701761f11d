"""Probe outcomes turned into wire results, numbered, and handed to every collector's spool.

`to_wire` builds one `pb.ProbeResult` from a ProbeOutcome; `ResultFanout` gives each result
the agent's next sequence number (one sequence per agent and epoch, shared by every
collector) and appends the same message to every spool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from probenet.v1 import probenet_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .config import ProbeSpec
    from .probes.base import ProbeOutcome
    from .spool import Spool
    from .state import DurableSpools

PHASES: dict[str, pb.Phase.ValueType] = {
    "": pb.PHASE_UNSPECIFIED, "dns": pb.PHASE_DNS, "connect": pb.PHASE_CONNECT,
    "tls": pb.PHASE_TLS, "request": pb.PHASE_REQUEST, "response": pb.PHASE_RESPONSE,
    "validation": pb.PHASE_VALIDATION, "timeout": pb.PHASE_TIMEOUT,
}

_DETAIL_FIELDS: dict[type, str] = {
    pb.HttpDetails: "http", pb.DnsDetails: "dns", pb.IcmpDetails: "icmp",
    pb.TlsDetails: "tls", pb.GrpcDetails: "grpc", pb.FlowDetails: "flow",
}


def to_wire(spec: ProbeSpec, outcome: ProbeOutcome, *, confirmed: bool,
            timestamp_ms: int) -> pb.ProbeResult:
    """The wire result of one outcome (seq 0: `ResultFanout` numbers it)."""
    result = pb.ProbeResult(
        probe=spec.name, target=spec.target, kind=spec.kind, service=spec.service,
        success=outcome.success, confirmed=confirmed and not outcome.success,
        failed_phase=PHASES.get(outcome.failed_phase, pb.PHASE_UNSPECIFIED),
        timeout_phase=PHASES.get(outcome.timeout_phase, pb.PHASE_UNSPECIFIED),
        reason=outcome.reason, error=outcome.error,
        duration_seconds=outcome.duration_seconds,
        phases=[pb.PhaseDuration(name=name, seconds=seconds)
                for name, seconds in outcome.phases.items()],
        status_code=outcome.status_code, timestamp_ms=timestamp_ms,
        interval_ms=round(spec.interval * 1000), address=outcome.address,
        step=outcome.step)
    details = outcome.details
    if details is not None:
        field = _DETAIL_FIELDS.get(type(details))
        if field is not None:
            getattr(result, field).CopyFrom(details)
    return result


class ResultFanout:
    """Numbers results (1, 2, ... per epoch) and appends each to every spool.

    With `durable`, results go to the spools through it, once committed to the state file.
    """

    def __init__(self, spools: Sequence[Spool] = (),
                 observers: Sequence[Callable[[pb.ProbeResult], None]] = (), *,
                 durable: DurableSpools | None = None) -> None:
        """`observers` see every numbered result too (tests, self-metrics)."""
        self.spools = list(spools)
        self.observers = list(observers)
        self.durable = durable
        self.last_seq = 0

    def publish(self, result: pb.ProbeResult) -> None:
        """Number `result` and hand it to every spool (or the durable stage) and observer."""
        self.last_seq += 1
        result.seq = self.last_seq
        if self.durable is not None:
            self.durable.stage(result)
        else:
            for spool in self.spools:
                spool.add(result)
        for observer in self.observers:
            observer(result)
