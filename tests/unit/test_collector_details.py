"""Per-kind facts, the store of each pair's latest details, and the blackbox_exporter-compatible
families built from them at scrape time: a real Classifier joined with a real `LatestDetails`,
read back through a real prometheus_client registry and checked by promtool."""

from __future__ import annotations

import asyncio
import math
import subprocess
import tracemalloc
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from probenet.agent.config import ProbeSpec
from probenet.agent.probes import build_probe
from probenet.agent.probes.attempt import run_attempt
from probenet.agent.results import to_wire
from probenet.collector import details
from probenet.collector.details import KindDetailsMetrics, LatestDetails
from probenet.collector.metrics import PAIR_LABELS, ClassifierMetrics
from probenet.v1 import probenet_pb2 as pb
from support.certs import TestCA
from support.details_fleet import DetailsFleet
from support.system import need_binary

if TYPE_CHECKING:
    from prometheus_client.core import Metric

EXPIRY = 1_900_000_000


def result(kind: str, *, probe: str | None = None, success: bool = True, status_code: int = 0,
           phases: dict[str, float] | None = None, **oneof: Any) -> pb.ProbeResult:
    return pb.ProbeResult(
        seq=1, probe=probe or f"{kind}-probe", target=f"{kind}.example:443", kind=kind,
        success=success, duration_seconds=0.5, status_code=status_code,
        phases=[pb.PhaseDuration(name=n, seconds=s) for n, s in (phases or {}).items()],
        **oneof)


class Fleet(DetailsFleet):
    """The details store read through the prometheus_client collector."""

    def families(self) -> dict[str, Metric]:
        """One scrape of the per-kind families, by name."""
        return {family.name: family for family in
                KindDetailsMetrics(self.classifier, self.details).collect()}

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry()
        registry.register(KindDetailsMetrics(self.classifier, self.details))
        return registry


def registry_of(*messages: pb.ProbeResult) -> CollectorRegistry:
    fleet = Fleet()
    fleet.send("fra-1", "eu-central", *messages)
    return fleet.registry()


def labels(message: pb.ProbeResult, **extra: str) -> dict[str, str]:
    return {"probe": message.probe, "target": message.target, "kind": message.kind,
            "region": "eu-central", "agent": "fra-1", **extra}


HTTPS = result(
    "http", status_code=200,
    phases={"resolve": 0.01, "connect": 0.02, "tls": 0.03, "processing": 0.04,
            "transfer": 0.05},
    http=pb.HttpDetails(http_version="1.1", redirects=2, content_length=1234,
                        tls=pb.TlsFacts(earliest_cert_expiry=EXPIRY, version="TLS 1.3",
                                        cipher="TLS_AES_128_GCM_SHA256")))
DNS = result("dns", phases={"resolve": 0.001, "request": 0.02},
             dns=pb.DnsDetails(answer_rrs=2, authority_rrs=1, additional_rrs=3,
                               rcode="NOERROR"))
ICMP = result("icmp", phases={"resolve": 0.002, "setup": 0.0001, "rtt": 0.45},
              icmp=pb.IcmpDetails(sent=4, received=3, rtt_min_seconds=0.01,
                                  rtt_avg_seconds=0.02, rtt_max_seconds=0.04,
                                  rtt_stddev_seconds=0.005))
TLS = result("tls", phases={"resolve": 0.003, "connect": 0.01, "tls": 0.02},
             tls=pb.TlsDetails(tls=pb.TlsFacts(earliest_cert_expiry=EXPIRY + 5,
                                               version="TLS 1.2", cipher="ECDHE-RSA-AES")))
GRPC_NOT_SERVING = result("grpc", success=False, phases={"resolve": 0.0, "connect": 0.01},
                          grpc=pb.GrpcDetails(serving_status="NOT_SERVING"))


# --------------------------------------------------------------------------- facts_of


def test_nothing_kind_specific_gives_none():
    assert details.facts_of(result("tcp")) is None


def test_phases_without_details_are_kept():
    facts = details.facts_of(result("tcp", success=False, phases={"resolve": 0.2}))
    assert facts == details.ResultFacts((("resolve", 0.2),))


def test_objects_that_are_not_results_give_none():
    class Bare:
        probe = "p"

    assert details.facts_of(Bare()) is None


def test_http_facts_are_copied_out_of_the_message():
    facts = details.facts_of(HTTPS)
    assert isinstance(facts, details.HttpFacts)
    assert facts.http_version == 1.1
    assert (facts.redirects, facts.content_length) == (2, 1234)
    assert facts.tls == details.TlsSummary(EXPIRY, "TLS 1.3", "TLS_AES_128_GCM_SHA256")
    assert facts.phase("tls") == 0.03
    assert not hasattr(facts, "__dict__")  # slotted: cheap to keep per pair


def test_plain_http_has_no_tls():
    facts = details.facts_of(result("http", http=pb.HttpDetails(http_version="HTTP/2")))
    assert isinstance(facts, details.HttpFacts)
    assert (facts.http_version, facts.tls) == (2.0, None)


def test_unknown_phase_names_and_statuses_are_dropped():
    facts = details.facts_of(result(
        "grpc", phases={"resolve": 0.1, "evil-phase": 1.0, "connect": float("nan")},
        grpc=pb.GrpcDetails(serving_status="x" * 500)))
    assert isinstance(facts, details.GrpcFacts)
    assert facts.phases == (("resolve", 0.1),)
    assert facts.serving_status == "UNKNOWN"


def test_long_tls_strings_are_cut():
    facts = details.facts_of(result("tls", tls=pb.TlsDetails(
        tls=pb.TlsFacts(version="v" * 1000, cipher="c" * 1000))))
    assert isinstance(facts, details.TlsProbeFacts)
    assert len(facts.tls.version) == len(facts.tls.cipher) == 64


# --------------------------------------------------------------------------- families


def test_http_families():
    registry = registry_of(HTTPS)
    get = registry.get_sample_value
    assert get("probe_http_status_code", labels(HTTPS)) == 200
    for phase, seconds in (("resolve", 0.01), ("connect", 0.02), ("tls", 0.03),
                           ("processing", 0.04), ("transfer", 0.05)):
        assert get("probe_http_duration_seconds", labels(HTTPS, phase=phase)) == seconds
    assert get("probe_http_version", labels(HTTPS)) == 1.1
    assert get("probe_http_redirects", labels(HTTPS)) == 2
    assert get("probe_http_content_length", labels(HTTPS)) == 1234
    assert get("probe_http_ssl", labels(HTTPS)) == 1
    assert get("probe_ssl_earliest_cert_expiry", labels(HTTPS)) == EXPIRY
    assert get("probe_tls_version_info", labels(HTTPS, version="TLS 1.3")) == 1
    assert get("probe_tls_cipher_info", labels(HTTPS, cipher="TLS_AES_128_GCM_SHA256")) == 1
    assert get("probe_dns_lookup_time_seconds", labels(HTTPS)) == 0.01


def test_failed_http_without_response_still_reports_status_and_phases():
    failed = result("http", success=False, phases={"resolve": 0.01, "connect": 0.3})
    registry = registry_of(failed)
    get = registry.get_sample_value
    assert get("probe_http_status_code", labels(failed)) == 0
    assert get("probe_http_duration_seconds", labels(failed, phase="connect")) == 0.3
    assert get("probe_http_duration_seconds", labels(failed, phase="transfer")) == 0
    assert get("probe_http_ssl", labels(failed)) is None  # unknown without details


def test_http_without_anything_reports_the_status_code_only():
    bare = result("http", success=False)
    registry = registry_of(bare)
    assert registry.get_sample_value("probe_http_status_code", labels(bare)) == 0
    assert registry.get_sample_value("probe_http_duration_seconds",
                                     labels(bare, phase="connect")) is None


def test_dns_families():
    registry = registry_of(DNS)
    get = registry.get_sample_value
    assert get("probe_dns_answer_rrs", labels(DNS)) == 2
    assert get("probe_dns_authority_rrs", labels(DNS)) == 1
    assert get("probe_dns_additional_rrs", labels(DNS)) == 3
    assert get("probe_dns_duration_seconds", labels(DNS, phase="request")) == 0.02
    assert get("probe_dns_duration_seconds", labels(DNS, phase="connect")) == 0
    assert get("probe_dns_lookup_time_seconds", labels(DNS)) == 0.001


def test_icmp_families():
    registry = registry_of(ICMP)
    get = registry.get_sample_value
    assert get("probenet_icmp_packet_loss_ratio", labels(ICMP)) == 0.25
    for stat, seconds in (("min", 0.01), ("avg", 0.02), ("max", 0.04), ("stddev", 0.005)):
        assert get("probenet_icmp_rtt_seconds", labels(ICMP, stat=stat)) == seconds
    assert get("probe_icmp_duration_seconds", labels(ICMP, phase="resolve")) == 0.002
    assert get("probe_icmp_duration_seconds", labels(ICMP, phase="setup")) == 0.0001
    # The rtt phase is the mean round trip, as blackbox_exporter's is one round trip.
    assert get("probe_icmp_duration_seconds", labels(ICMP, phase="rtt")) == 0.02


def test_icmp_total_loss_has_no_rtt_stats():
    lost = result("icmp", success=False, phases={"resolve": 0.0, "setup": 0.0, "rtt": 0.9},
                  icmp=pb.IcmpDetails(sent=3, received=0))
    registry = registry_of(lost)
    assert registry.get_sample_value("probenet_icmp_packet_loss_ratio", labels(lost)) == 1
    assert registry.get_sample_value("probenet_icmp_rtt_seconds",
                                     labels(lost, stat="avg")) is None
    assert registry.get_sample_value("probe_icmp_duration_seconds",
                                     labels(lost, phase="rtt")) == 0


def test_tls_probe_families():
    registry = registry_of(TLS)
    get = registry.get_sample_value
    assert get("probe_ssl_earliest_cert_expiry", labels(TLS)) == EXPIRY + 5
    assert get("probe_tls_version_info", labels(TLS, version="TLS 1.2")) == 1
    assert get("probe_tls_cipher_info", labels(TLS, cipher="ECDHE-RSA-AES")) == 1
    assert get("probe_http_status_code", labels(TLS)) is None


def test_grpc_state_set():
    registry = registry_of(GRPC_NOT_SERVING)
    get = registry.get_sample_value
    values = {status: get("probe_grpc_healthcheck_response",
                          labels(GRPC_NOT_SERVING, serving_status=status))
              for status in ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")}
    assert values == {"UNKNOWN": 0, "SERVING": 0, "NOT_SERVING": 1, "SERVICE_UNKNOWN": 0}


def test_one_series_per_agent_and_no_empty_families():
    fleet = Fleet()
    assert fleet.families() == {}
    fleet.send("fra-1", "eu-central", ICMP)
    fleet.send("iad-1", "us-east", ICMP)
    families = fleet.families()
    loss = families["probenet_icmp_packet_loss_ratio"]
    assert sorted(s.labels["agent"] for s in loss.samples) == ["fra-1", "iad-1"]
    assert "probe_http_status_code" not in families


def test_results_without_details_yield_nothing_but_http():
    fleet = Fleet()
    fleet.send("fra-1", "eu-central", result("tcp"))
    assert fleet.families() == {}


# --------------------------------------------------------------------------- the store


def test_a_scrape_decodes_each_result_once_and_keeps_the_facts():
    fleet = Fleet()
    fleet.send("fra-1", "eu-central", DNS, TLS)
    first = generate_latest(fleet.registry())
    kept = fleet.details.kept("fra-1", DNS.probe)
    assert isinstance(kept, tuple)  # not bytes now: the facts, packed
    assert details.unpack(kept) == details.facts_of(DNS)
    assert details.unpack(fleet.details.kept("fra-1", TLS.probe)) == details.facts_of(TLS)
    assert generate_latest(fleet.registry()) == first
    assert fleet.details.kept("fra-1", DNS.probe) is kept  # not decoded again


@pytest.mark.parametrize("message", [HTTPS, DNS, ICMP, TLS, GRPC_NOT_SERVING,
                                     result("http", http=pb.HttpDetails()),
                                     result("tcp", phases={"resolve": 0.1, "connect": 0.2})])
def test_packed_facts_are_plain_tuples_that_unpack_to_the_facts(message):
    facts = details.facts_of(message)
    assert facts is not None
    packed = details.pack(facts)
    assert type(packed) is tuple
    assert details.unpack(packed) == facts
    assert type(details.unpack(packed)) is type(facts)
    for name in ("resolve", "connect", "tls", "rtt", "nothing"):
        assert details.packed_phase(packed, name) == facts.phase(name)
    # Flat: numbers, strings and None only, which the garbage collector stops tracking.
    assert all(isinstance(item, int | float | str | None) for item in packed)


def test_phases_are_kept_once_per_name_in_one_order():
    facts = details.facts_of(result("http", phases={"transfer": 0.5, "resolve": 0.1}))
    assert facts is not None
    assert facts.phases == (("resolve", 0.1), ("transfer", 0.5))
    twice = pb.ProbeResult(kind="dns", phases=[pb.PhaseDuration(name="request", seconds=1.0),
                                               pb.PhaseDuration(name="request", seconds=2.0)])
    facts = details.facts_of(twice)
    assert facts is not None
    assert facts.phases == (("request", 1.0),)  # the first of a name counts


def test_the_next_result_replaces_the_facts_even_without_details():
    fleet = Fleet()
    fleet.send("fra-1", "eu-central", DNS)
    registry = fleet.registry()
    assert registry.get_sample_value("probe_dns_answer_rrs", labels(DNS)) == 2
    fewer = result("dns", phases={"resolve": 0.001}, dns=pb.DnsDetails(answer_rrs=7))
    fleet.send("fra-1", "eu-central", fewer)
    assert registry.get_sample_value("probe_dns_answer_rrs", labels(DNS)) == 7
    fleet.send("fra-1", "eu-central", result("dns"))  # nothing kind-specific this time
    assert registry.get_sample_value("probe_dns_answer_rrs", labels(DNS)) is None
    assert len(fleet.details) == 0  # nothing to keep for the pair


def test_labels_come_from_the_classifier_at_scrape_time():
    fleet = Fleet()
    fleet.send("fra-1", "eu-central", TLS)
    registry = fleet.registry()
    assert registry.get_sample_value("probe_ssl_earliest_cert_expiry", labels(TLS)) == EXPIRY + 5
    # The agent comes back in another region: the pair moves, its details with it.
    fleet.classifier.agent_connected("fra-1", "eu-west", {}, 10.0, fleet.now + 1)
    assert registry.get_sample_value("probe_ssl_earliest_cert_expiry", labels(TLS)) is None
    moved = {**labels(TLS), "region": "eu-west"}
    assert registry.get_sample_value("probe_ssl_earliest_cert_expiry", moved) == EXPIRY + 5


def test_details_of_pairs_the_classifier_does_not_have_are_dropped_unexported():
    fleet = Fleet()
    fleet.send("fra-1", "eu-central", ICMP)
    # Entries without a pair: an agent the classifier never saw, a probe it never had.
    fleet.details.update("gone-1", {ICMP.probe: ICMP.SerializeToString()})
    fleet.details.update("fra-1", {"gone-probe": ICMP.SerializeToString()})
    assert len(fleet.details) == 3
    loss = fleet.families()["probenet_icmp_packet_loss_ratio"]
    assert [(s.labels["agent"], s.labels["probe"]) for s in loss.samples] == [
        ("fra-1", ICMP.probe)]
    assert len(fleet.details) == 1
    assert fleet.details.kept("gone-1", ICMP.probe) is None


def test_the_store_holds_one_entry_per_pair_however_many_results():
    fleet = Fleet()
    for _ in range(50):
        fleet.send("fra-1", "eu-central", HTTPS, DNS)
        fleet.send("iad-1", "us-east", DNS)
    assert len(fleet.details) == 3
    fleet.families()
    assert len(fleet.details) == 3


def test_every_agent_shares_one_string_per_probe_name():
    store = LatestDetails()
    wire = HTTPS.SerializeToString()
    agents, probes = 100, 200
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for agent in range(agents):
            # Names read from messages: a new string object for every agent.
            store.update(f"a{agent}", {f"probe-{i:05d}": wire for i in range(probes)})
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store) == agents * probes
    assert grown / (agents * probes) < 60  # a dict entry, not a dict entry and a name


def test_undecodable_bytes_give_no_series_and_the_scrape_goes_on():
    fleet = Fleet()
    fleet.send("fra-1", "eu-central", DNS, ICMP)
    fleet.details.update("fra-1", {DNS.probe: b"\xff\xff garbage"})
    families = fleet.families()
    assert "probe_dns_answer_rrs" not in families
    assert "probenet_icmp_packet_loss_ratio" in families
    assert len(fleet.details) == 1


@given(st.sampled_from(["http", "dns", "icmp", "tls", "grpc", "tcp"]),
       st.dictionaries(st.text(max_size=12), st.floats(allow_nan=True), max_size=6),
       st.text(max_size=80))
def test_any_result_exports_without_error(kind, phases, text):
    oneof: dict[str, Any] = {
        "http": {"http": pb.HttpDetails(http_version=text, tls=pb.TlsFacts(version=text))},
        "dns": {"dns": pb.DnsDetails(rcode=text)},
        "icmp": {"icmp": pb.IcmpDetails(sent=1, received=5)},
        "tls": {"tls": pb.TlsDetails(tls=pb.TlsFacts(cipher=text))},
        "grpc": {"grpc": pb.GrpcDetails(serving_status=text)},
        "tcp": {},
    }[kind]
    message = result(kind, phases=phases, **oneof)
    registry = registry_of(message)
    assert isinstance(generate_latest(registry), bytes)  # renders without error
    loss = registry.get_sample_value("probenet_icmp_packet_loss_ratio", labels(message))
    assert loss in (None, 0.0)  # more replies than requests never gives a negative loss
    for family in registry.collect():
        for sample in family.samples:
            assert math.isfinite(sample.value), (family.name, sample)


# --------------------------------------------------------------------------- promtool


def test_exposition_passes_promtool_check_metrics():
    promtool = need_binary("promtool", "prometheus")
    registry = registry_of(HTTPS, DNS, ICMP, TLS, GRPC_NOT_SERVING,
                           result("http", probe="down", success=False,
                                  phases={"connect": 0.1}))
    exposition = generate_latest(registry)
    assert b"probe_grpc_healthcheck_response{" in exposition
    checked = subprocess.run([promtool, "check", "metrics"], input=exposition,
                             capture_output=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.decode().strip() == "", checked.stdout.decode()


@pytest.mark.parametrize("message", [HTTPS, DNS, ICMP, TLS, GRPC_NOT_SERVING])
def test_every_family_carries_the_pair_labels(message):
    for family in registry_of(message).collect():
        for sample in family.samples:
            assert set(PAIR_LABELS) <= set(sample.labels), family.name


# --------------------------------------------------------------------------- end to end


async def test_real_probe_results_through_classifier_and_collector_metrics(tmp_path):
    """Real tls and grpc probes -> wire results -> Classifier and LatestDetails -> scrape."""
    ca = TestCA(tmp_path)
    leaf = ca.issue("localhost", "127.0.0.1", days_valid=20)
    tls_server = await asyncio.start_server(
        lambda _r, w: w.close(), "127.0.0.1", 0, ssl=leaf.server_context())
    tls_port = tls_server.sockets[0].getsockname()[1]
    grpc_server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), grpc_server)
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    specs = [
        ProbeSpec(name="cert", kind="tls", target=f"127.0.0.1:{tls_port}", interval="10s",
                  timeout="3s", tls={"ca_file": str(ca.ca_file)}),
        ProbeSpec(name="health", kind="grpc", target=f"127.0.0.1:{grpc_port}",
                  interval="10s", timeout="3s"),
    ]
    try:
        results = []
        for spec in specs:
            (outcome,) = await run_attempt(build_probe(spec, source_address=None), spec.timeout)
            assert outcome.success, outcome.error
            results.append(to_wire(spec, outcome, confirmed=False, timestamp_ms=1))
    finally:
        tls_server.close()
        await tls_server.wait_closed()
        await grpc_server.stop(grace=None)

    fleet = Fleet()
    fleet.send("fra-1", "eu-central", *results)
    registry = fleet.registry()
    registry.register(ClassifierMetrics(fleet.classifier))
    pair = {"region": "eu-central", "agent": "fra-1"}
    cert = {"probe": "cert", "target": f"127.0.0.1:{tls_port}", "kind": "tls", **pair}
    healthy = {"probe": "health", "target": f"127.0.0.1:{grpc_port}", "kind": "grpc", **pair}
    get = registry.get_sample_value
    assert get("probe_ssl_earliest_cert_expiry", cert) == int(leaf.not_after.timestamp())
    assert get("probe_tls_version_info", {**cert, "version": "TLS 1.3"}) == 1
    assert get("probe_grpc_healthcheck_response", {**healthy, "serving_status": "SERVING"}) == 1
    assert get("probe_grpc_healthcheck_response",
               {**healthy, "serving_status": "NOT_SERVING"}) == 0
    assert get("probe_dns_lookup_time_seconds", healthy) is not None
    assert get("probe_success", cert) == 1

    promtool = need_binary("promtool", "prometheus")
    checked = subprocess.run([promtool, "check", "metrics"], input=generate_latest(registry),
                             capture_output=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
