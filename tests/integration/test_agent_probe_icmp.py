"""The icmp probe against real loopback hosts: raw and datagram sockets, IPv4 and IPv6, loss,
unreachable destinations and source binding, each in a private network namespace where the
test controls ping_group_range and nftables rules."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import itertools
import os
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probenet.agent.config import ProbeSpec
from probenet.agent.probes import icmp
from probenet.agent.probes.base import PhaseTracker, ProbeFailure, ProbeOutcome
from probenet.v1 import probenet_pb2 as pb
from support.system import ROOT, need_binary, need_root

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_names = itertools.count()


def spec(target: str, timeout: str = "2s", **icmp_options: Any) -> ProbeSpec:
    options = {"count": 3, "spacing": "50ms", **icmp_options}
    return ProbeSpec(name="ping", kind="icmp", target=target, interval="5s", timeout=timeout,
                     icmp=options)


async def run_probe(probe: icmp.IcmpProbe) -> ProbeOutcome:
    # A safety net only: the probe ends by itself shortly before its own timeout (which the
    # scheduler enforces), and that is what these tests exercise.
    async with asyncio.timeout(probe.timeout_s + 5):
        outcomes = await probe.run(PhaseTracker())
    assert len(outcomes) == 1
    return outcomes[0]


class Netns:
    """A private network namespace (loopback up), removed on exit."""

    def __init__(self) -> None:
        self.name = f"pbicmp-{os.getpid()}-{next(_names)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True)

    def sh(self, command: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, "sh", "-c", command], check=True)

    def ping_group_range(self, low: int, high: int) -> None:
        self.sh(f"echo '{low} {high}' > /proc/sys/net/ipv4/ping_group_range")

    def nft(self, ruleset: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, "nft", "-f", "-"], input=ruleset,
                       text=True, check=True)

    async def run(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run `work()` on a fresh event loop in a thread that joined this namespace."""
        libc = ctypes.CDLL(None, use_errno=True)
        path = f"/run/netns/{self.name}"

        def in_namespace() -> T:
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            return asyncio.run(work())

        # A single-use thread: a pooled thread would stay in the namespace afterwards.
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.name)
        try:
            return await asyncio.wrap_future(executor.submit(in_namespace))
        finally:
            executor.shutdown(wait=False)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture
def netns() -> Iterator[Netns]:
    need_root("network namespaces and raw ICMP sockets")
    need_binary("ip", "iproute2")
    namespace = Netns()
    try:
        yield namespace
    finally:
        namespace.close()


@pytest.fixture
def nft_netns(netns: Netns) -> Netns:
    need_binary("nft", "nftables")
    return netns


def assert_all_answered(outcome: ProbeOutcome, count: int = 3) -> None:
    assert outcome.success, outcome.error
    assert (outcome.failed_phase, outcome.reason) == ("", "")
    details = outcome.details
    assert isinstance(details, pb.IcmpDetails)
    assert (details.sent, details.received) == (count, count)
    assert 0 < details.rtt_min_seconds <= details.rtt_avg_seconds <= details.rtt_max_seconds
    assert details.rtt_stddev_seconds >= 0
    assert set(outcome.phases) == {"resolve", "setup", "rtt"}
    # count packets 50 ms apart: the rtt phase spans at least the spacing between them.
    assert outcome.phases["rtt"] >= 0.05 * (count - 1)
    assert outcome.duration_seconds >= sum(outcome.phases.values()) - 1e-6


# --------------------------------------------------------------------------- raw sockets


@pytest.mark.parametrize("target", ["127.0.0.1", "::1"])
@pytest.mark.needs_root
async def test_raw_socket_pings_loopback(target):
    need_root("raw ICMP sockets")
    probe = icmp.build(spec(target), source_address=None, socket_mode="raw")
    outcome = await run_probe(probe)
    assert_all_answered(outcome)
    assert outcome.address == target


@pytest.mark.needs_root
async def test_hostname_is_resolved_in_the_configured_family():
    need_root("raw ICMP sockets")

    async def resolver(host: str, family: int) -> list[str]:
        assert host == "loopback.test"
        return ["::1"] if family == socket.AF_INET6 else ["127.0.0.1"]

    probe = icmp.build(spec("loopback.test", ip_family="ip6"), source_address=None,
                       resolver=resolver, socket_mode="raw")
    outcome = await run_probe(probe)
    assert_all_answered(outcome)
    assert outcome.address == "::1"


async def test_unknown_name_fails_in_dns_phase():
    async def resolver(host: str, family: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    probe = icmp.build(spec("nowhere.invalid"), source_address=None, resolver=resolver)
    with pytest.raises(ProbeFailure) as caught:
        await run_probe(probe)
    assert (caught.value.phase, caught.value.reason) == ("dns", "dns_nxdomain")


# --------------------------------------------------------------------------- datagram sockets


@pytest.mark.parametrize("target", ["127.0.0.1", "::1"])
@pytest.mark.needs_root
async def test_datagram_socket_pings_loopback_when_ping_group_range_allows(netns, target):
    netns.ping_group_range(0, 2147483647)

    async def work() -> tuple[str, ProbeOutcome]:
        mode = icmp.icmp_socket_mode("ip6" if ":" in target else "ip4")
        probe = icmp.build(spec(target), source_address=None, socket_mode="dgram")
        return mode, await run_probe(probe)

    mode, outcome = await netns.run(work)
    assert mode == "dgram"  # auto prefers the unprivileged socket
    assert_all_answered(outcome)


@pytest.mark.needs_root
async def test_datagram_socket_refused_names_the_fix(netns):
    netns.ping_group_range(1, 0)  # nobody may open ping sockets

    async def work() -> tuple[str, ProbeFailure]:
        mode = icmp.icmp_socket_mode("ip4")
        probe = icmp.build(spec("127.0.0.1"), source_address=None, socket_mode="dgram")
        with pytest.raises(ProbeFailure) as caught:
            await run_probe(probe)
        return mode, caught.value

    mode, failure = await netns.run(work)
    assert mode == "raw"  # root falls back to a raw socket
    assert (failure.phase, failure.reason) == ("connect", "icmp_not_permitted")
    assert "sysctl -w net.ipv4.ping_group_range='0 2147483647'" in failure.error
    assert "CAP_NET_RAW" in failure.error


@pytest.mark.needs_root
def test_unprivileged_process_without_ping_group_gets_the_fix(netns):
    need_binary("setpriv", "util-linux")
    netns.ping_group_range(1, 0)
    code = (
        "import asyncio\n"
        "from agent.probes import icmp\n"
        "from agent.probes.base import PhaseTracker, ProbeFailure\n"
        "try:\n"
        "    icmp.icmp_socket_mode()\n"
        "except PermissionError as exc:\n"
        "    print('startup:', exc.strerror)\n"
        "async def main():\n"
        "    try:\n"
        "        await icmp.IcmpProbe('127.0.0.1', timeout_s=1).run(PhaseTracker())\n"
        "    except ProbeFailure as exc:\n"
        "        print('run:', exc.phase, exc.reason)\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        ["ip", "netns", "exec", netns.name, "setpriv", "--reuid=65534", "--regid=65534",
         "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c",
         code],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'proto'}", "PYTHONDONTWRITEBYTECODE": "1",
             "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("startup: icmp (IPv4) needs either CAP_NET_RAW")
    assert "covering gid 65534" in lines[0]
    assert lines[1] == "run: connect icmp_not_permitted"


# --------------------------------------------------------------------------- loss, unreachable


DROP_ECHO_TO_127_0_0_2 = """
table inet probenet_test {
  chain input {
    type filter hook input priority 0;
    ip daddr 127.0.0.2 icmp type echo-request drop
  }
}
"""

DROP_EVERY_OTHER_ECHO = """
table inet probenet_test {
  chain input {
    type filter hook input priority 0;
    ip daddr 127.0.0.2 icmp type echo-request numgen inc mod 2 == 0 drop
  }
}
"""

REJECT_ECHO_TO_127_0_0_3 = """
table inet probenet_test {
  chain input {
    type filter hook input priority 0;
    ip daddr 127.0.0.3 icmp type echo-request reject with icmp type host-unreachable
  }
}
"""

DROP_FROM_127_0_0_5 = """
table inet probenet_test {
  chain input {
    type filter hook input priority 0;
    ip saddr 127.0.0.5 icmp type echo-request drop
  }
}
"""


@pytest.mark.parametrize("mode", ["raw", "dgram"])
@pytest.mark.needs_root
async def test_total_loss_fails_with_icmp_loss_and_statistics(nft_netns, mode):
    nft_netns.ping_group_range(0, 2147483647)
    nft_netns.nft(DROP_ECHO_TO_127_0_0_2)
    probe = icmp.build(spec("127.0.0.2", timeout="1s"), source_address=None, socket_mode=mode)
    outcome = await nft_netns.run(lambda: run_probe(probe))
    assert not outcome.success
    assert (outcome.failed_phase, outcome.reason) == ("response", "icmp_loss")
    assert "3 of 3 echo replies" in outcome.error
    assert isinstance(outcome.details, pb.IcmpDetails)
    assert (outcome.details.sent, outcome.details.received) == (3, 0)
    assert outcome.details.rtt_max_seconds == 0


@pytest.mark.parametrize(("max_loss", "success"), [(0.5, True), (0.25, False)])
@pytest.mark.needs_root
async def test_partial_loss_is_judged_against_max_loss(nft_netns, max_loss, success):
    nft_netns.nft(DROP_EVERY_OTHER_ECHO)
    probe = icmp.build(spec("127.0.0.2", timeout="1s", count=4, max_loss=max_loss),
                       source_address=None,
                       socket_mode="raw")
    outcome = await nft_netns.run(lambda: run_probe(probe))
    assert outcome.details.sent == 4
    assert outcome.details.received == 2
    assert outcome.success is success
    if not success:
        assert outcome.reason == "icmp_loss"
        assert "loss 50%" in outcome.error


@pytest.mark.parametrize("mode", ["raw", "dgram"])
@pytest.mark.needs_root
async def test_icmp_host_unreachable_reply_is_reported(nft_netns, mode):
    nft_netns.ping_group_range(0, 2147483647)
    nft_netns.nft(REJECT_ECHO_TO_127_0_0_3)
    probe = icmp.build(spec("127.0.0.3"), source_address=None, socket_mode=mode)
    outcome = await nft_netns.run(lambda: run_probe(probe))
    assert not outcome.success
    assert (outcome.failed_phase, outcome.reason) == ("connect", "icmp_unreachable")
    assert outcome.details.received == 0


@pytest.mark.parametrize("mode", ["raw", "dgram"])
@pytest.mark.needs_root
async def test_no_route_is_unreachable(netns, mode):
    netns.ping_group_range(0, 2147483647)
    netns.ip("route", "add", "unreachable", "198.18.7.0/24")
    probe = icmp.build(spec("198.18.7.7"), source_address=None, socket_mode=mode)
    outcome = await netns.run(lambda: run_probe(probe))
    assert (outcome.success, outcome.reason) == (False, "icmp_unreachable")
    assert outcome.details.sent == 3
    assert "198.18.7.7" in outcome.error


@pytest.mark.needs_root
async def test_source_address_is_bound(nft_netns):
    nft_netns.nft(DROP_FROM_127_0_0_5)

    async def work() -> tuple[ProbeOutcome, ProbeOutcome]:
        plain = icmp.build(spec("127.0.0.1"), source_address=None, socket_mode="raw")
        bound = icmp.build(spec("127.0.0.1", timeout="1s"), source_address="127.0.0.5",
                           socket_mode="raw")
        return await run_probe(plain), await run_probe(bound)

    plain, bound = await nft_netns.run(work)
    assert plain.success
    # Only requests *from* 127.0.0.5 are dropped: the bound probe's are.
    assert (bound.success, bound.reason) == (False, "icmp_loss")


@pytest.mark.needs_root
async def test_unusable_source_address_fails_in_connect_phase():
    need_root("raw ICMP sockets")
    probe = icmp.build(spec("127.0.0.1"), source_address="198.18.9.9", socket_mode="raw")
    with pytest.raises(ProbeFailure) as caught:
        await run_probe(probe)
    assert (caught.value.phase, caught.value.reason) == ("connect", "icmp_socket")
    assert "198.18.9.9" in caught.value.error


@pytest.mark.needs_root
async def test_sending_stops_before_the_deadline():
    # 10 packets 300 ms apart do not fit in 1 s: the probe sends what fits, then judges.
    need_root("raw ICMP sockets")
    probe = icmp.build(spec("127.0.0.1", timeout="1s", count=10, spacing="300ms",
                            max_loss=0.0), source_address=None, socket_mode="raw")
    outcome = await run_probe(probe)
    assert outcome.success
    assert 1 <= outcome.details.sent < 10
    assert outcome.details.received == outcome.details.sent


# --------------------------------------------------------------------------- packets


@pytest.mark.parametrize("payload", [b"", b"x", b"probenet" * 7])
def test_ipv4_echo_request_checksum_verifies(payload):
    packet = icmp.echo_request(socket.AF_INET, 0x1234, 7, payload)
    assert packet[0] == icmp.ICMP_ECHO_REQUEST
    assert icmp.checksum(packet) == 0  # a correct checksum sums to zero
    assert packet[4:8] == bytes([0x12, 0x34, 0, 7])


def test_checksum_known_vector():
    # RFC 1071 example: 0001 f203 f4f5 f6f7 -> sum ddf2 -> checksum 220d
    assert icmp.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_parse_echo_reply_behind_an_ip_header():
    reply = icmp.echo_request(socket.AF_INET, 99, 3, b"cookie!!payload")
    reply = bytes([icmp.ICMP_ECHO_REPLY]) + reply[1:]
    ip_header = bytes([0x45]) + bytes(8) + bytes([socket.IPPROTO_ICMP]) + bytes(10)
    message = icmp.parse_icmp(socket.AF_INET, ip_header + reply, has_ip_header=True)
    assert message == icmp.IcmpMessage(False, 99, 3, b"cookie!!payload")


def test_parse_ipv6_unreachable_quoting_our_request():
    request = icmp.echo_request(socket.AF_INET6, 77, 2, b"")
    inner_ip = (bytes([0x60]) + bytes(5) + bytes([socket.IPPROTO_ICMPV6, 64])
                + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
                + socket.inet_pton(socket.AF_INET6, "2001:db8::2"))
    error = bytes([icmp.ICMP6_DEST_UNREACH, 3, 0, 0, 0, 0, 0, 0]) + inner_ip + request
    message = icmp.parse_icmp(socket.AF_INET6, error, has_ip_header=False)
    assert message == icmp.IcmpMessage(True, 77, 2, b"", "2001:db8::2")


@given(st.binary(max_size=200), st.sampled_from([socket.AF_INET, socket.AF_INET6]),
       st.booleans())
def test_parse_never_raises_on_garbage(packet, family, has_ip_header):
    message = icmp.parse_icmp(family, packet, has_ip_header=has_ip_header)
    assert message is None or isinstance(message, icmp.IcmpMessage)
