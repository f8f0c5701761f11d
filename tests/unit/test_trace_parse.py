"""The pure parts of path traces: sock_extended_err parsing, loop detection, stop rules."""

from __future__ import annotations

import socket
import struct

import pytest

from probenet.agent.trace import (
    SILENT_HOPS_LIMIT,
    TraceHop,
    TraceResult,
    detect_loop,
    parse_extended_err,
    parse_raw_icmp,
    stop_reason,
)


def sockaddr_in(address: str) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", 0) + \
        socket.inet_pton(socket.AF_INET, address) + bytes(8)


def sockaddr_in6(address: str) -> bytes:
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 0, 0) + \
        socket.inet_pton(socket.AF_INET6, address) + struct.pack("=I", 0)


def extended_err(err: int, origin: int, type_: int, code: int, *, info: int = 0,
                 data: int = 0) -> bytes:
    return struct.pack("=IBBBBII", err, origin, type_, code, 0, info, data)


def test_time_exceeded_from_an_ipv4_router():
    ee = parse_extended_err(extended_err(113, 2, 11, 0) + sockaddr_in("192.0.2.7"))
    assert (ee.errno, ee.origin, ee.type, ee.code) == (113, 2, 11, 0)
    assert ee.offender == "192.0.2.7"
    assert ee.time_exceeded
    assert ee.unreachable == ""


def test_port_unreachable_from_an_ipv4_destination():
    ee = parse_extended_err(extended_err(111, 2, 3, 3) + sockaddr_in("198.51.100.1"))
    assert not ee.time_exceeded
    assert ee.unreachable == "port_unreachable"
    assert ee.offender == "198.51.100.1"


def test_ipv6_time_exceeded_and_admin_prohibited():
    exceeded = parse_extended_err(extended_err(113, 3, 3, 0) + sockaddr_in6("2001:db8::1"))
    assert exceeded.time_exceeded
    assert exceeded.offender == "2001:db8::1"
    prohibited = parse_extended_err(extended_err(13, 3, 1, 1) + sockaddr_in6("2001:db8::2"))
    assert prohibited.unreachable == "admin_prohibited"
    assert not prohibited.time_exceeded


def test_info_and_data_are_read_in_native_order():
    ee = parse_extended_err(extended_err(90, 1, 0, 0, info=1400, data=7) + bytes(16))
    assert (ee.info, ee.data) == (1400, 7)
    assert ee.offender == ""  # AF_UNSPEC: no offender
    assert ee.describe() == "local_error_emsgsize"


def test_a_short_buffer_is_a_value_error():
    with pytest.raises(ValueError, match="sock_extended_err needs 16 bytes, got 15"):
        parse_extended_err(bytes(15))


def test_a_truncated_offender_gives_no_address():
    ee = parse_extended_err(extended_err(113, 2, 11, 0) + sockaddr_in("192.0.2.7")[:6])
    assert ee.offender == ""


@pytest.mark.parametrize(("addresses", "looped"), [
    (["a", "b", "c"], False),
    (["a", "b", "b"], False),
    (["a", "b", "b", "b"], True),
    (["a", "", "", ""], False),
    (["a", "b", "c", "b", "c"], True),
    (["x", "a", "b", "c", "a", "b", "c"], True),
    (["a", "b", "", "a", "b", ""], False),
    (["a", "b", "a", "c"], False),
])
def test_loop_detection(addresses, looped):
    assert detect_loop(addresses) is looped


def hop(ttl: int, address: str = "", *, error: str = "") -> TraceHop:
    received = 1 if address else 0
    return TraceHop(ttl=ttl, address=address, sent=3, received=received,
                    rtts=(0.001,) * received, error=error)


def test_stop_rules():
    dest = "10.0.0.9"
    assert stop_reason([], dest, 30) == ""
    assert stop_reason([hop(1, "10.0.0.1")], dest, 30) == ""
    assert stop_reason([hop(1, "10.0.0.1"), hop(2, "10.0.0.9")], dest, 30) == "reached"
    assert stop_reason([hop(1, "10.0.0.1", error="host_unreachable")], dest, 30) == \
        "unreachable"
    assert stop_reason([hop(1, "10.0.0.1"), hop(2, "10.0.0.2")], dest, 2) == "max_hops"
    looping = [hop(1, "10.0.0.1"), hop(2, "10.0.0.2"), hop(3, "10.0.0.3"),
               hop(4, "10.0.0.2"), hop(5, "10.0.0.3")]
    assert stop_reason(looping, dest, 30) == "loop"


def test_silent_hops_stop_after_the_limit():
    dest = "10.0.0.9"
    hops = [hop(1, "10.0.0.1")] + [hop(t) for t in range(2, SILENT_HOPS_LIMIT + 1)]
    assert stop_reason(hops, dest, 30) == ""
    hops.append(hop(SILENT_HOPS_LIMIT + 1))
    assert stop_reason(hops, dest, 30) == "silent"


def test_ipv6_destination_is_compared_as_an_address():
    assert stop_reason([hop(1, "2001:db8:0::1")], "2001:db8::1", 30) == "reached"


def test_json_and_proto_shapes():
    result = TraceResult(target="t", address="10.0.0.9", method="udp", max_hops=8,
                         probes_per_hop=2,
                         hops=(TraceHop(1, "10.0.0.1", 2, 1, (0.002,), ""),
                               TraceHop(2, "10.0.0.9", 2, 2, (0.003, 0.004), "")),
                         reached=True, stop_reason="reached")
    assert result.to_json() == {
        "hops": [{"ttl": 1, "address": "10.0.0.1", "sent": 2, "received": 1,
                  "rtt_seconds": [0.002], "error": ""},
                 {"ttl": 2, "address": "10.0.0.9", "sent": 2, "received": 2,
                  "rtt_seconds": [0.003, 0.004], "error": ""}],
        "reached": True, "stop_reason": "reached", "error": ""}
    proto = result.to_proto("failure")
    assert (proto.trigger, proto.method, proto.max_hops, proto.probes_per_hop,
            proto.reached, proto.stop_reason) == ("failure", "udp", 8, 2, True, "reached")
    assert [(h.ttl, h.address, h.sent, h.received, list(h.rtt_seconds)) for h in proto.hops] \
        == [(1, "10.0.0.1", 2, 1, [0.002]), (2, "10.0.0.9", 2, 2, [0.003, 0.004])]


def ipv4_header(proto: int, src: str, dst: str) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, proto, 0,
                       socket.inet_pton(socket.AF_INET, src), socket.inet_pton(socket.AF_INET, dst))


def ipv6_header(next_header: int, src: str, dst: str) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, 0, next_header, 64,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst))


def echo(type_: int, ident: int, seq: int) -> bytes:
    return struct.pack("!BBHHH", type_, 0, 0, ident, seq)


def test_raw_ipv4_echo_reply_time_exceeded_and_unreachable():
    outer = ipv4_header(1, "192.0.2.1", "192.0.2.9")
    quoted = ipv4_header(1, "192.0.2.9", "198.51.100.1") + echo(8, 0x1234, 7)
    assert parse_raw_icmp(outer + echo(0, 0x1234, 5) + b"x", socket.AF_INET, 0x1234) == (
        "echo_reply", 5, "")
    assert parse_raw_icmp(outer + struct.pack("!BBHI", 11, 0, 0, 0) + quoted,
                          socket.AF_INET, 0x1234) == ("time_exceeded", 7, "")
    assert parse_raw_icmp(outer + struct.pack("!BBHI", 3, 1, 0, 0) + quoted,
                          socket.AF_INET, 0x1234) == ("error", 7, "host_unreachable")
    # Someone else's echo, our own request seen on loopback, a truncated packet: ignored.
    assert parse_raw_icmp(outer + echo(0, 0x9999, 5), socket.AF_INET, 0x1234) is None
    assert parse_raw_icmp(outer + echo(8, 0x1234, 5), socket.AF_INET, 0x1234) is None
    assert parse_raw_icmp(outer[:10], socket.AF_INET, 0x1234) is None
    assert parse_raw_icmp(outer + struct.pack("!BBHI", 11, 0, 0, 0) + quoted[:24],
                          socket.AF_INET, 0x1234) is None


def test_raw_ipv6_time_exceeded_quotes_our_echo_request():
    quoted = ipv6_header(58, "2001:db8::9", "2001:db8::1") + echo(128, 0x4321, 3)
    assert parse_raw_icmp(struct.pack("!BBHI", 3, 0, 0, 0) + quoted, socket.AF_INET6,
                          0x4321) == ("time_exceeded", 3, "")
    assert parse_raw_icmp(struct.pack("!BBHI", 1, 4, 0, 0) + quoted, socket.AF_INET6,
                          0x4321) == ("error", 3, "port_unreachable")
    assert parse_raw_icmp(echo(129, 0x4321, 9), socket.AF_INET6, 0x4321) == (
        "echo_reply", 9, "")
    udp_quoted = ipv6_header(17, "2001:db8::9", "2001:db8::1") + bytes(8)
    assert parse_raw_icmp(struct.pack("!BBHI", 3, 0, 0, 0) + udp_quoted, socket.AF_INET6,
                          0x4321) is None
