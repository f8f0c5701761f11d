"""Issue 16: path traces through real routers, in network namespaces built by each test.

Each test builds its own routed topology (tests/support/netns_chain.py: namespaces joined by
veth pairs, /30s of 198.19.0.0/16 and /64s of fd00::/8, static routes both ways, routers
forwarding) and runs the real engine inside the agent's namespace:
`python -m probenet.agent.trace HOST --json` (exit 0 reached, 1 not reached, 2 error). Faults
are real too: nftables drops on a router's forward hook (a cut link), an nftables limit on a
router's ICMP time-exceeded output (rate limiting), routes pointing two routers at each other
(a loop). Every namespace, veth pair and table is removed on exit, even on failure.

Without root (or without `ip`/`nft`) the tests skip with the reason; with CI=true they fail.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from probenet.collector.pathsummary import RegionPath, summarize_paths
from support.netns import require_netns
from support.netns_chain import (
    Topology,
    cut_forwarding,
    rate_limit_time_exceeded,
    route_loop,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from support.netns_chain import Node

pytestmark = [pytest.mark.needs_root, pytest.mark.timeout(30)]

TRACE_DEADLINE_S = 25.0
EXIT_REACHED, EXIT_NOT_REACHED, EXIT_ERROR = 0, 1, 2
METHODS = ["udp", "icmp"]
FAMILIES = [4, 6]


def run_trace(topo: Topology, node: Node, host: str, *args: str) -> tuple[int, dict[str, Any]]:
    """Run the engine's entry point inside `node`; (exit status, parsed JSON)."""
    argv = [*topo.exec_prefix(node), sys.executable, "-m", "probenet.agent.trace", host,
            "--json", "--hop-timeout", "0.5s", "--max-hops", "12", *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=TRACE_DEADLINE_S)
    assert "Traceback" not in done.stderr, done.stderr
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"exit {done.returncode}, not JSON: {done.stdout!r} "
                             f"stderr {done.stderr!r}") from exc
    return done.returncode, result


def answered(result: dict[str, Any]) -> list[str]:
    """The address of each hop in TTL order ("" where none answered)."""
    return [hop["address"] or "" for hop in sorted(result["hops"], key=lambda h: h["ttl"])]


def last_answering(result: dict[str, Any]) -> str | None:
    addresses = [a for a in answered(result) if a]
    return addresses[-1] if addresses else None


@pytest.fixture
def chain() -> Iterator[tuple[Topology, dict[str, Node]]]:
    """agent -> r1 -> r2 -> r3 -> target, routed both ways."""
    require_netns()
    with Topology("pt") as topo:
        names = ["agent", "r1", "r2", "r3", "target"]
        nodes = {name: (topo.router(name) if name.startswith("r") else topo.node(name))
                 for name in names}
        for a, b in itertools.pairwise(names):
            topo.link(nodes[a], nodes[b])
        topo.install_routes()
        yield topo, nodes
        created = topo.namespaces()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    assert not [ns for ns in created if ns in listed], "namespaces left behind"


def chain_addresses(topo: Topology, n: dict[str, Node], family: int) -> list[str]:
    """r1, r2, r3 (the address facing the agent) and the target, in order."""
    return [topo.address(n["r1"], facing=n["agent"], family=family),
            topo.address(n["r2"], facing=n["r1"], family=family),
            topo.address(n["r3"], facing=n["r2"], family=family),
            topo.address(n["target"], facing=n["r3"], family=family)]


# --------------------------------------------------------------------------- 1. every hop


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_trace_lists_every_router_and_reaches_the_target(
        chain: tuple[Topology, dict[str, Node]], method: str, family: int) -> None:
    topo, n = chain
    expected = chain_addresses(topo, n, family)
    status, result = run_trace(topo, n["agent"], expected[-1], "--method", method,
                               "--probes", "3")
    assert result["error"] in ("", None), result
    assert status == EXIT_REACHED, result
    assert result["reached"] is True
    assert result["stop_reason"] == "reached"
    assert answered(result) == expected
    for hop in result["hops"]:
        assert hop["sent"] == 3, hop
        assert hop["received"] == 3, hop
        # One round-trip time per answered probe.
        assert len(hop["rtt_seconds"]) == 3, hop
        assert all(rtt > 0 for rtt in hop["rtt_seconds"]), hop
    assert [hop["ttl"] for hop in result["hops"]] == [1, 2, 3, 4]


# --------------------------------------------------------------------------- 2. a cut link


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_cut_link_stops_the_trace_after_the_last_router_before_it(
        chain: tuple[Topology, dict[str, Node]], method: str, family: int) -> None:
    topo, n = chain
    r1, r2, _r3, target = chain_addresses(topo, n, family)
    with cut_forwarding(topo, n["r2"], toward=n["r3"]):
        status, result = run_trace(topo, n["agent"], target, "--method", method)
    assert status == EXIT_NOT_REACHED, result
    assert result["reached"] is False
    assert answered(result)[:2] == [r1, r2]
    assert last_answering(result) == r2
    # Nothing behind r2 answers: the engine gives up on silence, not at max_hops.
    assert result["stop_reason"] == "silent", result
    assert len(result["hops"]) < 12
    # And healed, the same trace reaches again (the cut was the cause, nothing else).
    status, result = run_trace(topo, n["agent"], target, "--method", method)
    assert status == EXIT_REACHED, result


# --------------------------------------------------------------------------- 3. two regions


def test_two_regions_divergence_names_the_failing_region_and_its_last_hop() -> None:
    """eu-west (agent A behind ra) passes the shared core; ap-south (B behind rb) stops there.

        agent-a -- ra --\
                         core -- target        core drops what arrives from rb for target
        agent-b -- rb --/

    core answers from one loopback address (preferred source on its routes), so both
    regions see the same address for it, as with a real router.
    """
    require_netns()
    with Topology("pr") as topo:
        a, b = topo.node("agent-a"), topo.node("agent-b")
        ra, rb, core = topo.router("ra"), topo.router("rb"), topo.router("core")
        target = topo.node("target")
        for x, y in ((a, ra), (b, rb), (ra, core), (rb, core), (core, target)):
            topo.link(x, y)
        core_address, _ = topo.loopback_source(core)
        topo.install_routes()
        destination = topo.address(target, facing=core)
        ra_address = topo.address(ra, facing=a)
        rb_address = topo.address(rb, facing=b)
        with cut_forwarding(topo, core, toward=target, arriving_from=rb):
            status_a, trace_a = run_trace(topo, a, destination)
            status_b, trace_b = run_trace(topo, b, destination)
    assert status_a == EXIT_REACHED, trace_a
    assert answered(trace_a) == [ra_address, core_address, destination]
    assert status_b == EXIT_NOT_REACHED, trace_b
    assert answered(trace_b)[:2] == [rb_address, core_address]
    assert last_answering(trace_b) == core_address

    summary = summarize_paths({"eu-west": RegionPath.from_json(trace_a),
                               "ap-south": RegionPath.from_json(trace_b)},
                              down=["ap-south"], up=["eu-west"])
    assert summary.regions["ap-south"].last_hop == core_address
    assert summary.regions["eu-west"].reached is True
    assert summary.divergence is not None, summary.text
    assert summary.divergence.after_hop == core_address
    assert summary.text == f"path from ap-south stops after {core_address}; eu-west passes it"


# --------------------------------------------------------------------------- 4. bad input


def test_target_that_resolves_to_nothing_is_an_error_with_exit_2(
        chain: tuple[Topology, dict[str, Node]]) -> None:
    topo, n = chain
    status, result = run_trace(topo, n["agent"], "nothing.invalid")
    assert status == EXIT_ERROR, result
    assert "nothing.invalid" in result["error"], result
    assert result["reached"] is False
    assert result["hops"] == []


@pytest.mark.parametrize("family", FAMILIES)
def test_router_rate_limiting_time_exceeded_shows_loss_and_the_trace_goes_on(
        chain: tuple[Topology, dict[str, Node]], family: int) -> None:
    topo, n = chain
    r1, r2, r3, target = chain_addresses(topo, n, family)
    rate_limit_time_exceeded(topo, n["r2"])  # one answer a minute, then silence
    status, result = run_trace(topo, n["agent"], target, "--probes", "3")
    assert status == EXIT_REACHED, result
    assert answered(result) == [r1, r2, r3, target]
    by_ttl = {hop["ttl"]: hop for hop in result["hops"]}
    assert (by_ttl[2]["sent"], by_ttl[2]["received"]) == (3, 1), by_ttl[2]
    for ttl in (1, 3, 4):
        assert by_ttl[ttl]["received"] == 3, by_ttl[ttl]


@pytest.mark.parametrize("family", FAMILIES)
def test_routing_loop_stops_with_loop_before_max_hops(
        chain: tuple[Topology, dict[str, Node]], family: int) -> None:
    topo, n = chain
    r1, r2, _r3, target = chain_addresses(topo, n, family)
    route_loop(topo, n["r1"], n["r2"], destination=n["target"])
    r1_toward_r2 = topo.address(n["r1"], facing=n["r2"], family=family)
    status, result = run_trace(topo, n["agent"], target, "--max-hops", "30")
    assert status == EXIT_NOT_REACHED, result
    assert result["stop_reason"] == "loop", result
    assert len(result["hops"]) < 30
    # The probes bounce r1 -> r2 -> r1 -> ...; r2 answers from its address toward the agent,
    # r1 from that one too (IPv4: the way its reply leaves) or from its address toward r2
    # (IPv6: the way the expired probe came in).
    addresses = answered(result)
    assert addresses[:2] == [r1, r2], addresses
    assert addresses[2:4] in ([r1, r2], [r1_toward_r2, r2]), addresses
    assert set(addresses) <= {r1, r2, r1_toward_r2}, addresses


def test_topology_is_removed_even_when_the_test_fails() -> None:
    require_netns()
    seen: dict[str, list[str]] = {}

    def build_then_fail() -> None:
        with Topology("pg") as topo:
            a, r = topo.node("a"), topo.router("r")
            topo.link(a, r)
            seen["namespaces"] = topo.namespaces()
            seen["interfaces"] = [topo.interface(a, facing=r), topo.interface(r, facing=a)]
            topo.add_table(r, "probenet_gone", "table inet probenet_gone { }\n")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_then_fail()
    created, interfaces = seen["namespaces"], seen["interfaces"]
    assert len(created) == 2
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    assert not [ns for ns in created if ns in listed]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                           check=True).stdout
    assert not [i for i in interfaces if f" {i}@" in links or f" {i}:" in links]
