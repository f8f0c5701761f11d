"""/metrics of a real CollectorService: results in over real gRPC, the page out over real HTTP,
streamed in chunks, gzip when asked for, OpenMetrics when asked for, families as `metrics:`
in a real config file chooses."""

from __future__ import annotations

import gzip

import aiohttp
import pytest

from probenet.collector.config import load_config, parse_config
from probenet.collector.exposition import ExpositionFormat
from probenet.collector.server import CollectorService
from probenet.v1 import probenet_pb2 as pb
from support.collector_client import (
    DEADLINE_S,
    ManualClock,
    TestAgent,
    collector_yaml,
    metric_value,
)

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
HTTPS_DETAILS = {
    "status_code": 200,
    "phases": [pb.PhaseDuration(name=name, seconds=seconds) for name, seconds in (
        ("resolve", 0.0004), ("connect", 0.002), ("tls", 0.004), ("processing", 0.008),
        ("transfer", 0.0005))],
    "http": pb.HttpDetails(http_version="HTTP/2", content_length=5120, tls=pb.TlsFacts(
        earliest_cert_expiry=1_800_000_000, version="TLS 1.3", cipher="TLS_AES_128_GCM_SHA256")),
}
OTHER_KINDS = {
    "ns": {"kind": "dns", "dns": pb.DnsDetails(answer_rrs=2, rcode="NOERROR")},
    "ping": {"kind": "icmp", "icmp": pb.IcmpDetails(sent=4, received=3, rtt_avg_seconds=0.02)},
    "cert": {"kind": "tls", "tls": pb.TlsDetails(tls=pb.TlsFacts(earliest_cert_expiry=1_900_000_000,
                                                                 version="TLS 1.2"))},
    "health": {"kind": "grpc", "grpc": pb.GrpcDetails(serving_status="SERVING")},
}
PROBES = 1500  # https pairs: ~24,000 series, a page of ~3 MB in many chunks


@pytest.fixture
async def collector(tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    async with CollectorService(config, clock=ManualClock()) as service:
        yield service


async def fill(agent: TestAgent, probes: int = PROBES) -> None:
    """`probes` https pairs and one pair of each other kind, every result with details."""
    for first in range(0, probes, 500):
        await agent.send([agent.result(f"web-{i}", target=f"https://t{i}.example/",
                                       **HTTPS_DETAILS)
                          for i in range(first, min(first + 500, probes))])
    await agent.send([agent.result(probe, **fields) for probe, fields in OTHER_KINDS.items()])


async def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """GET `url`, the body as received (not decompressed; identity unless asked otherwise)."""
    headers.setdefault("Accept-Encoding", "identity")  # aiohttp's client asks for gzip
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session, \
            session.get(url, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


def page_without_registry(service: CollectorService, fmt: ExpositionFormat) -> bytes:
    """The page as `render` gives it, less the registry's families at its end.

    The registry's families (ingest counters, event-loop lag) move from one request to the
    next; the rest is the same for the same classifier state, byte for byte.
    """
    rendered = service.page.render(fmt=fmt)
    tail = fmt.encoder(service.registry)  # at once: the same registry state
    assert rendered.endswith(tail)
    return rendered[:len(rendered) - len(tail)]


def assert_is_the_page(body: bytes, service: CollectorService, fmt: ExpositionFormat) -> None:
    page = page_without_registry(service, fmt)
    assert len(page) > 1_000_000
    assert body[:len(page)] == page
    registry_part = body[len(page):].decode()
    assert "probenet_ingest_results_total" in registry_part
    if fmt.openmetrics:
        assert body.endswith(b"# EOF\n")
        assert body.count(b"# EOF") == 1


async def test_metrics_is_the_page_streamed_in_chunks(collector):
    async with TestAgent(collector.grpc_address, "fra-1", "eu") as agent:
        await fill(agent)
        status, headers, body = await get(collector.http.url + "/metrics",
                                          **{"Accept-Encoding": "identity"})
        assert status == 200
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert headers.get("Transfer-Encoding") == "chunked"  # streamed, no length upfront
        assert "Content-Encoding" not in headers
        assert_is_the_page(body, collector, ExpositionFormat.text())
        text = body.decode()
        labels = {"probe": "web-7", "agent": "fra-1", "region": "eu", "kind": "http"}
        assert metric_value(text, "probe_success", **labels) == 1
        assert metric_value(text, "probe_http_duration_seconds", phase="tls", **labels) == 0.004
        assert metric_value(text, "probe_grpc_healthcheck_response", probe="health",
                            serving_status="SERVING") == 1


@pytest.mark.parametrize("accept_encoding", ["gzip", "deflate, gzip;q=0.5", "*"])
async def test_gzip_when_the_scraper_takes_it(collector, accept_encoding):
    async with TestAgent(collector.grpc_address, "fra-1", "eu") as agent:
        await fill(agent)
        status, headers, body = await get(collector.http.url + "/metrics",
                                          **{"Accept-Encoding": accept_encoding})
        assert status == 200
        assert headers["Content-Encoding"] == "gzip"
        plain = gzip.decompress(body)
        assert len(body) < len(plain) / 5
        assert_is_the_page(plain, collector, ExpositionFormat.text())


@pytest.mark.parametrize("accept_encoding", ["identity", "gzip;q=0", "br"])
async def test_no_gzip_when_not_asked_for(collector, accept_encoding):
    async with TestAgent(collector.grpc_address, "fra-1", "eu") as agent:
        await fill(agent, probes=100)
        _, headers, body = await get(collector.http.url + "/metrics",
                                     **{"Accept-Encoding": accept_encoding})
    assert "Content-Encoding" not in headers
    assert body.startswith(b"# HELP ")


async def test_openmetrics_when_asked_for(collector):
    async with TestAgent(collector.grpc_address, "fra-1", "eu") as agent:
        await fill(agent)
        for encoding in ("identity", "gzip"):
            status, headers, body = await get(collector.http.url + "/metrics",
                                              Accept=OPENMETRICS,
                                              **{"Accept-Encoding": encoding})
            assert status == 200
            assert headers["Content-Type"].startswith("application/openmetrics-text")
            if encoding == "gzip":
                body = gzip.decompress(body)
            assert_is_the_page(body, collector, ExpositionFormat.negotiate(OPENMETRICS))


@pytest.mark.parametrize(("metrics", "success", "duration", "details"), [
    ("", True, True, True),
    ("metrics: {per_kind_details: false}\n", True, True, False),
    ("metrics: {per_agent: success}\n", True, False, False),
    ("metrics: {per_agent: none}\n", False, False, False),
])
async def test_metrics_settings_in_a_config_file_choose_the_families(
        tmp_path, metrics, success, duration, details):
    path = tmp_path / "collector.yaml"
    path.write_text(collector_yaml(str(tmp_path / "journal.db"), extra=metrics))
    async with CollectorService(load_config(path), clock=ManualClock()) as service:
        assert (service.details is not None) is details  # no store kept without the families
        async with TestAgent(service.grpc_address, "fra-1", "eu") as agent, \
                TestAgent(service.grpc_address, "iad-1", "us") as other:
            await fill(agent, probes=3)
            await fill(other, probes=3)
            _, _, body = await get(service.http.url + "/metrics")
    text = body.decode()
    pair = {"probe": "web-1", "agent": "fra-1"}
    assert (metric_value(text, "probe_success", **pair) is not None) is success
    assert (metric_value(text, "probe_duration_seconds", **pair) is not None) is duration
    assert ("probe_http_status_code" in text) is details
    assert ("probe_ssl_earliest_cert_expiry" in text) is details
    # The classification and the agents' health are always there.
    assert metric_value(text, "probenet_region_up", probe="web-1", region="us") == 1
    assert metric_value(text, "probenet_target_state", probe="web-1", state="up") == 1
    assert metric_value(text, "probenet_agent_up", agent="iad-1", region="us") == 1


async def test_kind_details_off_overrides_the_config(tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    async with CollectorService(config, kind_details=False) as service:
        assert service.details is None
        assert not service.page.settings.kind_details
        async with TestAgent(service.grpc_address, "fra-1", "eu") as agent:
            await fill(agent, probes=2)
            _, _, body = await get(service.http.url + "/metrics")
    assert b"probe_success{" in body
    assert b"probe_http_status_code" not in body
