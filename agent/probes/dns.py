"""The `dns` probe: query a name for one record type against one server, with dnspython.

Target: the name to query (for `record: PTR`, an IP address is turned into its reverse
name). Server: `dns.server` (`host[:port]`), or the first nameserver of /etc/resolv.conf.
UDP by default, retried over TCP when the answer is truncated; `transport: tcp` uses TCP
only. The query's sockets are bound to the agent's source address.

Success = the rcode is `expect_rcode` (NOERROR by default) and, when expecting NOERROR,
there is at least one answer of the asked type; every `expect_answers` entry is among the
answers and `answer_regex` matches one of them. Answers compare as `dig +short` prints them,
case-insensitively and ignoring trailing dots (TXT also without quotes).
Failure reasons: dns_nxdomain, dns_servfail, dns_refused, dns_rcode, dns_no_answer,
dns_error (a malformed reply), dns_timeout (the deadline struck waiting: phase timeout,
timeout_phase dns), connect_refused (ICMP port unreachable, or TCP refused: phase connect),
dns_answer_mismatch (validation). Timing phases: resolve (the server's own name), request.
Reports `pb.DnsDetails` (answer/authority/additional counts, rcode) whenever a reply came.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.reversename

from probenet.addresses import split_host_port
from probenet.v1 import probenet_pb2 as pb

from .base import PhaseTracker, ProbeFailure, ProbeOutcome
from .connect import connect_failure
from .resolve import Resolver, family_for, resolve_addresses, system_resolver

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..config import DnsOptions, ProbeSpec

_RCODE_REASONS = {"NXDOMAIN": "dns_nxdomain", "SERVFAIL": "dns_servfail",
                  "REFUSED": "dns_refused"}


def normalise_answer(text: str) -> str:
    """An answer as compared: lower case, no trailing dots on names, TXT without quotes."""
    words = [word.rstrip(".") if len(word) > 1 else word for word in text.lower().split()]
    joined = " ".join(words)
    if joined.startswith('"') and joined.endswith('"'):
        joined = joined[1:-1].replace('" "', "")
    return joined


def system_nameserver() -> str | None:
    """The first nameserver of the system configuration, or None."""
    try:
        servers = dns.resolver.Resolver().nameservers
    except (dns.exception.DNSException, OSError):
        return None
    return str(servers[0]) if servers else None


class DnsProbe:
    """Query `name` for `options.record` against `server`."""

    def __init__(self, name: str, options: DnsOptions, *, server: str | None,
                 source_address: str | None = None,
                 resolver: Resolver = system_resolver) -> None:
        """`server` is `host[:port]`, or None for the system's first nameserver."""
        self.options = options
        self.rdtype = dns.rdatatype.from_text(options.record)
        try:
            literal = ipaddress.ip_address(name)
        except ValueError:
            literal = None
        self.qname = (dns.reversename.from_address(str(literal))
                      if literal is not None and options.record == "PTR"
                      else dns.name.from_text(name))
        self.server = server
        self.source_address = source_address
        self.resolver = resolver
        self.expected = [normalise_answer(a) for a in options.expect_answers]
        self.answer_regex = re.compile(options.answer_regex) if options.answer_regex else None

    async def run(self, tracker: PhaseTracker) -> Sequence[ProbeOutcome]:
        """Query once."""
        tracker.enter("dns", "resolve")
        server = self.server or system_nameserver()
        if server is None:
            raise ProbeFailure("dns", "dns_error", "no DNS server configured on this system")
        host, port = split_host_port(server, default_port=53)
        addresses = await resolve_addresses(
            host, ip_family=family_for(None, self.source_address), resolver=self.resolver)
        where = addresses[0]
        query = dns.message.make_query(self.qname, self.rdtype)
        if not self.options.recursion_desired:
            query.flags &= ~dns.flags.RD
        tracker.enter("dns", "request")
        try:
            if self.options.transport == "tcp":
                response = await dns.asyncquery.tcp(query, where, port=port,
                                                    source=self.source_address)
            else:
                response, _ = await dns.asyncquery.udp_with_fallback(
                    query, where, port=port, source=self.source_address,
                    ignore_unexpected=True)
        except OSError as exc:
            raise connect_failure(exc, f"{server}") from exc
        except dns.exception.DNSException as exc:
            raise ProbeFailure("dns", "dns_error", f"bad reply from {server}: {exc}") from exc
        except (ValueError, EOFError) as exc:  # truncated or garbled wire data
            raise ProbeFailure("dns", "dns_error", f"bad reply from {server}: {exc}") from exc
        tracker.enter("validation")
        return [self._judge(response, tracker, where)]

    def _answers(self, response: dns.message.Message) -> list[str]:
        return [rdata.to_text() for rrset in response.answer if rrset.rdtype == self.rdtype
                for rdata in rrset]

    def _judge(self, response: dns.message.Message, tracker: PhaseTracker,
               address: str) -> ProbeOutcome:
        rcode = dns.rcode.to_text(response.rcode())
        details = pb.DnsDetails(
            answer_rrs=sum(len(r) for r in response.answer),
            authority_rrs=sum(len(r) for r in response.authority),
            additional_rrs=sum(len(r) for r in response.additional), rcode=rcode)
        failure = self._failure(response, rcode)
        duration = tracker.finish()
        phase = ""
        if failure is not None:
            phase = "validation" if failure[0] == "dns_answer_mismatch" else "dns"
        return ProbeOutcome(
            success=failure is None, duration_seconds=duration, failed_phase=phase,
            reason=failure[0] if failure else "", error=failure[1] if failure else "",
            phases=dict(tracker.durations), address=address, details=details)

    def _failure(self, response: dns.message.Message, rcode: str) -> tuple[str, str] | None:
        name = self.qname.to_text()
        if rcode != self.options.expect_rcode:
            reason = _RCODE_REASONS.get(rcode, "dns_rcode")
            expected = self.options.expect_rcode
            return reason, f"{name} {self.options.record}: rcode {rcode}, expected {expected}"
        if self.options.expect_rcode != "NOERROR":
            return None
        answers = self._answers(response)
        if not answers:
            return "dns_no_answer", f"{name} has no {self.options.record} record"
        have = {normalise_answer(a) for a in answers}
        missing = [a for a in self.expected if a not in have]
        shown = ", ".join(sorted(have))[:200]
        if missing:
            return ("dns_answer_mismatch",
                    f"{name} {self.options.record}: {', '.join(missing)} not among [{shown}]")
        if self.answer_regex is not None and not any(
                self.answer_regex.search(a) for a in answers):
            pattern = self.answer_regex.pattern
            return ("dns_answer_mismatch",
                    f"no {self.options.record} answer matches {pattern!r} ([{shown}])")
        return None


def build(spec: ProbeSpec, *, source_address: str | None,
          resolver: Resolver = system_resolver) -> DnsProbe:
    """Build a `dns` probe from its spec."""
    options = spec.dns
    if options is None:  # pragma: no cover - the config always sets the probe's own options
        raise ValueError("dns options missing")
    return DnsProbe(spec.target, options, server=options.server,
                    source_address=source_address, resolver=resolver)
