"""The agent's `agent.yaml`, parsed once into frozen, typed objects (`load_config`).

Shape (DESIGN.md "Configuration"); every key below is optional unless marked required:

    agent: {id (required), region (required), labels, source_address}
    collectors:                          # required, one or more
      - {address (required, host:port), token_file, connect_timeout, keepalive: 20s,
         keepalive_timeout: 10s, shard,
         tls: {ca_file, cert_file, key_file, server_name, insecure_skip_verify}}
    shards: 2                            # optional: the number of shards (default: see below)
    defaults: {interval: 30s, timeout: 5s, confirm_delay}
    scheduler: {max_concurrent: 512, grace_period: 5s}
    stream: {max_batch_results: 500, linger: 50ms, backoff_initial: 200ms, backoff_max: 10s}
    buffer: {max_results: 100000}
    metrics: {listen: 127.0.0.1:9465}    # optional self-metrics endpoint
    remote_config: false                 # true: also run the probes a collector pushes
    probes:                              # may be empty (or absent) with remote_config
      - {name (required), service, kind (required), target (required), interval, timeout,
         confirm_delay, all_addresses, labels, <kind>: {kind's own options},
         trace: {on_failure: false, every, max_hops: 30, probes_per_hop: 3,
                 hop_timeout: 1s, method: udp|icmp, min_gap: 60s}}  # not for flow

Sharding by probe (DESIGN.md "Scale beyond one machine"): without any `shard`, every result
goes to every collector (HA). When one collector sets `shard` (0 .. shards-1), every one must:
a probe's results (and its path traces) then go only to the collectors of shard
`probenet.sharding.shard_of(probe name, shards)` (Prometheus' hashmod), and two collectors of
one shard are an HA pair. `shards` defaults to the highest `shard` + 1; every shard needs at
least one collector, and `shards` without any `shard` is an error. Hellos and ConfigStatus
go to every collector. With `remote_config`, every collector group is assumed to push the
same fleet file: the agent runs the latest set as without shards.

Effective values: a probe's `interval`, `timeout` and `confirm_delay` are resolved from
`defaults` when the probe does not set them, so `ProbeSpec.interval` etc. are always plain
float seconds. `confirm_delay` (the wait before the re-probe that confirms a failure)
defaults to the smaller of 1s and a tenth of the probe's interval. The options of the
probe's own kind are always set (filled with their defaults when absent); the options of the
other kinds are always None, and writing them is an error at that key. File paths are
resolved against the config file's folder; their existence is checked when the agent
starts, not here, so configs written for another host still pass `probenet check`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import dns.exception
import dns.name
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from probenet.addresses import is_host, split_host_port
from probenet.configfile import (
    ByteSize,
    ConfigError,
    CrossCheck,
    Duration,
    FrozenModel,
    HostPort,
    Labels,
    ListenAddress,
    Name,
    Path_,
    check_host_port,
    format_duration,
    load_model,
    load_text,
    resolve_path,
)
from probenet.kinds import PROBE_KINDS, ProbeKind
from probenet.names import MAX_LABEL_LENGTH
from probenet.sharding import MAX_SHARDS

from .jsonpath import JsonPath
from .templates import Template, check_variable_name

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = [
    "AgentConfig",
    "AgentIdentity",
    "BasicAuth",
    "BufferSettings",
    "CollectorTarget",
    "CollectorTls",
    "ConfigError",
    "DnsOptions",
    "ExtractRule",
    "FlowOptions",
    "FlowRequest",
    "FlowStepSpec",
    "GrpcOptions",
    "HttpAuth",
    "HttpOptions",
    "IcmpOptions",
    "IpFamily",
    "MetricsSettings",
    "ProbeDefaults",
    "ProbeSpec",
    "SchedulerSettings",
    "SecretSource",
    "StepExpect",
    "StreamSettings",
    "TcpOptions",
    "TlsClientOptions",
    "TlsOptions",
    "TraceOptions",
    "load_config",
    "parse_config",
    "resolve_probe_timing",
]

IpFamily = Literal["ip4", "ip6"]
DnsRecord = Literal["A", "AAAA", "CNAME", "MX", "NS", "TXT", "SOA", "PTR", "SRV", "CAA"]
DnsRcode = Literal["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
                   "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE"]

# The collector's default limits.max_target_length.
MAX_TARGET_LENGTH = 2048
_HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_STATUS = re.compile(r"[1-5](?:xx|[0-9]{2})")


# --------------------------------------------------------------------------- value checks


def _check_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    return value


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


def _check_host(value: str) -> str:
    if not is_host(value):
        raise ValueError(f"invalid host {value!r}: expected a host name or an IP address")
    return value


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"}:
        raise ValueError(f"invalid URL {value!r}: the scheme must be http or https")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid URL {value!r}: bad port") from None
    if port == 0:
        raise ValueError(f"invalid URL {value!r}: bad port")
    host = parts.hostname or ""
    if not host or not is_host(host):
        raise ValueError(f"invalid URL {value!r}: missing or invalid host")
    return value


def _check_dns_name(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return value  # a PTR target may be written as the address itself
    try:
        dns.name.from_text(value)
    except dns.exception.DNSException as exc:
        raise ValueError(f"invalid DNS name {value!r}: {exc}") from None
    if not value.strip(". ") and value != ".":
        raise ValueError(f"invalid DNS name {value!r}")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be greater than 0 (got {format_duration(value)})")
    return value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Regex = Annotated[str, AfterValidator(_check_regex)]
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
# The collector's default limits.max_probe_interval: results with a longer interval are
# refused (bad_interval), so a valid config never produces one.
MAX_INTERVAL_S = 7 * 86_400.0


def _at_most_a_week(value: float) -> float:
    if value > MAX_INTERVAL_S:
        raise ValueError(f"must be at most 7 days (got {format_duration(value)}); the "
                         "collector refuses longer intervals")
    return value


Interval = Annotated[PositiveDuration, AfterValidator(_at_most_a_week)]
# The collector answers pings more frequent than every 10s with GOAWAY too_many_pings
# (`grpc.http2.min_ping_interval_without_data_ms` in collector/server.py).
MIN_KEEPALIVE_S = 10.0


def _keepalive_interval(value: float) -> float:
    if value < MIN_KEEPALIVE_S:
        raise ValueError(f"must be at least {format_duration(MIN_KEEPALIVE_S)}: the collector "
                         f"refuses more frequent pings (got {format_duration(value)})")
    return value


KeepaliveInterval = Annotated[Duration, AfterValidator(_keepalive_interval)]


class _PathModel(FrozenModel):
    """A model whose `*_file` string fields are resolved against the config file's folder."""

    @field_validator("*", mode="after")
    @classmethod
    def _resolve_files(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and info.field_name and info.field_name.endswith("_file"):
            if not value:
                raise ValueError("must not be empty")
            return resolve_path(value, info.context)
        return value


# --------------------------------------------------------------------------- agent, collectors


class AgentIdentity(FrozenModel):
    """Who this agent is: its id (unique in the fleet), region, labels and source address."""

    id: Name
    region: Name
    labels: Labels = Field(default_factory=dict)
    # Bind every probe's sockets (HTTP, TCP, DNS, ...) to this local address.
    source_address: Annotated[str, AfterValidator(_check_ip)] | None = None
    # Where the agent keeps its epoch, sequence and unacknowledged results (agent/state.py),
    # relative to this file's folder. Unset: $STATE_DIRECTORY (systemd's StateDirectory=),
    # else `<config name>.state` next to the config file.
    state_dir: str | None = None

    @field_validator("state_dir")
    @classmethod
    def _resolve_state_dir(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("must not be empty (leave it out for the default)")
        return resolve_path(value, info.context)


class CollectorTls(_PathModel):
    """TLS towards a collector: the CA to trust, and a client certificate for mutual TLS."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> CollectorTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self

    @field_validator("insecure_skip_verify")
    @classmethod
    def _verify_always(cls, value: bool) -> bool:
        if value:
            raise ValueError("gRPC always verifies the collector's certificate: set ca_file "
                             "to the CA that signed it (and server_name if its name differs)")
        return value


class CollectorTarget(_PathModel):
    """One collector to stream every result to."""

    address: HostPort
    tls: CollectorTls | None = None
    token_file: str | None = None
    connect_timeout: PositiveDuration = 5.0
    # HTTP/2 keepalive: a ping after this long without reads, and the connection is dropped
    # when no answer comes within `keepalive_timeout`: a silently dead connection (a
    # partition, a vanished NAT entry) is found within their sum instead of never.
    keepalive: KeepaliveInterval = 20.0
    keepalive_timeout: PositiveDuration = 10.0
    # The collector group (shard) this collector belongs to; None: every result comes here.
    shard: int | None = Field(default=None, ge=0, lt=MAX_SHARDS)


# --------------------------------------------------------------------------- probe options


class TlsClientOptions(_PathModel):
    """TLS client settings of a probe (http, grpc)."""

    ca_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsClientOptions:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self


class BasicAuth(_PathModel):
    """HTTP basic authentication; the password is read from a file."""

    username: str
    password_file: str


class HttpAuth(_PathModel):
    """HTTP authentication: basic, or a bearer token read from a file (not both)."""

    basic: BasicAuth | None = None
    bearer_token_file: str | None = None

    @model_validator(mode="after")
    def _one(self) -> HttpAuth:
        if self.basic is not None and self.bearer_token_file is not None:
            raise ValueError("set either basic or bearer_token_file, not both")
        return self


def _check_status(value: str) -> str:
    if not _STATUS.fullmatch(value):
        raise ValueError(
            f'invalid status {value!r}: write a class like "2xx" or a code like "301"')
    return value


def status_in(status: int, wanted: Sequence[str]) -> bool:
    """Whether an HTTP status code matches one of `wanted` ("2xx" classes or "301" codes)."""
    code = str(status)
    return any(code == want or (want.endswith("xx") and code[0] == want[0]) for want in wanted)


def _check_method(value: str) -> str:
    if not _HTTP_TOKEN.fullmatch(value):
        raise ValueError(f"invalid HTTP method {value!r}")
    return value.upper()


class HttpOptions(FrozenModel):
    """Options of an `http` probe."""

    method: Annotated[str, AfterValidator(_check_method)] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    # Status classes ("2xx") or codes ("301"); the response must match one of them.
    expect_status: list[Annotated[str, AfterValidator(_check_status)]] = Field(
        default_factory=lambda: ["2xx", "3xx"], min_length=1)
    body_regex: Regex | None = None
    # The probe fails when the body matches any of these.
    fail_if_body_matches: Annotated[list[Regex], BeforeValidator(_as_list)] = Field(
        default_factory=list)
    # Header name -> regex its value must match (a missing header fails).
    expect_headers: dict[str, Regex] = Field(default_factory=dict)
    follow_redirects: bool = True
    max_redirects: int = Field(default=10, ge=0, le=100)
    tls: TlsClientOptions | None = None
    ip_family: IpFamily | None = None
    auth: HttpAuth | None = None

    @field_validator("headers")
    @classmethod
    def check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        """Header names are HTTP tokens; values hold no line break."""
        for key, text in value.items():
            if not _HTTP_TOKEN.fullmatch(key):
                raise ValueError(f"invalid header name {key!r}")
            if "\r" in text or "\n" in text:
                raise ValueError(f"header {key!r}: line breaks are not allowed in a value")
        return value

    def status_matches(self, status: int) -> bool:
        """Whether an HTTP status code satisfies `expect_status`."""
        return status_in(status, self.expect_status)


class TcpOptions(FrozenModel):
    """Options of a `tcp` probe: success = connected (and, with `expect`, the line read)."""

    send: str | None = None
    expect: Regex | None = None
    tls: bool = False
    ip_family: IpFamily | None = None


class DnsOptions(FrozenModel):
    """Options of a `dns` probe: query `target` for `record` against `server`."""

    # host[:port]; None = the system resolver (the first nameserver of /etc/resolv.conf).
    server: str | None = None
    record: DnsRecord = "A"
    expect_rcode: DnsRcode = "NOERROR"
    # Every listed answer must be present (compared as text, like `dig +short` prints them).
    expect_answers: list[str] = Field(default_factory=list)
    # At least one answer must match.
    answer_regex: Regex | None = None
    # udp falls back to tcp when the answer is truncated.
    transport: Literal["udp", "tcp"] = "udp"
    recursion_desired: bool = True

    @field_validator("server")
    @classmethod
    def _server(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value, default_port=53)
        return value

    @field_validator("record", "expect_rcode", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class IcmpOptions(FrozenModel):
    """Options of an `icmp` probe: `count` echo requests `spacing` apart."""

    count: int = Field(default=3, ge=1, le=100)
    spacing: PositiveDuration = 0.2
    max_loss: float = Field(default=0.0, ge=0.0, le=1.0)
    ip_family: IpFamily | None = None
    payload_bytes: int = Field(default=56, ge=0, le=65000)


class TlsOptions(_PathModel):
    """Options of a `tls` probe: handshake and certificate checks."""

    server_name: str | None = None
    ca_file: str | None = None
    min_days_valid: int = Field(default=0, ge=0)
    insecure_skip_verify: bool = False


class GrpcOptions(FrozenModel):
    """Options of a `grpc` probe: the standard health check of `service`."""

    service: str = ""
    tls: TlsClientOptions | None = None


class TraceOptions(FrozenModel):
    """A probe's path traces (`agent/trace.py`): on a confirmed failure and/or on schedule."""

    # One trace when a failure of the probe is confirmed (at most one per `min_gap`).
    on_failure: bool = False
    # A baseline trace this often (None: none).
    every: PositiveDuration | None = None
    max_hops: int = Field(default=30, ge=1, le=64)
    probes_per_hop: int = Field(default=3, ge=1, le=10)
    hop_timeout: PositiveDuration = 1.0
    method: Literal["udp", "icmp"] = "udp"
    # The least time between two failure traces of the probe.
    min_gap: PositiveDuration = 60.0

    @field_validator("every")
    @classmethod
    def _every(cls, value: float | None) -> float | None:
        if value is not None and value < 10:
            raise ValueError(f"every: at least 10s between baseline traces, got "
                             f"{format_duration(value)}")
        return value

    @field_validator("hop_timeout")
    @classmethod
    def _hop_timeout(cls, value: float) -> float:
        if value > 10:
            raise ValueError(f"hop_timeout: at most 10s, got {format_duration(value)}")
        return value


TRACE_KINDS = frozenset({"http", "tcp", "tls", "grpc", "icmp", "dns"})
"""The kinds with a host to trace to (dns: its server's address)."""


# --------------------------------------------------------------------------- flow options

MAX_FLOW_STEPS = 50
"""The most steps a flow may have (the collector's default limits.max_flow_steps)."""


def _check_template(value: str) -> str:
    Template.parse(value)
    return value


def _check_json_path(value: str) -> str:
    JsonPath.parse(value)
    return value


def _check_step_url(value: str) -> str:
    """A step URL: a path relative to the probe's target, or an absolute http(s) URL."""
    template = Template.parse(value)
    if any(char in value for char in "\r\n\t "):
        raise ValueError(f"invalid URL {value!r}: no spaces or line breaks (percent-encode them)")
    # Absolute when it starts with a scheme: a relative URL may hold "://" in its query.
    scheme = _URL_SCHEME.match(template.parts[0])
    if scheme is not None:
        if template.is_constant:
            return _check_url(value)
        if scheme.group(1).lower() not in {"http", "https"}:
            raise ValueError(f"invalid URL {value!r}: the scheme must be http or https")
    return value


_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


TemplateText = Annotated[str, AfterValidator(_check_template)]
"""Text in which `${name}` stands for a variable or secret (agent/templates.py)."""
JsonPathText = Annotated[str, AfterValidator(_check_json_path)]
"""A JSON path like `$.user.name` or `$.items[0]['id']` (agent/jsonpath.py)."""
VariableName = Annotated[str, AfterValidator(check_variable_name)]


class SecretSource(FrozenModel):
    """Where a secret's value is read from: a file (its text, stripped) or an env variable.

    Read when the agent loads its config; never logged, sent to a collector or exported.
    """

    file: str | None = None
    env: str | None = None

    @field_validator("file")
    @classmethod
    def _resolve_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("must not be empty")
        return resolve_path(value, info.context)

    @field_validator("env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"invalid environment variable name {value!r}")
        return value

    @model_validator(mode="after")
    def _one(self) -> SecretSource:
        if (self.file is None) == (self.env is None):
            raise ValueError("set exactly one of file or env")
        return self


def _check_form(value: dict[str, str]) -> dict[str, str]:
    for key, text in value.items():
        _check_template(key)
        _check_template(text)
    return value


class FlowRequest(FrozenModel):
    """The request of one flow step; `${name}` works in url, headers, query, body, json, form."""

    method: Annotated[str, AfterValidator(_check_method)] = "GET"
    # Relative to the probe's target (`/login`, `login?next=/`), or an absolute http(s) URL.
    url: Annotated[str, AfterValidator(_check_step_url)] = ""
    headers: dict[str, TemplateText] = Field(default_factory=dict)
    # Added to the URL's query string, percent-encoded after substitution.
    query: Annotated[dict[str, str], AfterValidator(_check_form)] = Field(default_factory=dict)
    # One of: raw text, a JSON document (strings inside may hold ${name}), or form fields.
    body: TemplateText | None = None
    json_body: Any = Field(default=None, alias="json")
    form: Annotated[dict[str, str], AfterValidator(_check_form)] | None = None
    follow_redirects: bool = True
    max_redirects: int = Field(default=10, ge=0, le=100)

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        return HttpOptions.check_headers(value)

    @field_validator("json_body")
    @classmethod
    def _json_templates(cls, value: Any) -> Any:
        for text in _json_strings(value):
            _check_template(text)
        return value

    @model_validator(mode="after")
    def _one_body(self) -> FlowRequest:
        given = [key for key, value in (("body", self.body), ("json", self.json_body),
                                        ("form", self.form)) if value is not None]
        if len(given) > 1:
            raise ValueError(f"set one of body, json or form, not {' and '.join(given)}")
        return self


def _json_strings(value: Any) -> list[str]:
    """Every string (keys included) of a JSON-like value."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            found.extend(str(k) for k in item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


class JsonExists(FrozenModel):
    """`{exists: true}` (the path must lead to a value) or `{exists: false}` (must not)."""

    exists: bool


class StepExpect(FrozenModel):
    """What a step's final response must show; the step fails at the first unmet one."""

    status: list[Annotated[str, AfterValidator(_check_status)]] = Field(
        default_factory=lambda: ["2xx", "3xx"], min_length=1)
    body_regex: Regex | None = None
    body_not_regex: Annotated[list[Regex], BeforeValidator(_as_list)] = Field(
        default_factory=list)
    # JSON path -> the value it must equal, or {exists: true|false}.
    json_checks: dict[JsonPathText, Any] = Field(default_factory=dict, alias="json")
    # Header name -> regex its value must match (a missing header fails).
    headers: dict[str, Regex] = Field(default_factory=dict)
    max_duration: PositiveDuration | None = None

    @field_validator("json_checks")
    @classmethod
    def _exists_form(cls, value: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for path, want in value.items():
            if isinstance(want, dict) and "exists" in want:
                out[path] = JsonExists.model_validate(want)
            else:
                out[path] = want
        return out

    def status_matches(self, status: int) -> bool:
        """Whether an HTTP status code satisfies `status`."""
        return status_in(status, self.status)


class ExtractRule(FrozenModel):
    """Where a step takes a variable from: exactly one source."""

    # The first group of the first match (the whole match without a group).
    body_regex: Regex | None = None
    json_path: JsonPathText | None = Field(default=None, alias="json")
    header: str | None = None
    cookie: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ExtractRule:
        given = [key for key, value in (("body_regex", self.body_regex),
                                        ("json", self.json_path), ("header", self.header),
                                        ("cookie", self.cookie)) if value is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of body_regex, json, header or cookie"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class FlowStepSpec(FrozenModel):
    """One step of a flow: a request, what its response must show, what to take from it."""

    name: Name
    request: FlowRequest = Field(default_factory=FlowRequest)
    expect: StepExpect = Field(default_factory=StepExpect)
    extract: dict[VariableName, ExtractRule] = Field(default_factory=dict)
    # The step's own deadline, inside the probe's timeout (default: what is left of it).
    timeout: PositiveDuration | None = None


class FlowOptions(FrozenModel):
    """Options of a `flow` probe: steps run in order with one cookie jar."""

    variables: dict[VariableName, str] = Field(default_factory=dict)
    secrets: dict[VariableName, SecretSource] = Field(default_factory=dict)
    steps: list[FlowStepSpec] = Field(min_length=1, max_length=MAX_FLOW_STEPS)
    # Sent with every step (a step's own headers win).
    headers: dict[str, TemplateText] = Field(default_factory=dict)
    tls: TlsClientOptions | None = None
    ip_family: IpFamily | None = None

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        return HttpOptions.check_headers(value)


_OPTION_MODELS: dict[str, type[FrozenModel]] = {
    "http": HttpOptions, "tcp": TcpOptions, "dns": DnsOptions,
    "icmp": IcmpOptions, "tls": TlsOptions, "grpc": GrpcOptions, "flow": FlowOptions,
}


_DEFAULT_OPTIONS: dict[str, FrozenModel] = {}


def _default_options(kind: str) -> FrozenModel:
    options = _DEFAULT_OPTIONS.get(kind)
    if options is None:
        options = _DEFAULT_OPTIONS[kind] = _OPTION_MODELS[kind]()
    return options


# --------------------------------------------------------------------------- probes


class ProbeSpec(FrozenModel):
    """One probe definition, with interval, timeout and confirm_delay resolved (seconds)."""

    name: Name
    # Both become label values at the collector, which refuses longer ones (its default
    # limits.max_label_value_length and max_target_length): a valid config never is.
    service: str = Field("", max_length=MAX_LABEL_LENGTH)
    kind: ProbeKind
    target: str = Field(max_length=MAX_TARGET_LENGTH)
    # 0.0 until resolved from `defaults` by AgentConfig; always > 0 afterwards.
    interval: Interval = 0.0
    timeout: PositiveDuration = 0.0
    confirm_delay: PositiveDuration = 0.0
    all_addresses: bool = False
    labels: Labels = Field(default_factory=dict)
    http: HttpOptions | None = None
    tcp: TcpOptions | None = None
    dns: DnsOptions | None = None
    icmp: IcmpOptions | None = None
    tls: TlsOptions | None = None
    grpc: GrpcOptions | None = None
    flow: FlowOptions | None = None
    trace: TraceOptions | None = None

    # Which of interval/timeout/confirm_delay the file set on the probe itself.
    _explicit: frozenset[str] = PrivateAttr(default=frozenset())

    @field_validator("target")
    @classmethod
    def _target(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind in {"http", "flow"}:
            return _check_url(value)
        if kind in {"tcp", "tls", "grpc"}:
            return check_host_port(value)
        if kind == "dns":
            return _check_dns_name(value)
        if kind == "icmp":
            return _check_host(value)
        return value

    @field_validator(*PROBE_KINDS)
    @classmethod
    def _own_kind_only(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("kind")
        if value is not None and kind is not None and kind != info.field_name:
            raise ValueError(
                f"{info.field_name} options do not apply to a {kind} probe "
                f"(its options go under '{kind}:')")
        return value

    @field_validator("trace")
    @classmethod
    def _trace_kind(cls, value: TraceOptions | None,
                    info: ValidationInfo) -> TraceOptions | None:
        kind = info.data.get("kind")
        if value is not None and kind is not None and kind not in TRACE_KINDS:
            raise ValueError(f"trace applies to probes with a host target "
                             f"({', '.join(sorted(TRACE_KINDS))}), not {kind}")
        return value

    @field_validator("all_addresses")
    @classmethod
    def _all_addresses(cls, value: bool, info: ValidationInfo) -> bool:
        kind = info.data.get("kind")
        if value and kind is not None and kind not in {"http", "tcp"}:
            raise ValueError(f"all_addresses applies to http and tcp probes, not {kind}")
        return value

    @model_validator(mode="after")
    def _own_options(self) -> ProbeSpec:
        if getattr(self, self.kind) is None:
            # Frozen, so every probe without options can share one default instance.
            object.__setattr__(self, self.kind, _default_options(self.kind))
        return self

    @property
    def options(self) -> Any:
        """The options of this probe's own kind (never None)."""
        return getattr(self, self.kind)

    def same_probe(self, other: ProbeSpec) -> bool:
        """Whether `other` defines exactly this probe (timing included)."""
        return self.model_dump() == other.model_dump()


# --------------------------------------------------------------------------- sections


class ProbeDefaults(FrozenModel):
    """Values a probe takes when it does not set them itself."""

    interval: Interval = 30.0
    timeout: PositiveDuration = 5.0
    # None: the smaller of 1s and a tenth of each probe's interval.
    confirm_delay: PositiveDuration | None = None


def resolve_probe_timing(probe: ProbeSpec, defaults: ProbeDefaults) -> None:
    """Fill the probe's interval, timeout and confirm_delay from `defaults` (in place).

    Only for a probe just validated and not yet shared (agent.yaml's, a pushed set's).
    """
    explicit = frozenset(key for key in ("interval", "timeout", "confirm_delay")
                         if key in probe.model_fields_set)
    interval = probe.interval if "interval" in explicit else defaults.interval
    timeout = probe.timeout if "timeout" in explicit else defaults.timeout
    if "confirm_delay" in explicit:
        confirm_delay = probe.confirm_delay
    elif defaults.confirm_delay is not None:
        confirm_delay = defaults.confirm_delay
    else:
        confirm_delay = min(1.0, interval / 10)
    # Set in place: the probes are not shared yet, and copying ten thousand of them
    # would only fragment the agent's memory.
    object.__setattr__(probe, "interval", interval)
    object.__setattr__(probe, "timeout", timeout)
    object.__setattr__(probe, "confirm_delay", confirm_delay)
    probe._explicit = explicit  # noqa: SLF001 - our own model


class SchedulerSettings(FrozenModel):
    """How probes are run: concurrency bound and shutdown grace period."""

    max_concurrent: int = Field(default=512, ge=1, le=100_000)
    # On SIGTERM: how long to flush unacknowledged results before exiting.
    grace_period: Duration = 5.0
    # Confirm failures with a re-probe (turn off only for benchmarks).
    confirm_failures: bool = True


class StreamSettings(FrozenModel):
    """Batching and reconnection of the result streams."""

    max_batch_results: int = Field(default=500, ge=1, le=100_000)
    # A batch waits at most this long for more results before it is sent.
    linger: Duration = 0.05
    backoff_initial: PositiveDuration = 0.2
    backoff_max: PositiveDuration = 10.0
    # A call with nothing heard back for this long is considered dead and reconnected.
    ack_timeout: PositiveDuration = 30.0


class BufferSettings(FrozenModel):
    """The buffer of results not yet acknowledged by every collector (agent/spool.py).

    Held in memory and, with `disk` (the default), first committed to the state file in
    `agent.state_dir`, so that a restart (even `kill -9`) resends them with the same epoch.
    Beyond either bound the oldest results are dropped and counted.
    """

    max_results: int = Field(default=100_000, ge=1, le=100_000_000)
    disk: bool = True
    max_bytes: ByteSize = Field(default=256 << 20, ge=1 << 20)
    # normal: survives any crash of the agent, a power cut may lose the last few seconds;
    # full: an fsync per commit, a power cut loses nothing that was committed.
    sync: Literal["normal", "full"] = "normal"


class MetricsSettings(FrozenModel):
    """The agent's own Prometheus endpoint."""

    listen: ListenAddress


class AgentConfig(FrozenModel):
    """A whole agent.yaml."""

    agent: AgentIdentity
    collectors: list[CollectorTarget]
    defaults: ProbeDefaults = Field(default_factory=ProbeDefaults)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    buffer: BufferSettings = Field(default_factory=BufferSettings)
    metrics: MetricsSettings | None = None
    # Run the probe sets collectors push (agent/remote.py) besides `probes`.
    remote_config: bool = False
    probes: list[ProbeSpec] = Field(default_factory=list)
    # The number of shards the collectors' `shard` count from (default: highest + 1).
    shards: int | None = Field(default=None, ge=1, le=MAX_SHARDS)

    @field_validator("collectors")
    @classmethod
    def _some_collector(cls, value: list[CollectorTarget]) -> list[CollectorTarget]:
        if not value:
            raise ValueError("list at least one collector to send results to")
        return value

    @model_validator(mode="after")
    def _resolve_defaults(self) -> AgentConfig:
        for probe in self.probes:
            resolve_probe_timing(probe, self.defaults)
        return self

    def shortest_interval(self) -> float:
        """The shortest probe interval (defaults.interval without probes), seconds."""
        return min((p.interval for p in self.probes), default=self.defaults.interval)

    @property
    def shard_count(self) -> int | None:
        """The number of shards results are split into; None: not sharded."""
        shards = [c.shard for c in self.collectors if c.shard is not None]
        if not shards:
            return None
        return self.shards if self.shards is not None else max(shards) + 1


# --------------------------------------------------------------------------- cross checks


def _unique_names(config: AgentConfig) -> list[tuple[Path_, str]]:
    seen: dict[str, int] = {}
    found: list[tuple[Path_, str]] = []
    for index, probe in enumerate(config.probes):
        if probe.name in seen:
            first = seen[probe.name]
            found.append((("probes", index, "name"),
                          f"duplicate probe name {probe.name!r} (first at probes[{first}])"))
        else:
            seen[probe.name] = index
    return found


def _timeout_below_interval(config: AgentConfig) -> list[tuple[Path_, str]]:
    found: list[tuple[Path_, str]] = []
    for index, probe in enumerate(config.probes):
        if probe.timeout < probe.interval:
            continue
        explicit = probe._explicit  # noqa: SLF001 - our own model
        if "timeout" in explicit:
            where: Path_ = ("probes", index, "timeout")
        elif "interval" in explicit:
            where = ("probes", index, "interval")
        else:
            where = ("defaults", "timeout")
        found.append((where, (
            f"probe {probe.name!r}: timeout ({format_duration(probe.timeout)}) must be "
            f"shorter than the interval ({format_duration(probe.interval)})")))
    if not found and config.defaults.timeout >= config.defaults.interval:
        found.append((("defaults", "timeout"),
                      (f"timeout ({format_duration(config.defaults.timeout)}) must be shorter "
                       f"than the interval ({format_duration(config.defaults.interval)})")))
    return found


def _backoff_order(config: AgentConfig) -> list[tuple[Path_, str]]:
    if config.stream.backoff_initial > config.stream.backoff_max:
        return [(("stream", "backoff_initial"),
                 "backoff_initial must not be longer than backoff_max")]
    return []


def _shard_assignment(config: AgentConfig) -> list[tuple[Path_, str]]:
    """All collectors sharded or none; every shard in range and served by a collector."""
    collectors = config.collectors
    if all(c.shard is None for c in collectors):
        if config.shards is not None:
            return [(("shards",), ("shards is set but no collector has a shard: give each "
                                   "collector its shard (0 .. shards-1), or remove shards"))]
        return []
    found: list[tuple[Path_, str]] = []
    shards = config.shard_count
    assert shards is not None
    for index, collector in enumerate(collectors):
        if collector.shard is None:
            found.append((("collectors", index, "shard"), (
                f"collectors[{index}] ({collector.address}) has no shard: when one collector "
                "sets shard, every one must")))
        elif collector.shard >= shards:
            found.append((("collectors", index, "shard"), (
                f"collectors[{index}] ({collector.address}): shard {collector.shard} is out "
                f"of range: shards is {shards}, so shard must be 0 .. {shards - 1}")))
    served = {c.shard for c in collectors}
    missing = [shard for shard in range(shards) if shard not in served]
    if missing:
        where: Path_ = ("shards",) if config.shards is not None else ("collectors",)
        found.extend((where, (f"shard {shard} has no collector (shards: {shards}): every "
                              f"shard 0 .. {shards - 1} needs at least one")) for shard in missing)
    return found


def _probe_kind_limits(config: AgentConfig) -> list[tuple[Path_, str]]:
    """What a kind's options cannot do within its probe's timeout, or at all."""
    found: list[tuple[Path_, str]] = []
    for index, probe in enumerate(config.probes):
        icmp = probe.icmp
        if icmp is not None and (icmp.count - 1) * icmp.spacing >= probe.timeout:
            found.append((("probes", index, "icmp", "spacing"), (
                f"probe {probe.name!r}: {icmp.count} echo requests {format_duration(icmp.spacing)}"
                f" apart do not fit in the timeout ({format_duration(probe.timeout)}): lower "
                "count or spacing, or raise the timeout")))
        tls = probe.grpc.tls if probe.grpc is not None else None
        if tls is not None and tls.insecure_skip_verify:
            found.append((("probes", index, "grpc", "tls", "insecure_skip_verify"),
                          ("gRPC always verifies the server certificate: set ca_file to the "
                           "CA that signed it instead")))
    return found


def _flow_templates(step: FlowStepSpec) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(path inside the step, text) of every template of the step's own request."""
    request = step.request
    yield ("request", "url"), request.url
    for name, text in request.headers.items():
        yield ("request", "headers", name), text
    for name, text in request.query.items():
        yield ("request", "query", name), name
        yield ("request", "query", name), text
    if request.body is not None:
        yield ("request", "body"), request.body
    for text in _json_strings(request.json_body):
        yield ("request", "json"), text
    for name, text in (request.form or {}).items():
        yield ("request", "form", name), name
        yield ("request", "form", name), text


def _flow_step_problems(probe: ProbeSpec, flow: FlowOptions, number: int, known: set[str],
                        ) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """A step's references to undefined names, extractions over secrets, timeouts too long."""
    step = flow.steps[number]
    for path, text in _flow_templates(step):
        yield from (((*path,), (f"step {step.name!r}: ${{{name}}} is not defined: set it in "
                                "variables or secrets, or extract it in an earlier step"))
                    for name in Template.parse(text).names if name not in known)
    yield from ((("extract", name), f"step {step.name!r}: {name!r} would overwrite a secret")
                for name in step.extract if name in flow.secrets)
    if step.timeout is not None and step.timeout > probe.timeout:
        yield ("timeout",), (
            f"step {step.name!r}: timeout ({format_duration(step.timeout)}) exceeds the "
            f"probe's timeout ({format_duration(probe.timeout)})")
    if step.expect.max_duration is not None and step.expect.max_duration > probe.timeout:
        yield ("expect", "max_duration"), (
            f"step {step.name!r}: max_duration exceeds the probe's timeout "
            f"({format_duration(probe.timeout)}): it could never fail")


def _flow_references(config: AgentConfig) -> list[tuple[Path_, str]]:
    """Flows: every `${name}` defined before its step, names unique, timeouts that fit."""
    found: list[tuple[Path_, str]] = []
    for index, probe in enumerate(config.probes):
        flow = probe.flow
        if flow is None:
            continue
        at: Path_ = ("probes", index, "flow")
        found.extend(((*at, "secrets", name),
                      f"{name!r} is both a variable and a secret: rename one")
                     for name in sorted(flow.secrets.keys() & flow.variables.keys()))
        known = set(flow.variables) | set(flow.secrets)
        first_at: dict[str, int] = {}
        undefined_in_headers: set[tuple[str, str]] = set()
        for number, step in enumerate(flow.steps):
            where: Path_ = (*at, "steps", number)
            if step.name in first_at:
                found.append(((*where, "name"), (f"duplicate step name {step.name!r} (first "
                                                f"at steps[{first_at[step.name]}])")))
            first_at.setdefault(step.name, number)
            found.extend(((*where, *path), message)
                         for path, message in _flow_step_problems(probe, flow, number, known))
            found.extend(((*at, "headers", header), message) for header, message in
                         _flow_header_problems(flow, step, known, undefined_in_headers))
            known.update(step.extract)
    return found


def _flow_header_problems(flow: FlowOptions, step: FlowStepSpec, known: set[str],
                          reported: set[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(header, message): the flow's headers sent by `step` that use a name not yet defined.

    Each (header, name) is reported once, at the flow's `headers`, for the first step that
    sends it undefined (a step's own header of the same name replaces the flow's).
    """
    own = {key.lower() for key in step.request.headers}
    for header, text in flow.headers.items():
        if header.lower() in own:
            continue
        for name in Template.parse(text).names:
            if name not in known and (header, name) not in reported:
                reported.add((header, name))
                yield header, (f"header {header!r}: ${{{name}}} is not defined for step "
                               f"{step.name!r}: set it in variables or secrets, or extract "
                               "it in an earlier step")


def flow_secret_problems(config: AgentConfig) -> list[tuple[Path_, str]]:
    """Flow secrets that cannot be read here (a missing file, an unset variable).

    Unlike other files (checked when the agent starts), `probenet check` reports these:
    a flow without its credential fails every run at its login step, which would look like
    an outage of the target.
    """
    found: list[tuple[Path_, str]] = []
    for index, probe in enumerate(config.probes):
        if probe.flow is None:
            continue
        for name, source in probe.flow.secrets.items():
            where: Path_ = ("probes", index, "flow", "secrets", name)
            problem = secret_problem(source)
            if problem is not None:
                found.append(((*where, "file" if source.file is not None else "env"),
                              f"secret {name!r}: {problem}"))
    return found


def read_secret(source: SecretSource) -> str:
    """The secret's value (a file's text without surrounding whitespace); ValueError."""
    if source.env is not None:
        value = os.environ.get(source.env)
        if value is None:
            raise ValueError(f"environment variable {source.env} is not set")
        return value
    assert source.file is not None
    try:
        return Path(source.file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {source.file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {source.file}: not UTF-8 text") from None


def secret_problem(source: SecretSource) -> str | None:
    """Why the secret cannot be read, or None (the value itself is never returned)."""
    try:
        value = read_secret(source)
    except ValueError as exc:
        return str(exc)
    return None if value else "the secret is empty"


# The checks that concern one probe at a time (agent/remote.py runs them on each pushed
# probe, with the pushed set's defaults).
PROBE_CHECKS: tuple[CrossCheck, ...] = (_timeout_below_interval, _probe_kind_limits,
                                        _flow_references)
CHECKS: tuple[CrossCheck, ...] = (_unique_names, _timeout_below_interval, _backoff_order,
                                  _shard_assignment, _probe_kind_limits, _flow_references,
                                  flow_secret_problems)


def load_config(path: str | Path, *, checks: Sequence[CrossCheck] = ()) -> AgentConfig:
    """Read and validate an agent.yaml; raise ConfigError with every `file:line:col` issue.

    `checks` run after the config's own (the agent adds its probe registry's
    `probes.unavailable_kinds`, which this module cannot import: the probes import it).
    """
    return load_model(AgentConfig, path, checks=(*CHECKS, *checks))


def parse_config(text: str, file: str = "<string>", *,
                 checks: Sequence[CrossCheck] = ()) -> AgentConfig:
    """Validate agent.yaml text (tests, generated configs); same checks as `load_config`."""
    return load_text(AgentConfig, text, file, checks=(*CHECKS, *checks))
