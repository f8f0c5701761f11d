"""The /metrics page rendered by `MetricsPage`, against prometheus_client's rendering of the same
families (`reference_registry`): a real Classifier, a real LatestDetails fed wire bytes, every
probe kind, awkward label values and values; parsed back and compared series by series, in
the text format and in OpenMetrics; streamed in chunks; checked by promtool."""

from __future__ import annotations

import asyncio
import gc
import gzip
import itertools
import math
import subprocess
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse
from prometheus_client.utils import floatToGoString

from probenet.collector import details, exposition
from probenet.collector.config import MetricsConfig, parse_config
from probenet.collector.exposition import ExpositionFormat, MetricsPage, gzip_chunks
from probenet.collector.metrics import (
    AGENT_IMPAIRED,
    AGENT_UP,
    MONITORING_DEGRADED,
    OUTAGE_ACTIVE,
    PAIR_LABELS,
    PROBE_FAILURES,
    REGION_ISOLATED,
    REGION_UP,
    TARGET_FLAPPING,
    TARGET_STATE,
    FailureCounts,
)
from probenet.configfile import ConfigError
from probenet.v1 import probenet_pb2 as pb
from support.details_fleet import DetailsFleet
from support.system import need_binary

EXPIRY = 1_900_000_000
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
# Label values prometheus_client must escape, and text it must pass through untouched.
AWKWARD = 'q"uote \\back\\slash new\nline ünïcödé 🚀 {brace}=,'
CLASSIFIER_SPECS = (REGION_UP, TARGET_STATE, OUTAGE_ACTIVE, TARGET_FLAPPING, AGENT_UP,
                    AGENT_IMPAIRED, REGION_ISOLATED, MONITORING_DEGRADED, PROBE_FAILURES)
CLASSIFIER_FAMILIES = {spec.name for spec in CLASSIFIER_SPECS}  # as parsers name families
CLASSIFIER_SAMPLES = {spec.sample_name for spec in CLASSIFIER_SPECS}
KIND_FAMILIES = {
    "probe_dns_lookup_time_seconds", "probe_http_status_code", "probe_http_duration_seconds",
    "probe_http_version", "probe_http_redirects", "probe_http_content_length",
    "probe_http_ssl", "probe_ssl_earliest_cert_expiry", "probe_tls_version_info",
    "probe_tls_cipher_info", "probe_dns_duration_seconds", "probe_dns_answer_rrs",
    "probe_dns_authority_rrs", "probe_dns_additional_rrs", "probe_icmp_duration_seconds",
    "probenet_icmp_packet_loss_ratio", "probenet_icmp_rtt_seconds",
    "probe_grpc_healthcheck_response"}


def phases(**seconds: float) -> list[pb.PhaseDuration]:
    return [pb.PhaseDuration(name=name, seconds=value) for name, value in seconds.items()]


def result(probe: str, kind: str, *, target: str | None = None, success: bool = True,
           status_code: int = 0, duration: float = 0.5, timing: dict[str, float] | None = None,
           **oneof: Any) -> pb.ProbeResult:
    return pb.ProbeResult(
        seq=1, probe=probe, target=target or f"{kind}.example:443", kind=kind, success=success,
        duration_seconds=duration, status_code=status_code, interval_ms=10_000,
        phases=phases(**(timing or {})), **oneof)


HTTP_TIMING = {"resolve": 0.01, "connect": 0.02, "tls": 0.03, "processing": 0.04,
               "transfer": 0.05}
HTTPS = result("web", "http", target=f"https://{AWKWARD}/", status_code=200, timing=HTTP_TIMING,
               http=pb.HttpDetails(http_version="HTTP/2", redirects=2, content_length=1234,
                                   tls=pb.TlsFacts(earliest_cert_expiry=EXPIRY,
                                                   version=f"TLS 1.3 {AWKWARD}",
                                                   cipher="TLS_AES_128_GCM_SHA256")))
EVERY_KIND = [
    HTTPS,
    result("plain", "http", status_code=301, timing={"resolve": 0.0, "connect": 0.1},
           http=pb.HttpDetails(http_version="1.1")),
    result("down", "http", success=False, timing={"connect": 0.3}),  # no details, no resolve
    result("bare", "http", success=False),  # nothing at all: the status code only
    result("ns", "dns", timing={"resolve": 0.001, "request": 0.02, "connect": 0.0},
           dns=pb.DnsDetails(answer_rrs=2, authority_rrs=1, additional_rrs=3, rcode="NOERROR")),
    result("ping", "icmp", timing={"resolve": 0.002, "setup": 0.0001, "rtt": 0.45},
           icmp=pb.IcmpDetails(sent=4, received=3, rtt_min_seconds=0.01, rtt_avg_seconds=0.02,
                               rtt_max_seconds=0.04, rtt_stddev_seconds=0.005)),
    result("lost", "icmp", success=False, timing={"resolve": 0.0, "rtt": 0.9},
           icmp=pb.IcmpDetails(sent=3, received=0)),
    result("odd-icmp", "icmp", icmp=pb.IcmpDetails(sent=1, received=5,  # more than sent
                                                   rtt_avg_seconds=float("inf"))),
    result("cert", "tls", timing={"resolve": 0.003, "connect": 0.01, "tls": 0.02},
           tls=pb.TlsDetails(tls=pb.TlsFacts(earliest_cert_expiry=EXPIRY + 5,
                                             version="TLS 1.2", cipher="ECDHE-RSA-AES"))),
    result("health", "grpc", success=False, timing={"resolve": 0.0, "connect": 0.01},
           grpc=pb.GrpcDetails(serving_status="NOT_SERVING")),
    result("edge", "tcp", timing={"resolve": 0.004, "connect": 0.01}),  # resolve only
    result("quiet", "tcp"),  # nothing kind-specific: no per-kind series
    # Kinds and details that do not match: exported as prometheus_client's collector does.
    result("mixed", "grpc", tls=pb.TlsDetails(tls=pb.TlsFacts(version="TLS 1.3"))),
    result("twice", "dns", timing={"resolve": 0.5},
           dns=pb.DnsDetails(answer_rrs=1)),
]
AGENTS = (("fra-1", "eu-central"), ("iad-1", "us-east"), (f"odd-{AWKWARD}", f"r-{AWKWARD}"))


class Fleet(DetailsFleet):
    """DetailsFleet with failure counts and the page over them."""

    def __init__(self, settings: MetricsConfig | None = None, *,
                 registered: tuple[tuple[str, str], ...] = (("never-1", "ap-south"),),
                 step_s: float = exposition.STEP_S) -> None:
        super().__init__()
        self.failures = FailureCounts()
        self.registry = CollectorRegistry()
        Counter("probenet_test_things", "A registry metric after the page.",
                registry=self.registry).inc(3)
        self.page = MetricsPage(self.registry, classifier=self.classifier,
                                details=self.details, failures=self.failures,
                                registered_agents=registered, settings=settings,
                                step_s=step_s)

    def send(self, agent: str, region: str, *messages: pb.ProbeResult) -> None:
        super().send(agent, region, *messages)
        for m in messages:
            if not m.success:
                self.failures.add(m.probe, region, "connect", f"refused {AWKWARD}")

    def reference(self, *, openmetrics: bool = False) -> bytes:
        encode = om_exposition.generate_latest if openmetrics else generate_latest
        return encode(self.page.reference_registry())


def every_kind_fleet(settings: MetricsConfig | None = None) -> Fleet:
    fleet = Fleet(settings)
    for agent, region in AGENTS:
        fleet.send(agent, region, *EVERY_KIND)
    # A second round: down in two regions (verdicts, outages, failure counts move).
    for agent, region in AGENTS[:2]:
        fleet.send(agent, region, result("web", "http", target=HTTPS.target, success=False,
                                         duration=1e300, status_code=503,
                                         timing={"connect": float("nan")}))
    fleet.send("fra-1", "eu-central", result("slow", "tcp", duration=float("inf")))
    return fleet


def series(text: str, *, openmetrics: bool = False) -> dict[tuple[str, tuple], float]:
    """Every sample by (name, labels); NaN made comparable."""
    found: dict[tuple[str, tuple], float] = {}
    parse = om_parse if openmetrics else text_parse
    for family in parse(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"duplicate series {key}"
            found[key] = "NaN" if math.isnan(sample.value) else sample.value
    return found


def headers(text: str, *, openmetrics: bool = False) -> dict[str, tuple[str, str]]:
    """Every family's (type, help), by name."""
    parse = om_parse if openmetrics else text_parse
    return {f.name: (f.type, f.documentation) for f in parse(text)}


# -- the page is the reference -------------------------------------------------------------


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_page_has_exactly_the_reference_series(openmetrics):
    fleet = every_kind_fleet()
    page = fleet.page.render(openmetrics=openmetrics).decode()
    reference = fleet.reference(openmetrics=openmetrics).decode()
    mine, theirs = series(page, openmetrics=openmetrics), series(reference,
                                                                 openmetrics=openmetrics)
    assert mine == theirs
    assert headers(page, openmetrics=openmetrics) == headers(reference, openmetrics=openmetrics)
    names = {name for name, _ in mine}
    assert names >= KIND_FAMILIES  # every per-kind family is exercised
    assert names >= {"probe_success", "probe_duration_seconds", "probenet_test_things_total"}
    assert names >= CLASSIFIER_SAMPLES - {"probenet_region_isolated"}
    # Awkward values went through escaping and back.
    assert any(dict(labels).get("target") == f"https://{AWKWARD}/" for _, labels in mine)
    assert any(dict(labels).get("reason") == f"refused {AWKWARD}" for _, labels in mine)
    assert mine["probe_duration_seconds", key_of(HTTPS, "fra-1", "eu-central")] == 1e300


def key_of(message: pb.ProbeResult, agent: str, region: str, **extra: str) -> tuple:
    labels = {"probe": message.probe, "target": message.target, "kind": message.kind,
              "region": region, "agent": agent, **extra}
    return tuple(sorted(labels.items()))


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_help_and_type_lines_are_prometheus_clients(openmetrics):
    fleet = every_kind_fleet()
    page = fleet.page.render(openmetrics=openmetrics).decode()
    reference = fleet.reference(openmetrics=openmetrics).decode()
    assert sorted(line for line in page.splitlines() if line.startswith("#")) == sorted(
        line for line in reference.splitlines() if line.startswith("#"))
    if openmetrics:
        assert page.endswith("# EOF\n")
        assert page.count("# EOF") == 1
        assert "# TYPE probenet_probe_failures counter" in page
    else:
        assert "# TYPE probenet_probe_failures_total counter" in page


def test_empty_families_are_left_out_as_before():
    fleet = Fleet(registered=())
    page = fleet.page.render().decode()
    assert headers(page) == headers(fleet.reference().decode())
    names = set(headers(page))
    assert not names & KIND_FAMILIES  # no pair: no per-kind family at all
    assert names >= CLASSIFIER_FAMILIES  # the classifier's are there, empty
    fleet.send("fra-1", "eu", result("quiet", "tcp"))
    names = set(headers(fleet.page.render().decode()))
    assert not names & KIND_FAMILIES
    assert {"probe_success", "probe_duration_seconds"} <= names


@pytest.mark.parametrize("accept", [
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=underscores",
    "text/plain;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
])
def test_escaping_schemes_as_prometheus_client_negotiates_them(accept):
    fleet = every_kind_fleet()
    fmt = ExpositionFormat.negotiate(accept)
    encoder, content_type = exposition.choose_encoder(accept)
    assert fmt.content_type == content_type
    page = fleet.page.render(fmt=fmt).decode()
    reference = encoder(fleet.page.reference_registry()).decode()
    assert series(page, openmetrics=fmt.openmetrics) == series(
        reference, openmetrics=fmt.openmetrics)
    if fmt.escaping == "dots":  # names are escaped too, as prometheus_client escapes them
        assert "probe__success{" in page
        assert 'serving__status="SERVING"' in page


@given(st.text(max_size=40))
def test_label_values_are_escaped_as_prometheus_client_escapes_them(value):
    assert exposition.escape_label_value(value) == om_exposition._escape(
        value, om_exposition.ALLOWUTF8, om_exposition._is_legacy_labelname_rune)


@given(st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
                 st.booleans()))
def test_values_parse_to_what_prometheus_client_writes(value):
    mine, theirs = exposition.format_value(value), floatToGoString(value)
    if math.isnan(float(theirs)):
        assert mine == "NaN"
    else:
        assert float(mine) == float(theirs)
        assert mine in {"+Inf", "-Inf"} or math.isfinite(float(mine))


def test_label_names_written_literally_need_no_escaping():
    # The page writes these label names as they are; every escaping scheme leaves them so.
    literal = {*PAIR_LABELS, "probe", "region", "service", "state", "scope", "agent", "phase",
               "reason", "version", "cipher", "stat"}
    for scheme in ("allow-utf-8", "underscores", "dots", "values"):
        for name in literal:
            assert om_exposition.escape_label_name(name, scheme) == name, (scheme, name)


# -- streaming -------------------------------------------------------------------------------


def many_pairs_fleet(agents: int = 4, probes: int = 600) -> Fleet:
    fleet = Fleet()
    for a in range(agents):
        fleet.send(f"agent-{a}", f"region-{a % 3}", *(
            result(f"probe-{i}", "http", target=f"https://t{i}.example/", status_code=200,
                   timing=HTTP_TIMING, http=HTTPS.http) for i in range(probes)))
    return fleet


async def collect(page: MetricsPage, **kwargs: Any) -> list[bytes]:
    return [chunk async for chunk in page.chunks(**kwargs)]


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
async def test_streamed_chunks_are_the_rendered_page(openmetrics):
    fleet = many_pairs_fleet()
    chunks = await collect(fleet.page, openmetrics=openmetrics)
    assert len(chunks) > 10
    # Bounded chunks: one buffer's worth plus at most one slice of lines.
    assert max(len(chunk) for chunk in chunks[:-1]) < 2 * exposition.CHUNK_CHARS
    # Byte for byte the rendered page (which is the reference's series, tests above).
    assert b"".join(chunks) == fleet.page.render(openmetrics=openmetrics)


async def test_the_event_loop_runs_between_chunks():
    fleet = many_pairs_fleet()
    turns = 0
    done = asyncio.Event()

    async def other_work() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            await asyncio.sleep(0)

    worker = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    turns_at_chunk = [turns async for _ in fleet.page.chunks()]
    done.set()
    await worker
    # Other work ran between (nearly) every two chunks, not only before or after the page.
    advanced = sum(1 for a, b in itertools.pairwise(turns_at_chunk) if b > a)
    assert advanced >= len(turns_at_chunk) - 2
    assert len(turns_at_chunk) > 10


async def test_a_scrape_given_up_midway_leaves_the_store_consistent():
    fleet = many_pairs_fleet(agents=2, probes=300)  # a page of several chunks
    ghost = EVERY_KIND[5]
    fleet.details.update("ghost-1", {ghost.probe: ghost.SerializeToString()})  # no such pair
    stream = fleet.page.chunks()
    first = await anext(stream)
    assert len(first) >= exposition.CHUNK_CHARS  # a chunk of the page, not its end
    await stream.aclose()
    assert fleet.details._scrapes == []  # no longer following writes
    assert fleet.details.kept("ghost-1", ghost.probe) is not None  # not pruned: unfinished
    page = fleet.page.render()
    assert fleet.details.kept("ghost-1", ghost.probe) is None  # a whole scrape prunes
    assert page == fleet.page.render()
    assert series(page.decode()) == series(fleet.reference().decode())


async def test_promtool_check_metrics_is_clean_on_the_streamed_page():
    promtool = need_binary("promtool", "prometheus")
    fleet = every_kind_fleet()
    page = b"".join(await collect(fleet.page))
    checked = await asyncio.to_thread(subprocess.run, [promtool, "check", "metrics"],
                                      input=page, capture_output=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.decode().strip() == "", checked.stdout.decode()


@pytest.mark.parametrize("batch_bytes", [exposition.GZIP_BATCH_BYTES, 64 * 1024, 1])
async def test_gzip_chunks_decompress_to_the_page(batch_bytes):
    fleet = many_pairs_fleet(agents=2)
    pieces = [c async for c in gzip_chunks(fleet.page.chunks(), batch_bytes=batch_bytes)]
    compressed = b"".join(pieces)
    page = fleet.page.render()
    assert gzip.decompress(compressed) == page
    assert len(compressed) < len(page) / 5
    if batch_bytes < len(page) // 4:
        assert len(pieces) > 3  # compressed and sent as the page renders


# -- the details store and the label cache ---------------------------------------------------


def test_a_scrape_decodes_each_result_once_and_keeps_packed_facts():
    fleet = every_kind_fleet()
    first = fleet.page.render()
    kept = fleet.details.kept("fra-1", "ns")
    assert not isinstance(kept, bytes)
    assert details.unpack(kept) == details.facts_of(EVERY_KIND[4])
    assert fleet.page.render() == first
    assert fleet.details.kept("fra-1", "ns") is kept  # not decoded again


def test_kept_facts_and_label_text_are_not_tracked_by_the_garbage_collector():
    # A scrape that left a tracked object per pair behind would set off a full collection
    # (hundreds of ms at 100,000 pairs) at each scrape.
    fleet = many_pairs_fleet(agents=4, probes=500)
    fleet.page.render()
    for _ in range(3):
        gc.collect()
    before = len(gc.get_objects())
    fleet.page.render()
    gc.collect(0)
    gc.collect(1)  # what survives a young collection now would grow the old generation
    assert len(gc.get_objects()) - before < 100  # for 2,000 pairs
    kept = fleet.details.kept("agent-0", "probe-1")
    assert isinstance(kept, tuple)
    assert not gc.is_tracked(kept)


def test_details_of_pairs_gone_are_dropped_and_writes_during_a_scrape_kept():
    fleet = Fleet(step_s=0)  # a step per slice of work
    ping = EVERY_KIND[5]
    fleet.send("fra-1", "eu", ping, HTTPS)
    fleet.details.update("ghost-1", {ping.probe: ping.SerializeToString()})  # no such pair
    steps = fleet.page._steps(ExpositionFormat.text())
    next(steps)
    next(steps)  # the scrape has started: pairs snapshotted
    fleet.send("iad-1", "us", ping)  # a new agent's pair, written while the scrape runs
    list(steps)
    assert fleet.details.kept("ghost-1", ping.probe) is None
    assert fleet.details.kept("iad-1", ping.probe) is not None
    assert len(fleet.details) == 3
    assert fleet.details._scrapes == []


def test_labels_follow_a_pair_that_moves_or_changes_target():
    fleet = Fleet()
    cert = EVERY_KIND[8]
    fleet.send("fra-1", "eu", cert)
    fleet.page.render()
    fleet.classifier.agent_connected("fra-1", "eu-west", {}, 10.0, fleet.now + 1)
    moved = series(fleet.page.render().decode())
    assert moved == series(fleet.reference().decode())
    assert moved["probe_ssl_earliest_cert_expiry", key_of(cert, "fra-1", "eu-west")] == (
        EXPIRY + 5)
    assert ("probe_success", key_of(cert, "fra-1", "eu")) not in moved
    # The classifier takes a new target on its slow path (here: a first failure, then up).
    fleet.send("fra-1", "eu-west", result("cert", "tls", target="other:443", success=False))
    fleet.send("fra-1", "eu-west", result("cert", "tls", target="other:443"))
    (pair,) = fleet.classifier.samples()
    assert pair.target == "other:443"
    changed = series(fleet.page.render().decode())
    assert changed == series(fleet.reference().decode())
    assert ("probe_success", (("agent", "fra-1"), ("kind", "tls"), ("probe", "cert"),
                              ("region", "eu-west"), ("target", "other:443"))) in changed


def test_undecodable_bytes_give_no_series_and_the_page_goes_on():
    fleet = Fleet()
    fleet.send("fra-1", "eu", EVERY_KIND[4], EVERY_KIND[5])
    fleet.details.update("fra-1", {"ns": b"\xff\xff garbage"})
    names = set(headers(fleet.page.render().decode()))
    assert "probe_dns_answer_rrs" not in names
    assert "probenet_icmp_packet_loss_ratio" in names
    assert len(fleet.details) == 1


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(("yaml", "success", "duration", "kinds"), [
    ("", True, True, True),
    ("metrics: {per_agent: all, per_kind_details: false}", True, True, False),
    ("metrics: {per_agent: success}", True, False, False),
    ("metrics: {per_agent: success, per_kind_details: false}", True, False, False),
    ("metrics: {per_agent: none}", False, False, False),
])
def test_metrics_settings_choose_the_families(yaml, success, duration, kinds):
    settings = parse_config(yaml + "\n").metrics
    fleet = every_kind_fleet(settings)
    page = fleet.page.render().decode()
    names = set(headers(page))
    assert ("probe_success" in names) is success
    assert ("probe_duration_seconds" in names) is duration
    assert (names >= KIND_FAMILIES) is kinds
    assert not kinds or names >= KIND_FAMILIES
    assert kinds or not names & KIND_FAMILIES
    assert names | {"probenet_region_isolated"} >= CLASSIFIER_FAMILIES
    assert series(page) == series(fleet.reference().decode())


@pytest.mark.parametrize("per_agent", ["success", "none"])
def test_kind_details_without_all_pairs_is_a_config_error_naming_the_field(per_agent):
    with pytest.raises(ConfigError) as raised:
        parse_config(f"metrics:\n  per_agent: {per_agent}\n  per_kind_details: true\n",
                     "collector.yaml")
    (issue,) = raised.value.issues
    assert (issue.line, issue.col) == (3, 21)
    assert issue.message.startswith("metrics.per_kind_details: true needs per_agent: all")


def test_metrics_config_defaults_and_limits():
    config = parse_config("")
    assert config.metrics == MetricsConfig()
    assert (config.metrics.per_agent, config.metrics.kind_details) == ("all", True)
    assert config.metrics.max_failure_series == 50_000
    with pytest.raises(ConfigError, match=r"metrics\.per_agent"):
        parse_config("metrics: {per_agent: some}\n")
    with pytest.raises(ConfigError, match=r"metrics\.max_failure_series"):
        parse_config("metrics: {max_failure_series: 0}\n")
