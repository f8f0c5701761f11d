"""The collector's YAML config, parsed once into frozen models (DESIGN.md "Configuration").

    listen: {grpc: 127.0.0.1:7070, http: 127.0.0.1:9464}
    tls: {cert_file, key_file, client_ca_file}      # optional; client_ca_file = mutual TLS
    insecure: false                                 # allow plaintext on non-loopback
    agents: [{id, region, token_file, labels}]      # the registry; absent = accept any agent
    classification: {global_ratio, min_regions, ...}
    journal: {path: probenet.db, commit_interval: 20ms}
    mqtt: {url, topic_prefix, qos, ...}             # optional
    limits: {max_message_bytes, max_batch_results, hello_timeout, max_agents,
             max_unregistered_agents, max_probes_per_agent, max_target_length,
             max_reason_length, max_label_value_length, max_result_bytes, max_flow_steps}
    regions: {eu-central: {name: Frankfurt, location: [50.1, 8.7]}}   # the status page's map
    status_page: {public: false, title: Status, services: [...]}     # public: listed only
    collector_id: <hostname>
    api: {admin_token_file: tokens/admin}           # optional: enables the write API
    maintenance: [{probes, services, regions, start, end, reason}]   # planned windows
    fleet: {probes_file: fleet.yaml, watch_interval: 2s}   # optional: probes pushed to agents
    sharding: {shard: 0, shards: 2, peers: [{shard: 1, urls: [...]}], timeout: 2s}  # optional
    tick: 1s
    shutdown_grace: 5s

Relative file paths are resolved against the config file's folder. Cross-field problems
(duplicate agent ids, plaintext on a public address) are reported at the position of the key
they are about.
"""

from __future__ import annotations

import datetime as dt
import math
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from probenet.addresses import is_loopback_host, split_listen
from probenet.configfile import (
    Duration,
    FrozenModel,
    Labels,
    ListenAddress,
    Name,
    Path_,
    load_model,
    load_text,
    resolve_path,
)
from probenet.names import MAX_LABEL_LENGTH
from probenet.sharding import MAX_SHARDS

from .maintenance import (
    MAX_NAMES,
    MaintenanceWindow,
    check_reason,
    check_span,
    config_window_id,
    parse_time,
)
from .metrics import MAX_FAILURE_SERIES, PerAgent
from .model import ClassificationParams

MIB = 1024 * 1024


def _config_path(value: str, info: ValidationInfo) -> str:
    if not value.strip():
        raise ValueError("a file path must not be empty")
    return resolve_path(value, info.context)


def _existing_file(value: str, info: ValidationInfo) -> str:
    path = _config_path(value, info)
    if not Path(path).is_file():
        raise ValueError(f"no such file: {path}")
    return path


ConfigPath = Annotated[str, AfterValidator(_config_path)]
"""A path written in the config file, resolved against the file's folder."""

ExistingFile = Annotated[str, AfterValidator(_existing_file)]
"""A path that must name an existing file when the config is loaded."""


class ListenConfig(FrozenModel):
    """Where the collector listens: gRPC for agents, HTTP for /metrics and the API."""

    grpc: ListenAddress = "127.0.0.1:7070"
    http: ListenAddress = "127.0.0.1:9464"


class TlsConfig(FrozenModel):
    """Server TLS for the gRPC listener; `client_ca_file` requires client certificates."""

    cert_file: ExistingFile
    key_file: ExistingFile
    client_ca_file: ExistingFile | None = None


class AgentEntry(FrozenModel):
    """One registry entry: an agent's identity, its region and optional token."""

    id: Name
    region: Name
    token_file: ExistingFile | None = None
    labels: Labels = Field(default_factory=dict)


class ClassificationConfig(FrozenModel):
    """The thresholds of DESIGN.md's classification table."""

    global_ratio: float = Field(0.8, gt=0.0, le=1.0)
    min_regions: int = Field(2, ge=1)
    recover_after: int = Field(2, ge=1)
    stale_after_intervals: float = Field(3.0, gt=0.0)
    impaired_ratio: float = Field(0.5, gt=0.0, le=1.0)
    impaired_min_probes: int = Field(3, ge=1)
    flap_max_changes: int = Field(4, ge=1)
    flap_window: Duration = 1800.0
    service_min_probes: int = Field(2, ge=1)
    degraded_ratio: float = Field(0.5, gt=0.0, lt=1.0)
    scope_hold_intervals: float = Field(1.0, ge=0.0, le=10.0)
    regional_confirmations: int = Field(2, ge=1, le=10)

    @field_validator("flap_window")
    @classmethod
    def _positive_window(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be longer than 0s")
        return value

    def params(self) -> ClassificationParams:
        """The classifier's parameters."""
        return ClassificationParams(
            global_ratio=self.global_ratio,
            min_regions=self.min_regions,
            recover_after=self.recover_after,
            stale_after_intervals=self.stale_after_intervals,
            impaired_ratio=self.impaired_ratio,
            impaired_min_probes=self.impaired_min_probes,
            flap_max_changes=self.flap_max_changes,
            flap_window_s=self.flap_window,
            service_min_probes=self.service_min_probes,
            degraded_ratio=self.degraded_ratio,
            scope_hold_intervals=self.scope_hold_intervals,
            regional_confirmations=self.regional_confirmations,
        )


# The longest `journal.commit_interval`: an ack waits for it, and agents end a stream that
# hears no ack for their `ack_timeout` (30 s by default).
MAX_COMMIT_INTERVAL_S = 5.0


class JournalConfig(FrozenModel):
    """The SQLite outage journal."""

    # Validated even when defaulted, so the default lands next to the config file.
    path: ConfigPath = Field("probenet.db", validate_default=True)
    # Group commit (collector/ingest.py): an Ack goes out only once the watermark it reports
    # is committed; the watermarks of every agent are committed together, in one
    # transaction, at most this often while acks wait (0: as soon as one waits).
    commit_interval: Duration = 0.02

    @field_validator("commit_interval")
    @classmethod
    def _commit_interval(cls, value: float) -> float:
        if not 0 <= value <= MAX_COMMIT_INTERVAL_S:
            raise ValueError(f"must be between 0s and {MAX_COMMIT_INTERVAL_S:g}s")
        return value


def _admin_token_file(value: str) -> str:
    try:
        token = read_secret(value)
    except OSError as exc:
        raise ValueError(f"cannot read {value}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{value} is not UTF-8 text") from exc
    if not token:
        raise ValueError(f"{value} is empty: write the admin token in it")
    return value


class ApiConfig(FrozenModel):
    """The write API (`POST`/`DELETE /api/v1/maintenance`): off without an admin token."""

    # Holds the bearer token the write API requires (read once, at start).
    admin_token_file: Annotated[ExistingFile, AfterValidator(_admin_token_file)]


def _window_time(value: Any) -> Any:
    # YAML reads an unquoted 2026-12-01T02:00:00Z as a timestamp, a quoted one as a string.
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"{value.isoformat()} has no time zone: end it with Z")
        return parse_time(value.isoformat())
    if not isinstance(value, str):
        message = f"{value!r} is not an RFC 3339 time like 2026-12-01T02:00:00Z"
        raise ValueError(message)  # noqa: TRY004 - pydantic reports ValueError only
    return parse_time(value)


WindowTime = Annotated[float, BeforeValidator(_window_time)]
"""A point in time written as RFC 3339 with a time zone, as unix seconds."""


class MaintenanceEntry(FrozenModel):
    """A planned maintenance window (`maintenance:` list; the API adds more at run time)."""

    probes: list[Name] = Field(default_factory=list, max_length=MAX_NAMES)
    services: list[Name] = Field(default_factory=list, max_length=MAX_NAMES)
    # Empty: every region.
    regions: list[Name] = Field(default_factory=list, max_length=MAX_NAMES)
    start: WindowTime
    end: WindowTime
    reason: Annotated[str, Field(strict=True), AfterValidator(check_reason)]

    def window(self) -> MaintenanceWindow:
        """The window, with its stable id (`cfg-` + a hash of its content)."""
        probes, services, regions = (tuple(sorted(set(names))) for names in
                                     (self.probes, self.services, self.regions))
        return MaintenanceWindow(
            id=config_window_id(probes, services, regions, start=self.start, end=self.end,
                                reason=self.reason),
            probes=probes, services=services, regions=regions, start=self.start,
            end=self.end, reason=self.reason, source="config")


class MqttTlsConfig(FrozenModel):
    """TLS towards the MQTT broker."""

    ca_file: ExistingFile | None = None
    cert_file: ExistingFile | None = None
    key_file: ExistingFile | None = None
    insecure_skip_verify: bool = False


class MqttConfig(FrozenModel):
    """The optional MQTT event publisher (consumed by collector.events.MqttPublisher)."""

    url: str
    topic_prefix: str = "probenet"
    qos: Literal[0, 1, 2] = 1
    client_id: str | None = None
    username: str | None = None
    password_file: ExistingFile | None = None
    tls: MqttTlsConfig | None = None
    queue_size: int = Field(10000, ge=1)
    keepalive: Duration = 60.0

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
            raise ValueError(f"{value!r} is not an MQTT URL like mqtt://127.0.0.1:1883 "
                             "or mqtts://broker:8883")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"{value!r} has an invalid port") from exc
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "+#\0") or value.startswith("/"):
            raise ValueError(f"{value!r} is not a valid topic prefix (no +, #, leading /)")
        return value.rstrip("/")

    @field_validator("keepalive")
    @classmethod
    def _keepalive(cls, value: float) -> float:
        if not 1.0 <= value <= 65535.0:
            raise ValueError("must be between 1s and 65535s")
        return value


class LimitsConfig(FrozenModel):
    """Limits the collector enforces on agents, so that one broken or hostile agent is harmless.

    `max_message_bytes` and `max_batch_results` are sent to agents in Welcome. The others
    are enforced at ingest (collector/ingest.py), each with a counted rejection reason in
    `probenet_ingest_rejections_total{reason}`: a stream over an agent limit is refused
    (`too_many_agents`, gRPC RESOURCE_EXHAUSTED: the agent retries with its backoff); a
    result over a per-result limit is dropped but acknowledged (`too_many_probes`,
    `field_too_long`, `result_too_large`, `too_many_steps`), and the agent's other results
    are applied.
    """

    max_message_bytes: int = Field(4 * MIB, ge=64 * 1024, le=256 * MIB)
    max_batch_results: int = Field(5000, ge=1, le=1_000_000)
    hello_timeout: Duration = 10.0
    # Agent streams open at once. A reconnect of an agent id that has a stream open (a new
    # stream replacing the old one) is never refused by it.
    max_agents: int = Field(10_000, ge=1, le=1_000_000)
    # Without an `agents` registry only: distinct agent ids accepted since the collector
    # started (it keeps every agent it has seen, with its probes, until it restarts). A known
    # id may always reconnect; a new one beyond it is refused. With a registry, the registry
    # bounds the ids.
    max_unregistered_agents: int = Field(10_000, ge=1, le=1_000_000)
    # Distinct probe names one agent may report (the (agent, probe) pairs the collector
    # holds for it, across reconnects). A result for a new probe beyond it is rejected; the
    # agent's existing probes keep being applied.
    max_probes_per_agent: int = Field(5000, ge=1, le=1_000_000)
    # Characters of a result's target (a label of probe_success and friends).
    max_target_length: int = Field(2048, ge=16, le=65_536)
    # Characters of a failure's machine-readable reason (a label of the failure counts).
    max_reason_length: int = Field(64, ge=8, le=1024)
    # Characters of the other agent-supplied label values: agent id, region and version in
    # Hello, Hello label values (the shared name and label rule caps them at 128 already;
    # this can only lower it), a result's service, and a `flow` result's step names (its
    # failing `step` and the name of each step in its details).
    max_label_value_length: int = Field(MAX_LABEL_LENGTH, ge=8, le=MAX_LABEL_LENGTH)
    # Serialized bytes of one result, kept per (agent, probe) pair for the per-kind metrics
    # until the next scrape decodes them: this bounds the error text, the address and the
    # details (a real agent's result is well under 1 KiB; it cuts its error at 512 chars).
    # Checked where result bytes are kept (per-kind details on).
    max_result_bytes: int = Field(16 * 1024, ge=1024, le=256 * MIB)
    # Steps of one `flow` result (the steps that ran, and the steps configured): each step
    # that ran is a series of probenet_step_success and probenet_step_duration_seconds per
    # agent, so this bounds a flow probe's series (`too_many_steps` beyond). Step names are
    # label values: max_label_value_length bounds them (`field_too_long`). The agent's
    # config allows 50.
    max_flow_steps: int = Field(50, ge=1, le=1000)
    # Characters of a result's error text (the agent cuts its own at 512) and of its probed
    # address (which max_target_length bounds): `field_too_long` beyond.
    max_error_length: int = Field(4096, ge=64, le=MIB)
    # How far ahead of the collector's clock a result's timestamp may be (agent clock skew):
    # `bad_timestamp` beyond, as for a negative timestamp (0 means "not stamped").
    max_clock_skew: Duration = 300.0
    # The retention window of results: one stamped longer ago than this is counted
    # (`too_old`) and skipped, never applied (it would report a past state as the current
    # one, or date an outage's start that far back).
    max_result_age: Duration = 86_400.0
    # The longest probe interval a result may carry (`interval_ms`; 0: the Hello's): the
    # classifier counts staleness and trusts agent clocks in intervals, so an absurd one
    # (2^32-1 ms: 50 days) would keep a pair fresh for months (`bad_interval`). A week lets
    # weekly checks through; max_result_age still bounds how far back a stamp is trusted.
    max_probe_interval: Duration = 7 * 86_400.0
    # Epoch and seq plausibility (collector/ingest.py): a Hello epoch (unix ns of the
    # agent's start) later than the collector's wall clock plus this is refused
    # (`bad_epoch`) ...
    max_epoch_skew: Duration = 300.0
    # ... and a result seq above what the agent could have numbered since its epoch at this
    # many results per second (plus the skew) is dropped (`seq_jump`), never applied.
    max_agent_results_per_second: int = Field(100_000, ge=1, le=1_000_000_000)
    # A stream with another epoch than the agent's live stream replaces it only when the
    # live one has sent nothing for this long (else `agent_already_connected`); a stream
    # with the live one's epoch (the same agent process reconnecting) replaces it at once.
    stream_takeover_after: Duration = 40.0
    # An epoch older than the agent's watermark (its clock stepped back) is accepted, and
    # the watermark restarts at it, once the agent has had no stream for this long.
    epoch_rollback_after: Duration = 300.0

    @field_validator("hello_timeout")
    @classmethod
    def _hello_timeout(cls, value: float) -> float:
        if not 0 < value <= 3600:
            raise ValueError("must be between 0s and 1h")
        return value

    @field_validator("max_clock_skew", "max_result_age", "max_probe_interval")
    @classmethod
    def _result_time_limits(cls, value: float) -> float:
        if not 1 <= value <= 30 * 86400:
            raise ValueError("must be between 1s and 30 days")
        return value

    @field_validator("max_epoch_skew", "stream_takeover_after", "epoch_rollback_after")
    @classmethod
    def _epoch_durations(cls, value: float) -> float:
        if not 0 <= value <= 7 * 86400:
            raise ValueError("must be between 0s and 7 days")
        return value


class MetricsConfig(FrozenModel):
    """What /metrics exports per (probe, agent) pair: the series count is the user's choice.

        metrics:
          per_agent: all            # all | success | none
          per_kind_details: true    # default: true when per_agent is all, else false
          max_failure_series: 50000

    The classification families (probenet_region_up, probenet_target_state,
    probenet_outage_active, probenet_target_flapping, probenet_monitoring_degraded), the
    per-agent health (probenet_agent_up, probenet_agent_impaired, probenet_region_isolated)
    and probenet_probe_failures_total are always exported. The defaults export everything
    (what the shipped dashboards read): at 100,000 pairs of https probes that is about 16
    series per pair, 1.6 million in all.
    """

    # all: probe_success and probe_duration_seconds per (probe, agent) pair; success: only
    # probe_success; none: no per-pair series at all.
    per_agent: PerAgent = "all"
    # The blackbox_exporter-compatible per-kind families per pair (probe_http_status_code,
    # probe_ssl_earliest_cert_expiry, ...; about 14 series per https pair). They need
    # per_agent: all; unset, they follow it.
    per_kind_details: bool | None = None
    # Distinct (probe, region, phase, reason) series of probenet_probe_failures_total;
    # beyond it, new reasons are counted under reason="other".
    max_failure_series: int = Field(MAX_FAILURE_SERIES, ge=1, le=10_000_000)

    @field_validator("per_kind_details")
    @classmethod
    def _details_need_pairs(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        per_agent = info.data.get("per_agent", "all")
        if value and per_agent != "all":
            raise ValueError(f"true needs per_agent: all, not {per_agent!r} (a pair's details "
                             "are of no use without its probe_success and duration)")
        return value

    @property
    def kind_details(self) -> bool:
        """True when the per-kind families are exported (and their store kept)."""
        if self.per_kind_details is None:
            return self.per_agent == "all"
        return self.per_kind_details


def _display_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if any(not ch.isprintable() for ch in value):
        raise ValueError("must not hold control characters")
    return value


DisplayText = Annotated[str, Field(strict=True, max_length=100),
                        AfterValidator(_display_text)]
"""A short text shown on the status page (a title, a region's display name)."""
Latitude = Annotated[float, Field(strict=True, ge=-90.0, le=90.0)]
Longitude = Annotated[float, Field(strict=True, ge=-180.0, le=180.0)]


class RegionPlace(FrozenModel):
    """A region's display name and map position (`regions: {eu-central: {name, location}}`)."""

    name: DisplayText | None = None
    # [latitude, longitude] in degrees; without it the region is listed but not drawn.
    location: tuple[Latitude, Longitude] | None = None

    @field_validator("location", mode="before")
    @classmethod
    def _two_numbers(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, list | tuple) or len(value) != 2):
            raise ValueError(f"write [latitude, longitude] in degrees, like [50.1, 8.7] "
                             f"(got {value!r})")
        return value


class StatusPageConfig(FrozenModel):
    """The status page (`/status`): `public: true` shows only `services`, no agent details."""

    public: bool = False
    title: DisplayText = "Status"
    # The services the page shows; empty: every service (only when not public).
    services: list[Name] = Field(default_factory=list)

    @field_validator("services")
    @classmethod
    def _unique_services(cls, value: list[str]) -> list[str]:
        repeated = sorted({s for s in value if value.count(s) > 1})
        if repeated:
            raise ValueError(f"services listed twice: {', '.join(repeated)}")
        return value


def _positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be longer than 0s")
    return value


class FleetConfig(FrozenModel):
    """The fleet file (collector/fleet.py): probes pushed to the agents they select."""

    # Relative to this config file; validated (with the agent's probe rules) at load.
    probes_file: ExistingFile
    # How often the file is checked for changes (mtime, size, content hash); SIGHUP too.
    watch_interval: Annotated[Duration, AfterValidator(_positive)] = 2.0


# URLs one peer group may list (the collectors of an HA pair or trio), and their length.
MAX_PEER_URLS = 16
MAX_PEER_URL_LENGTH = 2048
# The longest `sharding.timeout`: a fleet view waits for it per peer URL it tries.
MAX_PEER_TIMEOUT_S = 60.0


def _peer_url(value: str) -> str:
    if len(value) > MAX_PEER_URL_LENGTH:
        raise ValueError(f"a peer URL is at most {MAX_PEER_URL_LENGTH} characters")
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{value!r} is not an absolute http(s) URL like "
                         "http://collector-b1:9464")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"{value!r} has an invalid port") from exc
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r}: a peer URL has no query, fragment or credentials")
    return value.rstrip("/")


PeerUrl = Annotated[str, Field(strict=True), AfterValidator(_peer_url)]
"""A peer collector's HTTP base URL (`http://collector-b1:9464`), without a trailing /."""


class ShardPeer(FrozenModel):
    """Another collector group: its shard and the URLs of its collectors, tried in order."""

    shard: int = Field(strict=True, ge=0, lt=MAX_SHARDS)
    urls: list[PeerUrl] = Field(min_length=1, max_length=MAX_PEER_URLS)


class ShardingConfig(FrozenModel):
    """Sharding by probe (probenet/sharding.py): this group's shard, and its peer groups.

    With it, the ingest accepts only results of probes in `shard` of `shards`
    (`wrong_shard` otherwise), and with `peers`, /api/v1/fleet/* merges every group's
    answers (collector/fleetview_api.py). Both collectors of an HA pair have the same shard.
    """

    shard: int = Field(strict=True, ge=0, lt=MAX_SHARDS)
    shards: int = Field(strict=True, ge=1, le=MAX_SHARDS)
    peers: list[ShardPeer] = Field(default_factory=list, max_length=MAX_SHARDS)
    # Per request to one peer URL (a group's URLs are tried in turn).
    timeout: Duration = 2.0

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if not 0 < value <= MAX_PEER_TIMEOUT_S:
            raise ValueError(f"must be longer than 0s and at most {MAX_PEER_TIMEOUT_S:g}s")
        return value


class CollectorConfig(FrozenModel):
    """A whole collector config file."""

    listen: ListenConfig = Field(default_factory=ListenConfig)
    tls: TlsConfig | None = None
    insecure: bool = False
    agents: list[AgentEntry] | None = None
    classification: ClassificationConfig = Field(default_factory=ClassificationConfig)
    journal: JournalConfig = Field(default_factory=JournalConfig)
    mqtt: MqttConfig | None = None
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    collector_id: Name = Field(default_factory=socket.gethostname)
    regions: dict[Name, RegionPlace] = Field(default_factory=dict)
    api: ApiConfig | None = None
    maintenance: list[MaintenanceEntry] = Field(default_factory=list)
    status_page: StatusPageConfig = Field(default_factory=StatusPageConfig)
    fleet: FleetConfig | None = None
    sharding: ShardingConfig | None = None
    tick: Annotated[Duration, AfterValidator(_positive)] = 1.0
    shutdown_grace: Annotated[Duration, AfterValidator(_positive)] = 5.0

    @model_validator(mode="before")
    @classmethod
    def _journal_section(cls, data: Any) -> Any:
        # An absent `journal` still resolves its default path against the file's folder.
        if isinstance(data, dict) and "journal" not in data:
            return {**data, "journal": {}}
        return data

    @property
    def grpc_on_loopback(self) -> bool:
        """True when the gRPC listener only accepts connections from this machine."""
        return is_loopback_host(split_listen(self.listen.grpc)[0])

    def agent(self, agent_id: str) -> AgentEntry | None:
        """The registry entry of `agent_id`, if any."""
        for entry in self.agents or ():
            if entry.id == agent_id:
                return entry
        return None


def _check_unique_agents(config: CollectorConfig) -> list[tuple[Path_, str]]:
    seen: dict[str, int] = {}
    found: list[tuple[Path_, str]] = []
    for i, entry in enumerate(config.agents or ()):
        if entry.id in seen:
            found.append((("agents", i, "id"),
                          f"duplicate agent id {entry.id!r} (also agents[{seen[entry.id]}])"))
        else:
            seen[entry.id] = i
    return found


def _check_exposure(config: CollectorConfig) -> list[tuple[Path_, str]]:
    if config.insecure or config.grpc_on_loopback:
        return []
    where: Path_ = ("listen", "grpc")
    if config.tls is None:
        tokens = " (agent tokens would travel in clear text)" if any(
            a.token_file for a in config.agents or ()) else ""
        return [(where, (f"listen.grpc {config.listen.grpc} is not a loopback address and "
                        f"there is no tls section{tokens}: configure tls, or set "
                        "`insecure: true` to accept plaintext"))]
    if config.agents is None:
        return [(where, (f"listen.grpc {config.listen.grpc} is not a loopback address and "
                        "there is no agents registry: any agent could report for any region; "
                        "list the agents, or set `insecure: true`"))]
    return []


def _check_mqtt_tls(config: CollectorConfig) -> list[tuple[Path_, str]]:
    tls = config.mqtt.tls if config.mqtt else None
    if tls is not None and (tls.cert_file is None) != (tls.key_file is None):
        return [(("mqtt", "tls"), "mqtt.tls: cert_file and key_file go together")]
    return []


def _check_public_status_page(config: CollectorConfig) -> list[tuple[Path_, str]]:
    page = config.status_page
    if page.public and not page.services:
        return [(("status_page", "public"),
                 ("status_page.public: true needs `services`: the services the public "
                  "page may show (a public page never shows every service by default)"))]
    return []


def _check_maintenance(config: CollectorConfig) -> list[tuple[Path_, str]]:
    found: list[tuple[Path_, str]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(config.maintenance):
        if not entry.probes and not entry.services:
            found.append((("maintenance", i),
                          f"maintenance[{i}]: name probes or services (or both)"))
        try:
            check_span(entry.start, entry.end)
        except ValueError as exc:
            found.append((("maintenance", i, "end"), f"maintenance[{i}].end: {exc}"))
        window_id = entry.window().id
        if window_id in seen:
            found.append((("maintenance", i),
                          f"maintenance[{i}] repeats maintenance[{seen[window_id]}]"))
        seen.setdefault(window_id, i)
    return found


def _check_sharding(config: CollectorConfig) -> list[tuple[Path_, str]]:
    sharding = config.sharding
    if sharding is None:
        return []
    found: list[tuple[Path_, str]] = []
    if sharding.shard >= sharding.shards:
        found.append((("sharding", "shard"),
                      (f"sharding.shard {sharding.shard} is not below sharding.shards "
                      f"{sharding.shards} (shards are numbered from 0)")))
    seen_shards: dict[int, int] = {}
    seen_urls: dict[str, int] = {}
    for i, peer in enumerate(sharding.peers):
        where: Path_ = ("sharding", "peers", i, "shard")
        if peer.shard == sharding.shard:
            found.append((where, (f"sharding.peers[{i}].shard {peer.shard} is this "
                                 "collector's own shard (list only the other groups)")))
        elif peer.shard >= sharding.shards:
            found.append((where, (f"sharding.peers[{i}].shard {peer.shard} is not below "
                                 f"sharding.shards {sharding.shards}")))
        elif peer.shard in seen_shards:
            found.append((where, (f"sharding.peers[{i}].shard {peer.shard} repeats "
                                 f"sharding.peers[{seen_shards[peer.shard]}]")))
        seen_shards.setdefault(peer.shard, i)
        for j, url in enumerate(peer.urls):
            if url in seen_urls:
                found.append((("sharding", "peers", i, "urls", j),
                              (f"{url} is listed twice (also in "
                              f"sharding.peers[{seen_urls[url]}])")))
            seen_urls.setdefault(url, i)
    return found


CHECKS = (_check_unique_agents, _check_exposure, _check_mqtt_tls, _check_maintenance,
          _check_public_status_page, _check_sharding)


def load_config(path: str | Path) -> CollectorConfig:
    """Load and validate a collector config file; raise ConfigError naming every problem."""
    return load_model(CollectorConfig, path, checks=CHECKS)


def parse_config(text: str, file: str = "<string>") -> CollectorConfig:
    """Validate collector config YAML text (tests, generated configs)."""
    return load_text(CollectorConfig, text, file, checks=CHECKS)


def read_secret(path: str) -> str:
    """A token or password file's content, without surrounding whitespace."""
    return Path(path).read_text(encoding="utf-8").strip()


def config_summary(config: CollectorConfig) -> dict[str, Any]:
    """The fields worth logging at start (no secrets)."""
    return {
        "collector_id": config.collector_id,
        "grpc": config.listen.grpc,
        "http": config.listen.http,
        "tls": config.tls is not None,
        "mtls": bool(config.tls and config.tls.client_ca_file),
        "registry": len(config.agents) if config.agents is not None else None,
        "journal": config.journal.path,
        "mqtt": config.mqtt.url if config.mqtt else None,
        "metrics": (f"per_agent={config.metrics.per_agent} "
                    f"per_kind_details={config.metrics.kind_details}"),
        "write_api": config.api is not None,
        "maintenance_windows": len(config.maintenance),
        "fleet": config.fleet.probes_file if config.fleet else None,
        "shard": (f"{config.sharding.shard}/{config.sharding.shards}"
                  if config.sharding else None),
    }
