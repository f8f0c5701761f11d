"""The dns probe against the small local DNS responder: answers, rcodes, TCP fallback."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probenet.agent.config import ProbeSpec, parse_config
from probenet.agent.probes import build_probe
from probenet.agent.probes.attempt import run_attempt
from support.targets import DnsAnswer, DnsResponder

if TYPE_CHECKING:
    from probenet.agent.probes.base import ProbeOutcome

TABLE = {
    ("www.example.test", "A"): DnsAnswer(["192.0.2.10", "192.0.2.11"]),
    ("www.example.test", "AAAA"): DnsAnswer(["2001:db8::10"]),
    ("example.test", "MX"): DnsAnswer(["10 mail.example.test."]),
    ("example.test", "NS"): DnsAnswer(["ns1.example.test."]),
    ("example.test", "SOA"): DnsAnswer(
        ["ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60"]),
    ("example.test", "TXT"): DnsAnswer(['"v=spf1 -all"']),
    ("alias.example.test", "CNAME"): DnsAnswer(["www.example.test."]),
    ("big.example.test", "TXT"): DnsAnswer([f'"record number {i:03d}"' for i in range(60)],
                                           truncate=True),
    ("broken.example.test", "A"): DnsAnswer(rcode="SERVFAIL"),
    ("closed.example.test", "A"): DnsAnswer(rcode="REFUSED"),
    ("slow.example.test", "A"): DnsAnswer(stall=True),
    ("empty.example.test", "TXT"): DnsAnswer(['"only text"']),
}


def spec_for(name: str, options: str, *, timeout: str = "2s") -> ProbeSpec:
    text = f"""
agent: {{id: t-1, region: test}}
collectors: [{{address: "127.0.0.1:1"}}]
probes:
  - name: resolve
    kind: dns
    target: "{name}"
    interval: 10s
    timeout: {timeout}
    dns: {options}
"""
    return parse_config(text).probes[0]


async def probe_once(spec: ProbeSpec, source_address: str | None = None) -> ProbeOutcome:
    [outcome] = await run_attempt(build_probe(spec, source_address=source_address),
                                  spec.timeout)
    return outcome


async def test_a_record_with_expected_answers():
    async with DnsResponder(TABLE) as server:
        outcome = await probe_once(spec_for(
            "www.example.test", f'{{server: "{server.address}", '
                                f'expect_answers: ["192.0.2.10", "192.0.2.11"]}}'))
        assert server.queries[0][:3] == ("www.example.test.", "A", "udp")
    assert outcome.success, outcome
    assert outcome.details.answer_rrs == 2
    assert outcome.details.rcode == "NOERROR"
    assert "request" in outcome.phases


async def test_record_types():
    cases = [
        ("www.example.test", "AAAA", "2001:db8::10"),
        ("example.test", "MX", "10 mail.example.test"),
        ("example.test", "NS", "ns1.example.test."),
        ("example.test", "TXT", "v=spf1 -all"),
        ("alias.example.test", "CNAME", "www.example.test"),
        ("example.test", "SOA", "ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60"),
    ]
    async with DnsResponder(TABLE) as server:
        for name, record, answer in cases:
            outcome = await probe_once(spec_for(
                name, f'{{server: "{server.address}", record: {record}, '
                      f'expect_answers: ["{answer}"]}}'))
            assert outcome.success, (record, outcome)


async def test_cname_chain_answers_the_a_query():
    async with DnsResponder(TABLE) as server:
        options = f'{{server: "{server.address}", answer_regex: "^192\\\\.0\\\\.2\\\\."}}'
        outcome = await probe_once(spec_for("alias.example.test", options))
    assert outcome.success, outcome
    assert outcome.details.answer_rrs == 3


async def test_wrong_answer():
    async with DnsResponder(TABLE) as server:
        outcome = await probe_once(spec_for(
            "www.example.test", f'{{server: "{server.address}", expect_answers: ["192.0.2.99"]}}'))
        regex = await probe_once(spec_for(
            "www.example.test", f'{{server: "{server.address}", answer_regex: "^10\\\\."}}'))
    assert (outcome.failed_phase, outcome.reason) == ("validation", "dns_answer_mismatch")
    assert "192.0.2.99" in outcome.error
    assert (regex.failed_phase, regex.reason) == ("validation", "dns_answer_mismatch")


async def test_nxdomain():
    async with DnsResponder(TABLE) as server:
        outcome = await probe_once(spec_for("nope.example.test", f'{{server: "{server.address}"}}'))
        expected = await probe_once(spec_for(
            "nope.example.test", f'{{server: "{server.address}", expect_rcode: NXDOMAIN}}'))
    assert (outcome.failed_phase, outcome.reason) == ("dns", "dns_nxdomain")
    assert outcome.details.rcode == "NXDOMAIN"
    assert expected.success


async def test_servfail_refused_and_no_answer():
    async with DnsResponder(TABLE) as server:
        servfail = await probe_once(spec_for("broken.example.test",
                                             f'{{server: "{server.address}"}}'))
        refused = await probe_once(spec_for("closed.example.test",
                                            f'{{server: "{server.address}"}}'))
        no_answer = await probe_once(spec_for("empty.example.test",
                                              f'{{server: "{server.address}"}}'))
    assert (servfail.failed_phase, servfail.reason) == ("dns", "dns_servfail")
    assert (refused.failed_phase, refused.reason) == ("dns", "dns_refused")
    assert (no_answer.failed_phase, no_answer.reason) == ("dns", "dns_no_answer")


async def test_truncated_udp_answer_falls_back_to_tcp():
    async with DnsResponder(TABLE) as server:
        outcome = await probe_once(spec_for(
            "big.example.test", f'{{server: "{server.address}", record: TXT, '
                                f'expect_answers: ["record number 059"]}}'))
        transports = [q[2] for q in server.queries]
    assert outcome.success, outcome
    assert transports == ["udp", "tcp"]
    assert outcome.details.answer_rrs == 60


async def test_tcp_transport():
    async with DnsResponder(TABLE) as server:
        outcome = await probe_once(spec_for(
            "www.example.test", f'{{server: "{server.address}", transport: tcp}}'))
        assert [q[2] for q in server.queries] == ["tcp"]
    assert outcome.success, outcome


async def test_no_reply_times_out_in_dns():
    async with DnsResponder(TABLE) as server:
        outcome = await probe_once(spec_for("slow.example.test",
                                            f'{{server: "{server.address}"}}', timeout="300ms"))
    assert (outcome.failed_phase, outcome.timeout_phase, outcome.reason) == (
        "timeout", "dns", "dns_timeout")


async def test_source_address_is_used():
    async with DnsResponder(TABLE) as server:
        outcome = await probe_once(spec_for("www.example.test",
                                            f'{{server: "{server.address}"}}'),
                                   source_address="127.0.0.2")
        assert outcome.success, outcome
        assert server.queries[0][3] == "127.0.0.2"


async def test_ptr_target_written_as_an_address():
    table = {("10.2.0.192.in-addr.arpa", "PTR"): DnsAnswer(["www.example.test."])}
    async with DnsResponder(table) as server:
        outcome = await probe_once(spec_for(
            "192.0.2.10", f'{{server: "{server.address}", record: PTR, '
                          f'expect_answers: ["www.example.test"]}}'))
    assert outcome.success, outcome


async def test_unreachable_server_port_over_tcp_is_refused():
    from support.targets import closed_port  # noqa: PLC0415

    outcome = await probe_once(spec_for(
        "www.example.test", f'{{server: "127.0.0.1:{closed_port()}", transport: tcp}}'))
    assert (outcome.failed_phase, outcome.reason) == ("connect", "connect_refused")
