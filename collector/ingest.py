"""The gRPC ingest: `probenet.v1.Ingest/Stream`, one bidirectional stream per agent.

Per stream: read Hello (within `limits.hello_timeout`), authenticate it against the
registry (bearer token, region, optional mTLS identity), answer Welcome with the highest
seq already applied for the agent's epoch, then for each ResultBatch: validate, drop
duplicates by (agent, epoch, seq), apply to the classifier, journal the transitions, publish
them, and only then Ack. Messages are parsed here, once, from raw bytes, so that malformed
input is counted and answered with a status instead of failing inside grpc (a batch is
parsed a second time, cheaply, as `probenet.v1.ingest_wire.WireAgentMessage`, for the wire
bytes of each accepted result, which go to the per-kind details store once the batch is
applied).

Acks follow durable application (group commit): an Ack, and the `acked_seq` of a Welcome,
reports a watermark only once the journal has committed it. A batch that caused transitions
commits its watermark with them; otherwise its Ack waits for the next group commit, which
writes the changed watermarks of every agent in one SQLite transaction at most every
`journal.commit_interval` (20 ms by default): run by the first batch that finds one due
(its own Ack then waits for nothing), or by collector/server.py's commit loop for acks that
no later batch comes to release. Meanwhile the stream goes on reading and applying the
agent's next batches (its acks are written in order by a task of their own, `_AckWriter`),
so a commit costs each stream latency, not throughput. After a crash, `kill -9` included,
the journal's watermark of every agent is therefore at least the last seq acknowledged to
it (collector/journal.py).

Rejections are counted by reason (`probenet_ingest_rejections_total{reason}`) and logged
once per (agent, reason). Reasons:

- stream level (the stream ends with a status): `no_hello`, `hello_timeout`, `bad_hello`,
  `unknown_agent`, `missing_token`, `bad_token`, `wrong_region`, `identity_mismatch`,
  `bad_epoch`, `stale_epoch`, `agent_already_connected`, `too_many_agents`, `malformed`,
  `message_too_large`, `empty_message`, `unexpected_hello`, `batch_too_large`, `draining`
  (messages over twice
  `max_message_bytes` are cut by grpc itself, uncounted);
- result level (the result is dropped, acknowledged, and the stream goes on): `bad_seq`,
  `seq_order`, `seq_jump`, `bad_probe`, `bad_kind`, `bad_duration`, `bad_phase`, `field_too_long`,
  `result_too_large`, `too_many_probes`, `bad_timestamp`, `too_old`, `bad_interval`,
  `too_many_steps`, `bad_flow`, `bad_trace`, `wrong_shard` (with `sharding`: a result or
  path trace of a probe another collector group's shard holds, `shard_of(probe, shards)`
  in probenet/sharding.py; an agent configured with other `shards` than this group);
- config status level (the ConfigStatus is ignored, and the stream goes on):
  `bad_config_status` (a version that is not a sha256 hex, strings over their limits, more
  refused probes than `limits.max_probes_per_agent`).

With a fleet file (collector/fleet.py), the collector pushes each agent that says
`remote_config` in its Hello its probe set (ProbeConfig) right after Welcome, and again when
the fleet file changes; those messages go out through the stream's ack writer, in order with
the acks. The agent answers with ConfigStatus messages, recorded for /api/v1/agents.

Every field of a result is checked against the contract where it is read. Here
(`_handle_batch`), before anything of the result is used, what the classifier and the
labels read: the duration finite and within [0, `MAX_DURATION_S`] (`bad_duration`); a
timestamp (agent clock, unix ms; 0 is "not stamped", and the classifier
then uses the collector's clock) no more than `limits.max_clock_skew` ahead of the
collector's clock and not negative (`bad_timestamp`), and no older than
`limits.max_result_age`, the retention window (`too_old`: counted and skipped, so a
replayed or back-stamped result never dates an outage's start or reports an old state as
the current one); `interval_ms` at most `limits.max_probe_interval` (`bad_interval`: the
classifier counts staleness, and trusts agent clocks, in intervals); the error text within
`limits.max_error_length` and the address within `limits.max_target_length`
(`field_too_long`). A `flow` result (only those: the others pay one string comparison) has its
failing `step` and the name of each step of its `FlowDetails` within
`limits.max_label_value_length` (`field_too_long`: they are label values), at most
`limits.max_flow_steps` steps run and configured (`too_many_steps`: each step that ran is a
series per agent), and details that hold together (`bad_flow`: a step name empty or
repeated, which would make two series one; `failed_step_index` beyond the steps that ran, or
set on a success; a failure whose `step` is not the name of the step at that index). A
`step` on a success or on a result of another kind is out of contract but harmless: it is
ignored (the classifier reads a step only from failed flow results) and counted as a
dropped value (`probenet_result_values_dropped_total{field="step"}`), the result applied.
Per-phase durations and the kind-specific numbers (content length,
certificate expiry, ICMP round trips) are read only by the per-kind families: the details
store checks them when it decodes a result for a scrape, dropping or zeroing what is out of
contract (collector/details.py), because checking them here cost 4 to 6 us per result
(five phases and the HTTP facts; the checks above add 0.6 us together). Label text
is escaped at exposition (collector/exposition.py), so nothing that passes can break the
/metrics page.

The `limits` section (collector/config.py, `LimitsConfig`) makes one agent harmless to the
others: `max_agents` streams at once and, without a registry, `max_unregistered_agents`
distinct agent ids (`too_many_agents`, RESOURCE_EXHAUSTED, so the agent backs off and
retries; an agent id with a stream open is never refused by these caps, only by the
one-live-stream rule below); `max_probes_per_agent`
distinct probes per agent (`too_many_probes`: the (agent, probe) pairs the classifier holds,
so the cap holds across reconnects); lengths of the target, failure reason, service and Hello
strings (`field_too_long`, `bad_hello`); and the bytes of one result kept for the per-kind
details (`result_too_large`). On the per-result path each length or size check is one field
read; the probe cap costs a set lookup per result only in a batch that could cross it, and
nothing otherwise.

Epochs and sequence numbers cannot be poisoned (limits `max_epoch_skew`,
`max_agent_results_per_second`, `stream_takeover_after`, `epoch_rollback_after`). An agent's
epoch is the unix time in nanoseconds of its start (agent/main.py; an agent with a state
directory keeps it across restarts), and its seq counts its results from 1 in that epoch:

- an epoch later than the collector's wall clock plus `max_epoch_skew` cannot come from a
  sane clock: the stream is refused (`bad_epoch`, INVALID_ARGUMENT) and nothing is stored,
  so one bad number (2^64-2) no longer locks the agent id out;
- a seq above what the agent could have numbered since its epoch, at
  `max_agent_results_per_second`, plus the skew allowance, is a `seq_jump`: the result is
  dropped and counted and the watermark does not move (a seq of 2^64-1 no longer turns
  every later result of the epoch into a silent duplicate). The bound is computed once per
  batch; an epoch far in the past (tests use 1) only makes it generous;
- an epoch older than the watermark's is refused (`stale_epoch`, FAILED_PRECONDITION: a
  stale process of the agent must not replay its results over the newer one's) until the
  agent id has had no live stream for `epoch_rollback_after` (since its last stream ended,
  or since the collector started): then it is taken as a restart after the agent's clock
  stepped back, and the watermark restarts at that epoch (logged at WARNING). An operator
  can also clear a watermark at once with `probenet reset-agent` (collector stopped);
- one live stream per agent id. A new stream with the live stream's epoch is the same agent
  process reconnecting (its old connection may be half-open and not yet noticed): it
  replaces the live one at once (ABORTED to the old). A new stream with another epoch
  replaces it only when the live stream has sent nothing for `stream_takeover_after`, or
  when the collector checks mTLS identities (the certificate binds the agent id); otherwise
  it is refused (`agent_already_connected`, ALREADY_EXISTS, and the agent retries with its
  backoff). Trade-off: with bearer tokens only, a token holder who does not know the live
  agent's epoch cannot displace it (the epoch is in the agent's and collector's logs: it is
  no credential, only a guard against blind takeover), but one who connects while the
  agent is away keeps
  it out for as long as it keeps streaming (plus `epoch_rollback_after` if its epoch was
  newer); a restarted agent without a persistent epoch whose old connection is half-open
  gets in within `stream_takeover_after` (or sooner, when keepalive ends the old stream).
  Binding an agent to its identity needs mTLS (`tls.client_ca_file`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Histogram

from probenet.kinds import PROBE_KINDS
from probenet.names import is_name, label_problem, name_problem
from probenet.sharding import ShardCache
from probenet.v1 import ingest_wire_pb2 as wire_pb
from probenet.v1 import probenet_pb2 as pb
from probenet.version import __version__

from .config import AgentEntry, CollectorConfig, LimitsConfig, ShardingConfig, read_secret
from .details import DroppedValues
from .errors import JournalError, StreamRejectedError
from .model import PHASE_NAMES
from .traces import TRACE_KIND, trace_problem

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from prometheus_client import CollectorRegistry

    from .classify import Classifier
    from .details import LatestDetails
    from .fleet import FleetPusher
    from .journal import TransitionCommitter
    from .metrics import FailureCounts, IngestMetrics
    from .traces import TraceStore

log = logging.getLogger(__name__)

SERVICE_NAME = "probenet.v1.Ingest"
KINDS = frozenset(PROBE_KINDS)
# Probe names already found valid, remembered so that the check of each result is a set
# lookup; bounded, so a peer sending endless new names only makes the check slower.
MAX_KNOWN_PROBES = 100_000
DEFAULT_INTERVAL_S = 30.0
# The longest total duration (seconds) a result may report: no probe runs a day (the
# details store bounds phase durations alike, `details.MAX_SECONDS`).
MAX_DURATION_S = 86_400.0
_PHASES = len(PHASE_NAMES)
# How long a cancelled stream lets a write in progress finish before it sends its status.
WRITE_SETTLE_S = 1.0
# Acks of one stream handled but not yet written: beyond this, the stream reads no further
# batch until its acks go out (an agent that never reads its acks cannot grow our memory).
MAX_PENDING_ACKS = 64
_S = grpc.StatusCode
_PARSE_ERRORS = (DecodeError, RuntimeError, ValueError)

# Every reason a stream, batch or result is rejected for (see the module docstring); each
# series exists from the start at 0, so alert rules and increase() see the first one.
REJECTION_REASONS = (
    "no_hello", "hello_timeout", "bad_hello", "unknown_agent", "missing_token", "bad_token",
    "wrong_region", "identity_mismatch", "stale_epoch", "too_many_agents", "malformed",
    "message_too_large", "empty_message", "unexpected_hello", "batch_too_large", "draining",
    "bad_epoch", "agent_already_connected",
    "bad_seq", "seq_order", "seq_jump", "bad_probe", "bad_kind", "bad_duration", "bad_phase",
    "field_too_long", "result_too_large", "too_many_probes",
    "bad_timestamp", "too_old", "bad_interval", "too_many_steps", "bad_flow", "bad_trace",
    "wrong_shard", "bad_config_status",
)
_FLOW = "flow"
_TRACE = TRACE_KIND


@dataclass(frozen=True, slots=True)
class RegisteredAgent:
    """One agent the registry knows: its region, token and extra labels."""

    id: str
    region: str
    token: bytes | None
    labels: Mapping[str, str] = field(default_factory=dict)


class AgentRegistry:
    """Agent identity -> region and credentials, from the config's `agents` list."""

    def __init__(self, agents: Mapping[str, RegisteredAgent]) -> None:
        """Usually built with `from_entries`."""
        self.agents = dict(agents)

    @classmethod
    def from_entries(cls, entries: list[AgentEntry]) -> AgentRegistry:
        """Read every token file once."""
        agents = {}
        for entry in entries:
            token = read_secret(entry.token_file).encode() if entry.token_file else None
            agents[entry.id] = RegisteredAgent(entry.id, entry.region, token, entry.labels)
        return cls(agents)

    def get(self, agent_id: str) -> RegisteredAgent | None:
        """The entry of `agent_id`, if registered."""
        return self.agents.get(agent_id)


class Watermark:
    """An agent's applied position: every result of `epoch` with seq <= `seq` is applied."""

    __slots__ = ("epoch", "seq")

    def __init__(self, epoch: int, seq: int) -> None:
        """Start at (epoch, seq)."""
        self.epoch = epoch
        self.seq = seq


class _Session:
    """One accepted agent stream."""

    __slots__ = ("agent", "end_code", "end_message", "epoch", "labels", "last_active",
                 "region", "seq_origin_ns", "task", "watermark")

    def __init__(self, agent: str, region: str, watermark: Watermark,
                 task: asyncio.Task[Any] | None, *, epoch: int = 0, now: float = 0.0,
                 seq_origin_ns: int = 0) -> None:
        self.agent = agent
        self.region = region
        self.watermark = watermark
        self.task = task
        self.end_code: grpc.StatusCode | None = None
        self.end_message = ""
        self.epoch = epoch  # the Hello's
        self.last_active = now  # monotonic time of the Hello or the latest batch
        # The seq bound: (wall ns - seq_origin_ns) * rate (see `IngestServicer._seq_ceiling`).
        self.seq_origin_ns = seq_origin_ns
        self.labels: Mapping[str, str] = {}  # the Hello's, with the registry's

    def end(self, code: grpc.StatusCode, message: str) -> None:
        """End the stream from outside its handler: it answers with `code`."""
        if self.end_code is None:
            self.end_code = code
            self.end_message = message
            if self.task is not None:
                self.task.cancel()


class AckMetrics:
    """How long acks wait for the group commit of the watermark they report."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register on `registry`."""
        self.delay_seconds = Histogram(
            "probenet_ingest_ack_delay_seconds",
            "Time from a batch applied to its Ack written, waiting for the journal to commit "
            "the watermark the Ack reports (journal.commit_interval).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=registry)


class _AckWriter:
    """One stream's acks, written in order by a task of their own, each once it is durable.

    The stream's handler queues an ack with the group commit it needs (0: none) and goes on
    reading the agent's next batch: an agent pipelines its batches, and waiting for each
    commit before reading the next one would cap a stream at one batch per commit.
    """

    __slots__ = ("_observe", "_pushed", "_queue", "_task", "_wait", "_write")

    def __init__(self, agent: str, *, write: Callable[[bytes], Awaitable[None]],
                 wait: Callable[[int], Awaitable[None]],
                 observe: Callable[[float], None] | None) -> None:
        """Start the writing task (`write` an ack once `wait` for its commit returns)."""
        self._write = write
        self._wait = wait
        self._observe = observe
        self._queue: asyncio.Queue[tuple[bytes, int, float] | None] = asyncio.Queue(
            MAX_PENDING_ACKS)
        # The latest message pushed by the collector (a ProbeConfig) not yet written: only
        # the newest counts, so a newer push replaces one still waiting.
        self._pushed: bytes | None = None
        self._task = asyncio.create_task(self._run(), name=f"ingest-acks:{agent}")
        self._task.add_done_callback(_retrieve)

    async def put(self, ack: bytes, commit: int) -> bool:
        """Queue `ack`, to be written once group commit `commit` is done (0: at once).

        False when the writer has ended (a write failed: the peer is gone).
        """
        if self._task.done():
            return False
        await self._queue.put((ack, commit, time.perf_counter()))
        return True

    async def finish(self) -> None:
        """Write every queued ack (each after its commit), then stop."""
        if not self._task.done():
            await self._queue.put(None)
            await asyncio.wait([self._task])

    def push(self, message: bytes) -> None:
        """Write `message` after the acks queued now (never blocks; the newest one wins)."""
        if self._task.done():
            return
        self._pushed = message
        with contextlib.suppress(asyncio.QueueFull):
            # A full queue needs no wake-up: the writer checks after each ack.
            self._queue.put_nowait(_WAKE)

    def cancel(self) -> None:
        """Stop at once; acks not written are dropped (the agent resends those results)."""
        self._task.cancel()

    async def stop(self) -> None:
        """Cancel and wait until the task has ended (nothing is being written after)."""
        self._task.cancel()
        await asyncio.wait([self._task])

    async def _run(self) -> None:
        observe = self._observe
        while (item := await self._queue.get()) is not None:
            if item is not _WAKE:
                ack, commit, queued_at = item
                if commit:
                    await self._wait(commit)
                if observe is not None:
                    observe(time.perf_counter() - queued_at)
                await self._write(ack)
            if self._pushed is not None:
                message, self._pushed = self._pushed, None
                await self._write(message)


# Queued to wake an ack writer for a pushed message.
_WAKE: tuple[bytes, int, float] = (b"", 0, 0.0)


def _retrieve(task: asyncio.Future[None]) -> None:
    """Done callback: read a write's exception, so asyncio never reports it unread.

    A write (or the ack writer) fails only when the stream is gone already (the peer
    cancelled, the stream was aborted); the stream's handler ends it either way.
    """
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("stream write ended", extra={"error": repr(exc)})


async def _write_settled(context: grpc.aio.ServicerContext, data: bytes) -> None:
    """`context.write`, left to finish (for up to WRITE_SETTLE_S) when the stream is cancelled.

    grpc sends a stream's initial metadata with its first message. A first write cut short
    by a cancellation (the drain at shutdown, a replacing stream) leaves that send in flight
    in grpc core, and the abort that follows sends initial metadata again: grpc core refuses
    the batch, and grpc logs an ERROR with a CancelledError traceback for what is a normal
    end of a stream (issue 11). So the write finishes before the cancellation goes on.
    """
    write = asyncio.ensure_future(context.write(data))
    write.add_done_callback(_retrieve)
    try:
        await asyncio.shield(write)
    except asyncio.CancelledError:
        await asyncio.wait([write], timeout=WRITE_SETTLE_S)
        raise


def _bearer(metadata: Any) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip().encode()
            return b""
    return None


# The log detail of the result contract's reasons (`str.format` with `limits`).
# The log detail of each result-level rejection: the limit it broke, by its config key
# (formatted with `limits` and `probes`, the agent's count of distinct probes now).
_RESULT_REJECTION_DETAILS = {
    "too_many_probes": ("results for new probes: the agent reports {probes} distinct probes; "
                        "the limit is {limits.max_probes_per_agent} "
                        "(limits.max_probes_per_agent); its known probes are still applied"),
    "field_too_long": ("a field over its limit: target {limits.max_target_length}, service "
                       "{limits.max_label_value_length}, failure reason "
                       "{limits.max_reason_length} characters (limits.max_target_length, "
                       "max_label_value_length, max_reason_length); error "
                       "{limits.max_error_length}, address {limits.max_target_length} "
                       "characters (limits.max_error_length, max_target_length); a flow's "
                       "step names {limits.max_label_value_length} characters "
                       "(limits.max_label_value_length)"),
    "seq_jump": ("a seq beyond what the agent could have numbered since its epoch at "
                 "{limits.max_agent_results_per_second} results/s "
                 "(limits.max_agent_results_per_second)"),
    "result_too_large": ("a result over {limits.max_result_bytes} bytes "
                         "(limits.max_result_bytes)"),
    "bad_duration": f"a duration NaN, negative or over {MAX_DURATION_S:g}s",
    "bad_timestamp": ("a timestamp negative or over {limits.max_clock_skew:g}s ahead of the "
                      "collector's clock (limits.max_clock_skew)"),
    "too_old": ("a result stamped over {limits.max_result_age:g}s ago, skipped "
                "(limits.max_result_age)"),
    "bad_interval": ("an interval_ms over {limits.max_probe_interval:g}s "
                     "(limits.max_probe_interval)"),
    "wrong_shard": ("results of probes outside this collector group's shard "
                    "{shard} of {shards} (sharding): is the agent configured with other "
                    "shards, or sending to the wrong group?"),
    "too_many_steps": ("a flow result with more than {limits.max_flow_steps} steps run or "
                       "configured (limits.max_flow_steps)"),
    "bad_flow": ("flow details that do not hold together: a step name empty or repeated, "
                 "failed_step_index beyond the steps that ran or set on a success, or a "
                 "failure's `step` not the name of the step at failed_step_index"),
}


_VERSION_CHARS = frozenset("0123456789abcdef")


def _bad_version(value: str) -> bool:
    return bool(value) and (len(value) != 64 or not set(value) <= _VERSION_CHARS)


def config_status_problem(status: pb.ConfigStatus, limits: LimitsConfig) -> str | None:
    """Why a ConfigStatus is out of contract (a log detail), or None."""
    if _bad_version(status.version) or _bad_version(status.received_version):
        return "a config version that is not a sha256 hex digest"
    if len(status.collector_id) > limits.max_label_value_length:
        return (f"collector_id over {limits.max_label_value_length} characters "
                "(limits.max_label_value_length)")
    if len(status.error) > limits.max_error_length:
        return f"error over {limits.max_error_length} characters (limits.max_error_length)"
    if len(status.refused) > limits.max_probes_per_agent:
        return (f"{len(status.refused)} refused probes; at most "
                f"{limits.max_probes_per_agent} (limits.max_probes_per_agent)")
    return next((problem for refused in status.refused
                 if (problem := _refused_problem(refused, limits)) is not None), None)


def _refused_problem(refused: pb.RefusedProbe, limits: LimitsConfig) -> str | None:
    if not is_name(refused.probe) or len(refused.probe) > limits.max_label_value_length:
        return f"refused probe {refused.probe[:64]!r} is not a valid probe name"
    if len(refused.reason) > limits.max_error_length:
        return (f"refused probe {refused.probe!r}: reason over "
                f"{limits.max_error_length} characters (limits.max_error_length)")
    return None


def flow_problem(result: pb.ProbeResult, *, max_steps: int, max_name: int) -> str | None:
    """The rejection reason of a `flow` result out of contract, or None (module docstring).

    Read for flow results only: a few field reads, and one pass over the steps that ran.
    """
    step = result.step
    if len(step) > max_name:
        return "field_too_long"
    if result.WhichOneof("details") != _FLOW:
        return None  # no details (an agent may send none): only `step` to check
    flow = result.flow
    steps = flow.steps
    if len(steps) > max_steps or flow.step_count > max_steps:
        return "too_many_steps"
    problem = _step_names_problem(steps, max_name)
    index = flow.failed_step_index
    if problem is None and (index > len(steps) or (
            index and (result.success or steps[index - 1].name != step))):
        problem = "bad_flow"
    return problem


def _step_names_problem(steps: Any, max_name: int) -> str | None:
    """`field_too_long` or `bad_flow` (empty or repeated) for the names of a flow's steps."""
    names: set[str] = set()
    for each in steps:
        name = each.name
        if len(name) > max_name:
            return "field_too_long"
        if not name or name in names:
            return "bad_flow"
        names.add(name)
    return None


class ShardFilter:
    """Which probes this collector group holds (`sharding`): `shard_of(probe) == shard`."""

    def __init__(self, shard: int, shards: int) -> None:
        """The filter of the group `shard` of `shards`."""
        self.shard = shard
        self.shards = shards
        self._shards = ShardCache(shards, max_names=MAX_KNOWN_PROBES)

    @classmethod
    def from_config(cls, sharding: ShardingConfig | None) -> ShardFilter | None:
        """The filter of a `sharding` section (None: every probe is this collector's)."""
        return None if sharding is None else cls(sharding.shard, sharding.shards)

    def holds(self, probe: str) -> bool:
        """True when `probe`'s results belong to this group."""
        return self._shards.of(probe) == self.shard


def _known_name(value: str, known: set[str]) -> bool:
    """Whether `value` is a valid name (probenet.names), remembering it in `known` if so."""
    if not is_name(value):
        return False
    if len(known) < MAX_KNOWN_PROBES:
        known.add(value)
    return True


class IngestServicer:
    """The `probenet.v1.Ingest` service: streams in, classifier and journal updated, acks out."""

    def __init__(self, *, classifier: Classifier, committer: TransitionCommitter,
                 metrics: IngestMetrics, failures: FailureCounts, limits: LimitsConfig,
                 registry: AgentRegistry | None, collector_id: str,
                 watermarks: Mapping[str, tuple[int, int]] | None = None,
                 identity_check: bool = False,
                 details: LatestDetails | None = None,
                 dropped: DroppedValues[str] | None = None,
                 request_commit: Callable[[], None],
                 commit_interval: float = 0.02,
                 ack_metrics: AckMetrics | None = None,
                 clock: Callable[[], float],
                 wall_clock_ns: Callable[[], int] = time.time_ns,
                 monotonic: Callable[[], float] = time.monotonic,
                 fleet: FleetPusher | None = None,
                 traces: TraceStore | None = None,
                 shard_filter: ShardFilter | None = None) -> None:
        """`watermarks` are the journal's, so deduplication continues after a restart.

        `details` receives the wire bytes of each accepted result (None: nothing is kept).
        `dropped` counts values ignored at ingest (a stray `step`); by default the details
        store's counts, or counts of its own without a store.
        `request_commit` asks the owner for a group commit (`commit_watermarks`) within
        `commit_interval` of the last one: an ack waits for it (a batch that finds one due
        commits it at once). `wall_clock_ns` is what epochs are checked against (the agents'
        clocks, not the classifier's `clock`, which tests move by hand); `monotonic` times
        stream silence. `fleet` (with a fleet file) pushes probe sets after Welcome and
        records each ConfigStatus. `shard_filter` (with `sharding`) rejects results of
        probes outside this group's shard (`wrong_shard`).
        """
        self._classifier = classifier
        self._committer = committer
        self._metrics = metrics
        for reason in REJECTION_REASONS:
            metrics.rejections.labels(reason)
        self._failures = failures
        self._limits = limits
        self._max_batch = limits.max_batch_results
        self._details = details
        if dropped is None:
            dropped = details.dropped if details is not None else DroppedValues()
        self._dropped = dropped
        self._registry = registry
        self._collector_id = collector_id
        self._identity_check = identity_check
        self._clock = clock
        self._watermarks = {agent: Watermark(epoch, seq)
                            for agent, (epoch, seq) in (watermarks or {}).items()}
        # Agents whose watermark changed since the journal last wrote it.
        self._dirty: set[str] = set()
        # The group commit: `_generation` numbers the next one, `_durable` the last one done;
        # `_committed` is set (and replaced) when one is done.
        self._generation = 1
        self._durable = 0
        self._committed = asyncio.Event()
        self._request_commit = request_commit
        self._commit_interval = commit_interval
        self._last_commit = -math.inf  # monotonic time of the last group commit (attempt)
        self._observe_ack = ack_metrics.delay_seconds.observe if ack_metrics else None
        self._sessions: dict[str, _Session] = {}
        self._logged: set[tuple[str, str]] = set()
        self._known_probes: set[str] = set()
        # Agent ids accepted since start: the classifier keeps each one (with its pairs)
        # until a restart, so without a registry `max_unregistered_agents` counts these.
        self._agent_ids: set[str] = set()
        self._draining = False
        self._wall_ns = wall_clock_ns
        self._monotonic = monotonic
        self._started = monotonic()
        # Agent id -> monotonic time its last stream ended (for `epoch_rollback_after`).
        self._idle_since: dict[str, float] = {}
        self._fleet = fleet  # with a fleet file: pushes probe sets, records ConfigStatus
        self._traces = traces  # path traces (kind "trace") go there, never to the classifier
        self._shard_filter = shard_filter

    @classmethod
    def build(cls, config: CollectorConfig, **kwargs: Any) -> IngestServicer:
        """Build from a config: registry, limits, collector id, mTLS identity check."""
        registry = (AgentRegistry.from_entries(config.agents)
                    if config.agents is not None else None)
        return cls(limits=config.limits, registry=registry, collector_id=config.collector_id,
                   identity_check=bool(config.tls and config.tls.client_ca_file),
                   commit_interval=config.journal.commit_interval,
                   shard_filter=ShardFilter.from_config(config.sharding), **kwargs)

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a grpc.aio server (raw bytes in and out)."""
        method = grpc.stream_stream_rpc_method_handler(self.stream)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {"Stream": method})

    # -- state the service reads ---------------------------------------------------------

    def commit_watermarks(self) -> int:
        """The group commit: journal every changed watermark in one transaction.

        Every ack queued before it, waiting for its watermark, goes out after it. Returns
        how many watermarks were written. A JournalError propagates: the watermarks stay
        to be written, and the acks keep waiting for the next commit that succeeds.
        """
        generation = self._generation
        self._generation += 1
        self._last_commit = self._monotonic()
        dirty = {agent: (wm.epoch, wm.seq) for agent in self._dirty
                 if (wm := self._watermarks.get(agent)) is not None}
        self._dirty.clear()
        if dirty:
            try:
                self._committer.commit_watermarks(dirty)
            except BaseException:
                self._dirty.update(dirty)
                raise
        self._durable = generation
        done, self._committed = self._committed, asyncio.Event()
        done.set()
        return len(dirty)

    def commit_due_in(self) -> float:
        """Seconds until the next group commit may run (<= 0: now)."""
        return self._last_commit + self._commit_interval - self._monotonic()

    def _commit_needed(self, agent: str) -> int:
        """The group commit an ack of `agent` sent now must wait for (0: none).

        The agent's watermark is durable unless it changed since the journal wrote it. When
        a commit is due (`commit_interval` since the last one), it runs here, at once: the
        ack need not wait, and nor does the turn of the event loop the owner's commit loop
        would take. Else the owner is asked for the next one.
        """
        if agent not in self._dirty:
            return 0
        if self.commit_due_in() <= 0:
            try:
                self.commit_watermarks()
            except JournalError:
                pass  # the owner's commit loop retries, and logs the failure
            else:
                return 0
        self._request_commit()
        return self._generation

    async def _until_committed(self, generation: int) -> None:
        """Wait until group commit `generation` is done (at once for 0)."""
        while self._durable < generation:
            await self._committed.wait()

    def drain(self) -> None:
        """Refuse new streams and end every open one with UNAVAILABLE (agents reconnect)."""
        self._draining = True
        for session in list(self._sessions.values()):
            session.end(_S.UNAVAILABLE, "the collector is shutting down; reconnect")

    # -- the stream ----------------------------------------------------------------------

    async def stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        """One agent stream (the grpc handler; request and response are raw bytes)."""
        del request_iterator  # read through context.read(), which cannot be mixed with it
        session: _Session | None = None
        acks: _AckWriter | None = None
        agent = "?"
        try:
            hello = await self._read_hello(context)
            agent = hello.agent_id or "?"
            session = self._open(hello, context)
            # Welcome's acked_seq acknowledges too: it waits for the commit of a watermark
            # the journal does not hold yet (the agent's previous stream just moved it).
            if session.watermark.seq:
                await self._until_committed(self._commit_needed(agent))
            await _write_settled(context, self._welcome(session))
            acks = _AckWriter(agent, write=context.write, wait=self._until_committed,
                              observe=self._observe_ack)
            if self._fleet is not None:
                self._fleet.attach(agent, session.region, session.labels, hello, acks.push)
            while True:
                data = await context.read()
                if data is grpc.aio.EOF:
                    break
                ack = self._handle_batch(session, data)
                if ack is None:
                    continue
                if not await acks.put(ack, self._commit_needed(agent)):
                    break
            await acks.finish()
        except StreamRejectedError as exc:
            self._count_rejection(agent, exc.reason, exc.message)
            if acks is not None:
                await acks.stop()
            await context.abort(exc.code, exc.message)
        except asyncio.CancelledError:
            if session is None or session.end_code is None:
                raise  # the peer went away, or the server is stopping
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if acks is not None:
                await acks.stop()
            await context.abort(session.end_code, session.end_message)
        except Exception:
            log.exception("agent stream failed", extra={"agent": agent})
            if acks is not None:
                await acks.stop()
            await context.abort(_S.INTERNAL, "the collector failed to apply a batch")
        finally:
            if acks is not None:
                acks.cancel()
            if session is not None:
                self._close(session)

    async def _read_hello(self, context: grpc.aio.ServicerContext) -> pb.Hello:
        if self._draining:
            raise StreamRejectedError(_S.UNAVAILABLE, "draining",
                                      "the collector is shutting down; try another")
        try:
            async with asyncio.timeout(self._limits.hello_timeout):
                data = await context.read()
        except TimeoutError as exc:
            raise StreamRejectedError(
                _S.DEADLINE_EXCEEDED, "hello_timeout",
                f"no Hello within {self._limits.hello_timeout:g}s") from exc
        if data is grpc.aio.EOF:
            raise StreamRejectedError(_S.INVALID_ARGUMENT, "no_hello",
                                      "the stream ended before Hello")
        message = self._parse(data)
        if message.WhichOneof("body") != "hello":
            raise StreamRejectedError(_S.INVALID_ARGUMENT, "no_hello",
                                      "the first message must be Hello")
        return message.hello

    def _parse(self, data: bytes) -> pb.AgentMessage:
        if len(data) > self._limits.max_message_bytes:
            raise StreamRejectedError(
                _S.RESOURCE_EXHAUSTED, "message_too_large",
                f"a {len(data)}-byte message; the limit is {self._limits.max_message_bytes}")
        try:
            return pb.AgentMessage.FromString(data)
        except _PARSE_ERRORS as exc:
            raise StreamRejectedError(_S.INVALID_ARGUMENT, "malformed",
                                      "not a probenet.v1.AgentMessage") from exc

    def _open(self, hello: pb.Hello, context: grpc.aio.ServicerContext) -> _Session:
        if self._draining:
            # The Hello arrived after the drain began: `drain` ended the streams open then.
            raise StreamRejectedError(_S.UNAVAILABLE, "draining",
                                      "the collector is shutting down; try another")
        agent, region = hello.agent_id, hello.region
        for field_name, value in (("agent_id", agent), ("region", region)):
            issue = name_problem(value)
            if issue is not None:
                raise StreamRejectedError(_S.INVALID_ARGUMENT, "bad_hello",
                                          f"{field_name}: {issue}")
        issue = label_problem(hello.labels)
        if issue is not None:
            raise StreamRejectedError(_S.INVALID_ARGUMENT, "bad_hello", f"labels: {issue}")
        labels = dict(hello.labels)
        self._check_hello_lengths(hello, labels)
        if self._registry is not None:
            labels.update(self._authenticate(hello, context))
        now_ns = self._wall_ns()
        skew_ns = int(self._limits.max_epoch_skew * 1e9)
        if hello.epoch > now_ns + skew_ns:
            raise StreamRejectedError(
                _S.INVALID_ARGUMENT, "bad_epoch",
                f"epoch {hello.epoch} is later than the collector's clock "
                f"({now_ns} unix ns) plus {self._limits.max_epoch_skew:g}s "
                "(limits.max_epoch_skew): check the agent's clock")
        watermark = self._watermarks.get(agent)
        old = self._sessions.get(agent)
        if watermark is not None and hello.epoch < watermark.epoch:
            self._check_rollback(agent, hello.epoch, watermark, live=old is not None)
            watermark = None
        if old is not None:
            self._check_takeover(old, hello.epoch)
        self._check_agent_room(agent)
        self._agent_ids.add(agent)
        if watermark is None or hello.epoch > watermark.epoch:
            watermark = Watermark(hello.epoch, 0)
            self._watermarks[agent] = watermark
            self._dirty.add(agent)
        if old is not None:
            old.end(_S.ABORTED, "replaced by a newer stream of the same agent")
            log.warning("agent stream replaced", extra={
                "agent": agent, "region": region, "epoch": hello.epoch,
                "old_epoch": old.epoch})
        session = _Session(agent, region, watermark, asyncio.current_task(),
                           epoch=hello.epoch, now=self._monotonic(),
                           seq_origin_ns=hello.epoch - skew_ns)
        session.labels = labels
        self._sessions[agent] = session
        interval_s = hello.interval_ms / 1000 if hello.interval_ms else DEFAULT_INTERVAL_S
        # A sharded agent whose probes all go to other shards says so with probe_count 0.
        self._classifier.agent_connected(agent, region, labels, interval_s, self._clock(),
                                         expects_results=hello.probe_count > 0)
        self._committer.commit()
        self._metrics.streams.set(len(self._sessions))
        self._metrics.streams_opened.inc()
        log.info("agent connected", extra={
            "agent": agent, "region": region, "epoch": hello.epoch,
            "acked_seq": watermark.seq, "version": hello.version, "peer": context.peer()})
        return session

    def _check_rollback(self, agent: str, epoch: int, watermark: Watermark, *,
                        live: bool) -> None:
        """Allow an epoch older than the watermark's only after `epoch_rollback_after` idle.

        Refused (`stale_epoch`) while the agent has a live stream or had one recently: the
        older epoch is then a stale process of the agent, whose resends must not be applied
        again over the newer epoch's.
        """
        idle_s = self._monotonic() - self._idle_since.get(agent, self._started)
        wait_s = self._limits.epoch_rollback_after
        if live or idle_s < wait_s:
            raise StreamRejectedError(
                _S.FAILED_PRECONDITION, "stale_epoch",
                f"epoch {epoch} is older than {watermark.epoch}, already seen from {agent}; "
                f"accepted once the agent has had no stream for {wait_s:g}s "
                "(limits.epoch_rollback_after), or after `probenet reset-agent`")
        log.warning("agent epoch rolled back", extra={
            "agent": agent, "epoch": epoch, "old_epoch": watermark.epoch,
            "old_acked_seq": watermark.seq, "idle_s": round(idle_s, 3)})

    def _check_takeover(self, live: _Session, epoch: int) -> None:
        """Whether a new stream of `live`'s agent with `epoch` may replace it (else refused).

        The same epoch is the same agent process reconnecting; another epoch needs the live
        stream silent for `stream_takeover_after`, or an mTLS-checked identity.
        """
        if epoch == live.epoch or self._identity_check:
            return
        silent_s = self._monotonic() - live.last_active
        wait_s = self._limits.stream_takeover_after
        if silent_s < wait_s:
            raise StreamRejectedError(
                _S.ALREADY_EXISTS, "agent_already_connected",
                f"agent {live.agent!r} has a live stream (another epoch) that was active "
                f"{silent_s:.0f}s ago; a new one may replace it after {wait_s:g}s of "
                "silence (limits.stream_takeover_after)")

    def _check_hello_lengths(self, hello: pb.Hello, labels: Mapping[str, str]) -> None:
        """Hello's strings within `max_label_value_length` (they become label values).

        Its `interval_ms` (the agent's shortest probe interval, which sets when it goes
        stale) is bounded by `max_probe_interval`, as each result's is.
        """
        max_interval = self._limits.max_probe_interval
        if hello.interval_ms > max_interval * 1000:
            raise StreamRejectedError(
                _S.INVALID_ARGUMENT, "bad_hello",
                f"interval_ms: {hello.interval_ms} is over {max_interval:g}s "
                "(limits.max_probe_interval)")
        cap = self._limits.max_label_value_length
        values = [("agent_id", hello.agent_id), ("region", hello.region),
                  ("version", hello.version)]
        values.extend((f"labels[{key!r}]", value) for key, value in labels.items())
        for field_name, value in values:
            if len(value) > cap:
                raise StreamRejectedError(
                    _S.INVALID_ARGUMENT, "bad_hello",
                    f"{field_name}: {len(value)} characters long; at most {cap} are allowed "
                    "(limits.max_label_value_length)")

    def _check_agent_room(self, agent: str) -> None:
        """Refuse a new agent beyond `max_agents` streams or `max_unregistered_agents` ids.

        An agent with a stream open replaces it (the count stays), so it is never refused;
        RESOURCE_EXHAUSTED tells a refused agent to back off and retry.
        """
        limits = self._limits
        if agent not in self._sessions and len(self._sessions) >= limits.max_agents:
            raise StreamRejectedError(
                _S.RESOURCE_EXHAUSTED, "too_many_agents",
                f"{len(self._sessions)} agent streams are open; the limit is "
                f"{limits.max_agents} (limits.max_agents); retry later")
        if (self._registry is None and agent not in self._agent_ids
                and len(self._agent_ids) >= limits.max_unregistered_agents):
            raise StreamRejectedError(
                _S.RESOURCE_EXHAUSTED, "too_many_agents",
                f"{len(self._agent_ids)} agent ids seen without a registry; the limit is "
                f"{limits.max_unregistered_agents} (limits.max_unregistered_agents); "
                "known ids may reconnect")

    def _authenticate(self, hello: pb.Hello, context: grpc.aio.ServicerContext
                      ) -> Mapping[str, str]:
        assert self._registry is not None
        entry = self._registry.get(hello.agent_id)
        if entry is None:
            raise StreamRejectedError(_S.UNAUTHENTICATED, "unknown_agent",
                                      f"agent {hello.agent_id!r} is not registered")
        if entry.token is not None:
            token = _bearer(context.invocation_metadata())
            if not token:
                raise StreamRejectedError(_S.UNAUTHENTICATED, "missing_token",
                                          "this agent needs a bearer token")
            if not hmac.compare_digest(token, entry.token):
                raise StreamRejectedError(_S.UNAUTHENTICATED, "bad_token", "wrong token")
        if hello.region != entry.region:
            raise StreamRejectedError(
                _S.PERMISSION_DENIED, "wrong_region",
                f"agent {hello.agent_id!r} is registered in region {entry.region!r}, "
                f"not {hello.region!r}")
        if self._identity_check:
            auth = context.auth_context()
            names = {bytes(v).decode(errors="replace")
                     for key in ("x509_common_name", "x509_subject_alternative_name")
                     for v in auth.get(key, ())}
            if hello.agent_id not in names:
                raise StreamRejectedError(
                    _S.PERMISSION_DENIED, "identity_mismatch",
                    f"the client certificate does not name agent {hello.agent_id!r}")
        return entry.labels

    def _welcome(self, session: _Session) -> bytes:
        return pb.CollectorMessage(welcome=pb.Welcome(
            collector_id=self._collector_id, version=__version__,
            acked_seq=session.watermark.seq,
            max_batch_results=self._limits.max_batch_results,
            max_message_bytes=self._limits.max_message_bytes)).SerializeToString()

    def _close(self, session: _Session) -> None:
        agent = session.agent
        if self._sessions.get(agent) is not session:
            return  # replaced: the newer stream owns the agent now
        del self._sessions[agent]
        if self._fleet is not None:
            self._fleet.detach(agent)
        self._idle_since[agent] = self._monotonic()
        self._metrics.streams.set(len(self._sessions))
        try:
            self._classifier.agent_disconnected(agent, self._clock())
            self._committer.commit()
        except Exception:
            log.exception("recording a disconnect failed", extra={"agent": agent})
        log.info("agent disconnected", extra={
            "agent": agent, "region": session.region, "acked_seq": session.watermark.seq,
            "reason": session.end_message or "stream ended"})

    # -- the hot path --------------------------------------------------------------------

    def _handle_batch(self, session: _Session, data: bytes) -> bytes | None:
        """Parse, validate, deduplicate, apply, commit; return the serialized Ack.

        The Ack goes out once its watermark is durable (`_commit_needed`). A ConfigStatus
        is recorded (or counted as `bad_config_status`) and answered with nothing (None).
        """
        details = self._details
        message = self._parse(data)
        body = message.WhichOneof("body")
        if body == "config_status":
            self._config_status(session, message.config_status)
            return None
        if body != "batch":
            if body == "hello":
                raise StreamRejectedError(_S.INVALID_ARGUMENT, "unexpected_hello",
                                          "Hello may only be the first message")
            raise StreamRejectedError(_S.INVALID_ARGUMENT, "empty_message",
                                      "a message without a body")
        metrics = self._metrics
        metrics.batches.inc()
        results = message.batch.results
        if len(results) > self._max_batch:
            raise StreamRejectedError(
                _S.RESOURCE_EXHAUSTED, "batch_too_large",
                f"{len(results)} results in one batch; the limit is {self._max_batch}")
        wires: Any = ()
        if details is not None:
            # The same bytes parsed again as WireAgentMessage (it accepts whatever
            # AgentMessage accepts) give each result's own wire bytes, in the same order.
            try:
                wires = wire_pb.WireAgentMessage.FromString(data).batch.results
            except _PARSE_ERRORS as exc:
                raise StreamRejectedError(_S.INVALID_ARGUMENT, "malformed",
                                          "not a probenet.v1.AgentMessage") from exc
        watermark = session.watermark
        applied_upto = watermark.seq
        session.last_active = self._monotonic()
        seq_ceiling = self._seq_ceiling(session)
        region = session.region
        failures = self._failures
        kinds = KINDS
        known_probes = self._known_probes
        limits = self._limits
        max_target = limits.max_target_length
        max_reason = limits.max_reason_length
        max_service = limits.max_label_value_length
        max_result = limits.max_result_bytes
        max_error = limits.max_error_length
        max_steps = limits.max_flow_steps
        max_interval_ms = limits.max_probe_interval * 1000
        # The window of result timestamps (agent clock, unix ms), by the collector's clock.
        now_ms = self._clock() * 1000
        newest_ms = now_ms + limits.max_clock_skew * 1000
        oldest_ms = now_ms - limits.max_result_age * 1000
        # The probe cap: the agent's probes are the pairs the classifier holds (across
        # reconnects). Checked per result only in a batch that could cross it.
        held = self._classifier.agent_probes(session.agent)
        in_shard = self._shard_filter.holds if self._shard_filter is not None else None
        room = limits.max_probes_per_agent - len(held)
        capped = len(results) > room
        added: set[str] = set()  # new probes accepted in this batch, while capped
        accepted: list[pb.ProbeResult] = []
        kept: dict[str, bytes] = {}  # probe -> wire bytes of its latest accepted result
        duplicates = 0
        stray_steps = 0  # a `step` on a success or a non-flow result: ignored, counted
        rejected: dict[str, int] | None = None
        traces: list[pb.ProbeResult] = []
        bad_trace = ""
        highest = 0
        for index, result in enumerate(results):
            seq = result.seq
            reason = None
            if seq <= highest:
                reason = "seq_order" if seq else "bad_seq"
            elif seq > seq_ceiling:
                reason = "seq_jump"
            else:
                highest = seq
                if seq <= applied_upto:
                    duplicates += 1
                    continue
                probe = result.probe
                if probe not in known_probes and not _known_name(probe, known_probes):
                    reason = "bad_probe"
                elif in_shard is not None and not in_shard(probe):
                    reason = "wrong_shard"
                elif (kind := result.kind) not in kinds and kind != _TRACE:
                    reason = "bad_kind"
                elif not 0.0 <= result.duration_seconds <= MAX_DURATION_S:
                    reason = "bad_duration"
                elif (stamp := result.timestamp_ms) and not oldest_ms <= stamp <= newest_ms:
                    reason = "too_old" if 0 < stamp < oldest_ms else "bad_timestamp"
                elif result.interval_ms > max_interval_ms:
                    reason = "bad_interval"
                elif (len(result.target) > max_target or len(result.service) > max_service
                      or len(result.error) > max_error or len(result.address) > max_target):
                    reason = "field_too_long"
                elif kind == _FLOW and (flow_reason := flow_problem(
                        result, max_steps=max_steps, max_name=max_service)) is not None:
                    reason = flow_reason
                elif kind == _TRACE:
                    # A path trace: checked, kept apart, never classified (collector/traces.py).
                    if (trace_detail := trace_problem(result)) is not None:
                        reason = "bad_trace"
                        bad_trace = trace_detail
                    else:
                        traces.append(result)
                    if reason is None:
                        continue
                # With the details store, every result that gets this far reads its wire
                # bytes here (`wire`, kept below if it is accepted): they are what is kept.
                elif details is not None and len(wire := wires[index]) > max_result:
                    reason = "result_too_large"
                elif capped and probe not in held and probe not in added and (
                        len(added) >= room):
                    reason = "too_many_probes"
                elif not result.success:
                    phase = result.failed_phase
                    failure_reason = result.reason
                    if not (0 <= phase < _PHASES and 0 <= result.timeout_phase < _PHASES):
                        reason = "bad_phase"
                    elif len(failure_reason) > max_reason:
                        reason = "field_too_long"
                    else:
                        failures.add(probe, region, PHASE_NAMES[phase], failure_reason)
            if reason is None:
                if result.step and (kind != _FLOW or result.success):
                    stray_steps += 1
                accepted.append(result)
                if capped and probe not in held:
                    added.add(probe)
                if details is not None:
                    # Every result's bytes, with or without details: testing for them costs
                    # more here than decoding a few bare results at scrape time.
                    kept[probe] = wire
            else:
                if rejected is None:
                    rejected = {}
                rejected[reason] = rejected.get(reason, 0) + 1
        if accepted:
            self._classifier.apply(session.agent, accepted, self._clock())
            if details is not None:
                details.update(session.agent, kept)
            metrics.applied.inc(len(accepted))
        if traces:
            self._keep_traces(session, traces)
        if highest > applied_upto:
            watermark.seq = highest
            # Journaled with the transitions this batch caused, if any; else by the next
            # group commit, which the Ack waits for. Dirty first: if the journal fails,
            # a later Welcome still waits for a commit that holds this seq.
            self._dirty.add(session.agent)
            if self._committer.commit({session.agent: (watermark.epoch, highest)}):
                self._dirty.discard(session.agent)
        if duplicates:
            metrics.duplicate.inc(duplicates)
        if stray_steps:
            self._dropped["step"] += stray_steps
        if rejected:
            for reason, count in rejected.items():
                metrics.rejected.inc(count)
                detail = (f"a path trace out of contract: {bad_trace}" if reason == "bad_trace"
                          else self._result_rejection_detail(reason, len(held)))
                self._count_rejection(session.agent, reason, detail, count,
                                      counted_result=True)
        return pb.CollectorMessage(ack=pb.Ack(
            epoch=watermark.epoch, acked_seq=watermark.seq)).SerializeToString()

    def _keep_traces(self, session: _Session, traces: list[pb.ProbeResult]) -> None:
        """Hand accepted path traces to the store (without one they are only acknowledged).

        A journal failure loses the trace (logged), never the batch: traces are diagnostics.
        """
        store = self._traces
        if store is None:
            return
        now = self._clock()
        # Only traces of probes the agent reports results for (read after this batch's
        # results were applied): so an agent cannot fill the journal with made-up probes.
        held = self._classifier.agent_probes(session.agent)
        unknown = 0
        for result in traces:
            if result.probe not in held:
                unknown += 1
                continue
            try:
                store.add(session.agent, session.region, result, now)
            except JournalError as exc:
                log.warning("path trace not kept", extra={
                    "agent": session.agent, "probe": result.probe, "error": str(exc)})
        if unknown:
            self._metrics.rejected.inc(unknown)
            self._count_rejection(session.agent, "bad_trace",
                                  "a path trace of a probe the agent reports no result for",
                                  unknown, counted_result=True)

    def _config_status(self, session: _Session, status: pb.ConfigStatus) -> None:
        """Record an agent's ConfigStatus, or count it as `bad_config_status`."""
        session.last_active = self._monotonic()
        problem = config_status_problem(status, self._limits)
        if problem is not None:
            self._count_rejection(session.agent, "bad_config_status", problem)
            return
        if self._fleet is not None:
            self._fleet.config_status(session.agent, status)

    def _seq_ceiling(self, session: _Session) -> int:
        """The highest seq the agent could have numbered by now since its epoch began."""
        elapsed_ns = max(0, self._wall_ns() - session.seq_origin_ns)
        return elapsed_ns * self._limits.max_agent_results_per_second // 1_000_000_000

    def _result_rejection_detail(self, reason: str, probes: int) -> str:
        """The log detail of a result-level rejection (`probes`: the agent's probe count)."""
        detail = _RESULT_REJECTION_DETAILS.get(reason)
        shards = self._shard_filter
        return "invalid result" if detail is None else detail.format(
            limits=self._limits, probes=probes, shard=shards.shard if shards else None,
            shards=shards.shards if shards else None)

    def _count_rejection(self, agent: str, reason: str, message: str, count: int = 1, *,
                         counted_result: bool = False) -> None:
        self._metrics.rejections.labels(reason).inc(count)
        if (agent, reason) in self._logged:
            return
        if len(self._logged) < 10_000:
            self._logged.add((agent, reason))
        # A stream refused while the collector shuts down is routine: the agent reconnects.
        level = logging.INFO if reason == "draining" else logging.WARNING
        log.log(level, "rejected %s", "results" if counted_result else "stream", extra={
            "agent": agent, "reason": reason, "detail": message, "count": count})
