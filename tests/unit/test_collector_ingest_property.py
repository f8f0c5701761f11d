"""Hypothesis over the wire: any parseable batch is applied or counted, and /metrics stays valid.

A real `CollectorService` in process (real gRPC on loopback port 0); a test agent sends
generated `AgentMessage`s (every field of `ProbeResult` drawn from its whole range, strings
of any Unicode and length, the `details` oneof, out-of-range enums) and byte-mutated batches
that still parse. After each one: every result of an acknowledged batch is applied,
a duplicate or a counted rejection (the rejections by reason add up to the rejected ones),
a message that ends the stream is a counted stream-level rejection, and the page parses with
prometheus_client's parser (text format and OpenMetrics); `promtool check metrics` checks a
sample of the pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import subprocess
import time
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse

from probenet.collector.config import parse_config
from probenet.collector.details import MAX_SECONDS
from probenet.collector.ingest import REJECTION_REASONS
from probenet.collector.server import CollectorService
from probenet.v1 import probenet_pb2 as pb
from support.collector_client import (
    ManualClock,
    StreamEndedError,
    TestAgent,
    collector_yaml,
    counter,
    http_get,
)
from support.system import need_binary

if TYPE_CHECKING:
    from pathlib import Path

MAX_EXAMPLES = 150
PROMTOOL_EVERY = 10  # pages checked by promtool: one in this many, and the last
NOW_MS = int(time.time() * 1000)
KINDS = ("http", "tcp", "dns", "icmp", "tls", "grpc", "flow")
PROBES = ("web", "api", "mx-1", "db.main", "edge:443")
PHASE_NAMES = ("resolve", "connect", "tls", "processing", "transfer", "request", "setup",
               "rtt")

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, -1.0, 0.012, 1e308, -1e308, math.nan, math.inf, -math.inf]))
uint32 = st.integers(0, 2**32 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
# Strings: short text of any Unicode (controls, separators, quotes, backslashes), and long
# runs of one character (10 KB service names, error texts and addresses).
AWKWARD_CHARS = st.sampled_from(['"', "\\", "\n", "\r", "\t", "\x00", "\x85", "\u2028",
                                 "{", "}", "=", ",", "é", "🚀", "a"])
texts = st.one_of(
    st.text(max_size=40),
    st.text(AWKWARD_CHARS, max_size=40),
    st.builds(lambda char, n: char * n, AWKWARD_CHARS, st.integers(0, 20_000)))
short_texts = st.one_of(st.text(max_size=30), st.text(AWKWARD_CHARS, max_size=30))
sane_seconds = st.floats(0, 10)


def _phase_durations(names: st.SearchStrategy[str], seconds: st.SearchStrategy[float]
                     ) -> st.SearchStrategy[list[pb.PhaseDuration]]:
    return st.lists(st.builds(pb.PhaseDuration, name=names, seconds=seconds), max_size=8)


def _details(*, seconds: st.SearchStrategy[float], count: st.SearchStrategy[int],
             expiry: st.SearchStrategy[int], text: st.SearchStrategy[str]
             ) -> st.SearchStrategy[dict[str, Any] | None]:
    tls = st.builds(pb.TlsFacts, earliest_cert_expiry=expiry, version=text, cipher=text)
    return st.one_of(
        st.none(),
        st.builds(lambda d: {"http": d}, st.builds(
            pb.HttpDetails, http_version=st.one_of(st.sampled_from(
                ["HTTP/1.1", "HTTP/2", "HTTP/nan", "HTTP/-1", "HTTP/1e400"]), text),
            redirects=uint32, content_length=count, tls=st.one_of(st.none(), tls))),
        st.builds(lambda d: {"dns": d}, st.builds(
            pb.DnsDetails, answer_rrs=uint32, authority_rrs=uint32, additional_rrs=uint32,
            rcode=text)),
        st.builds(lambda d: {"icmp": d}, st.builds(
            pb.IcmpDetails, sent=uint32, received=uint32, rtt_min_seconds=seconds,
            rtt_avg_seconds=seconds, rtt_max_seconds=seconds, rtt_stddev_seconds=seconds)),
        st.builds(lambda d: {"tls": d}, st.builds(pb.TlsDetails, tls=tls)),
        st.builds(lambda d: {"grpc": d}, st.builds(pb.GrpcDetails, serving_status=st.one_of(
            st.sampled_from(["SERVING", "NOT_SERVING"]), text))))


ODD_ONE_IN = 12  # a field is drawn out of contract about once in this many draws
# Each field: what an agent in contract sends, and anything its type holds. A result draws
# the first for most fields and the second for a few, so that both accepted results with
# one odd field and results that break the contract in several ways are common.
FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "probe": (st.sampled_from(PROBES), texts),
    "target": (short_texts, texts),
    "kind": (st.sampled_from(KINDS), texts),
    "service": (st.text(max_size=20), texts),
    "success": (st.booleans(), st.booleans()),
    "confirmed": (st.booleans(), st.booleans()),
    "failed_phase": (st.integers(1, 7), st.integers(-3, 12)),
    "timeout_phase": (st.integers(0, 7), st.integers(-3, 12)),
    "reason": (st.text(max_size=20), texts),
    "error": (short_texts, texts),
    "duration_seconds": (sane_seconds, floats),
    "phases": (_phase_durations(st.sampled_from(PHASE_NAMES), sane_seconds),
               _phase_durations(st.one_of(st.sampled_from(PHASE_NAMES), texts), floats)),
    "status_code": (st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1)),
    "timestamp_ms": (st.integers(NOW_MS - 60_000, NOW_MS + 60_000), st.one_of(
        st.integers(NOW_MS - 200 * 86_400_000, NOW_MS + 86_400_000), int64)),
    "interval_ms": (st.sampled_from([0, 200, 30_000]), uint32),
    "address": (short_texts, texts),
    "details": (_details(seconds=sane_seconds, count=st.integers(0, 2**40),
                         expiry=st.integers(0, 2**40), text=short_texts),
                _details(seconds=floats, count=int64, expiry=int64, text=texts)),
}


@st.composite
def results(draw: st.DrawFn) -> pb.ProbeResult:
    """One ProbeResult, a few fields out of contract; seq left 0 (numbered when sent)."""
    fields = {name: draw(strategies[draw(st.integers(0, ODD_ONE_IN)) == 0])
              for name, strategies in FIELDS.items()}
    oneof = fields.pop("details") or {}
    return pb.ProbeResult(**fields, **oneof)


# seq: mostly the agent's next (so results get applied), sometimes anything.
seq_plans = st.lists(st.one_of(*[st.just(None)] * 9, st.integers(0, 2**64 - 1)),
                     min_size=1, max_size=6)


Mutation = list[tuple[float, int]]  # (where, as a share of the length; the new byte)


@st.composite
def messages(draw: st.DrawFn) -> tuple[list[pb.ProbeResult], list[int | None],
                                       Mutation | None, bytes | None]:
    """A batch (results, their seq plan), maybe byte mutations of it, or another body."""
    plan = draw(seq_plans)
    batch = [draw(results()) for _ in plan]
    choice = draw(st.integers(0, 9))
    mutation = None
    other = None
    if choice <= 1:
        # Byte mutations of the serialized batch (applied once numbered; kept if they parse).
        mutation = draw(st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                           st.integers(0, 255)), min_size=1, max_size=8))
    elif choice == 2:  # one in ten: a Hello or an empty message, which end the stream
        other = draw(st.sampled_from([pb.AgentMessage(), pb.AgentMessage(hello=pb.Hello(
            agent_id="fuzz", region="eu", epoch=1))])).SerializeToString()
    return batch, plan, mutation, other


def mutate(message: pb.AgentMessage, mutation: Mutation) -> pb.AgentMessage:
    """`message` with bytes replaced, if the result still parses (else `message`)."""
    data = bytearray(message.SerializeToString())
    for where, byte in mutation:
        data[int(where * len(data))] = byte
    try:
        return pb.AgentMessage.FromString(bytes(data))
    except DecodeError:
        return message


# Always tried first: the values (NaN, negative, 1e308 phase durations; a negative
# content length; NaN round trips), in results otherwise in contract.
OUT_OF_CONTRACT = ([
    pb.ProbeResult(probe="web", target="https://web.example/", kind="http", success=True,
                   duration_seconds=0.5, timestamp_ms=NOW_MS, interval_ms=200,
                   phases=[pb.PhaseDuration(name="resolve", seconds=-1.0),
                           pb.PhaseDuration(name="connect", seconds=math.nan),
                           pb.PhaseDuration(name="tls", seconds=1e308)],
                   http=pb.HttpDetails(content_length=-5, tls=pb.TlsFacts(
                       earliest_cert_expiry=-1))),
    pb.ProbeResult(probe="api", target="api.example", kind="icmp", success=True,
                   duration_seconds=0.5, timestamp_ms=NOW_MS, interval_ms=200,
                   phases=[pb.PhaseDuration(name="rtt", seconds=-3.0)],
                   icmp=pb.IcmpDetails(sent=3, received=3, rtt_min_seconds=-1.0,
                                       rtt_avg_seconds=math.nan, rtt_max_seconds=1e308)),
], [None, None], None, None)


def check_value(name: str, value: float) -> None:
    """A per-pair measurement on the page is within the contract (what the ingest checks)."""
    if name.startswith(("probe_", "probenet_icmp_")) and name.endswith("_seconds"):
        assert 0 <= value <= MAX_SECONDS, (name, value)
    elif name in {"probe_http_content_length", "probe_ssl_earliest_cert_expiry"}:
        assert value >= 0, (name, value)


class Harness:
    """The collector, one test agent (reopened when a message ends its stream) and checks."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.AsyncExitStack()
        self.config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
        self.clock = ManualClock(NOW_MS / 1000)
        self.service: Any = None
        self.agent: TestAgent | None = None
        self.epoch = time.time_ns()
        self.next_seq = 1
        self.pages = 0
        self.promtool = need_binary("promtool", "prometheus")

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def start(self) -> None:
        self.service = self.run(self.stack.enter_async_context(
            CollectorService(self.config, clock=self.clock)))

    def stop(self) -> None:
        try:
            if self.agent is not None:
                self.run(self.agent.close())
            self.run(self.stack.aclose())
        finally:
            self.loop.close()

    async def _agent(self) -> TestAgent:
        if self.agent is None:
            agent = TestAgent(self.service.grpc_address, "fuzz-1", "eu-central",
                              epoch=self.epoch, next_seq=self.next_seq)
            self.agent = await agent.__aenter__()
        return self.agent

    def outcomes(self) -> dict[str, float]:
        values = {outcome: counter(self.service, "probenet_ingest_results_total",
                                   outcome=outcome)
                  for outcome in ("applied", "duplicate", "rejected")}
        values["reasons"] = sum(
            counter(self.service, "probenet_ingest_rejections_total", reason=reason)
            for reason in REJECTION_REASONS)
        return values

    async def send(self, batch: list[pb.ProbeResult], plan: list[int | None],
                   mutation: Mutation | None, other: bytes | None) -> None:
        agent = await self._agent()
        if other is not None:
            message = pb.AgentMessage.FromString(other)
        else:
            for result, seq in zip(batch, plan, strict=True):
                result.seq = agent.next_seq if seq is None else seq
                agent.next_seq += seq is None
            message = pb.AgentMessage(batch=pb.ResultBatch(results=batch))
            if mutation:
                message = mutate(message, mutation)
        sent = len(message.batch.results)
        before = self.outcomes()
        try:
            await agent.write(message)
            reply = await agent.read()
        except StreamEndedError:
            self.next_seq = agent.next_seq
            await agent.close()
            self.agent = None
            after = self.outcomes()
            assert after["reasons"] > before["reasons"], "a stream ended without a count"
            return
        assert reply.WhichOneof("body") == "ack", reply
        # A drawn seq above the agent's may have moved the watermark: go on above it.
        agent.next_seq = self.next_seq = max(agent.next_seq, reply.ack.acked_seq + 1)
        after = self.outcomes()
        delta = {key: after[key] - before[key] for key in after}
        assert delta["applied"] + delta["duplicate"] + delta["rejected"] == sent, delta
        assert delta["reasons"] == delta["rejected"], delta

    def check_page(self, *, promtool: bool) -> None:
        page = self.service.page.render()
        families = list(text_parse(page.decode()))
        assert any(f.name == "probe_success" for f in families) or not \
            self.service.classifier.samples()
        for family in families:
            for sample in family.samples:
                check_value(sample.name, sample.value)
        list(om_parse(self.service.page.render(openmetrics=True).decode()))
        # And as a scraper reads it: over HTTP, streamed in steps.
        status, _, text = self.run(http_get(self.service.http.url + "/metrics"))
        assert status == 200
        list(text_parse(text))
        if promtool:
            checked = subprocess.run([self.promtool, "check", "metrics"], input=page,
                                     capture_output=True, timeout=60, check=False)
            assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()


def test_any_parseable_message_is_applied_or_counted_and_the_page_stays_valid(tmp_path):
    harness = Harness(tmp_path)
    harness.start()
    try:
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])
        @example(OUT_OF_CONTRACT)
        @given(messages())
        def one_message(drawn: tuple[list[pb.ProbeResult], list[int | None],
                                     Mutation | None, bytes | None]) -> None:
            harness.run(harness.send(*drawn))
            harness.pages += 1
            harness.check_page(promtool=harness.pages % PROMTOOL_EVERY == 0)

        one_message()
        harness.check_page(promtool=True)
    finally:
        harness.stop()
