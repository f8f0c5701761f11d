"""Routed topologies of network namespaces (routers, agents, targets) for path-trace tests.

    require_netns()                                     # from support.netns: skip or fail (CI)
    with Topology("pt") as topo:                        # every namespace removed on exit
        agent, r1, target = topo.node("agent"), topo.router("r1"), topo.node("target")
        topo.link(agent, r1); topo.link(r1, target)
        topo.install_routes()                           # static routes both ways (shortest path)
        topo.address(r1, facing=agent)                  # "198.19.x.y": r1's end toward agent
        argv = [*topo.exec_prefix(agent), sys.executable, "-m", ...]
        with cut_forwarding(topo, r1, toward=target):   # r1 drops what it forwards to target
            ...
        topo.loopback_source(r1)                        # before install_routes: one ICMP source
        rate_limit_time_exceeded(topo, r1)              # r1 answers one expired probe a minute
        route_loop(topo, r1, r2, destination=target)    # r1 <-> r2 ping-pong for target

Unlike support/netns.py, nothing here touches the root namespace: every namespace is joined
only to other namespaces of the same topology, by veth pairs. Each link gets a /30 of
198.19.0.0/16 (the upper half of the benchmarking space 198.18.0.0/15, which netns.py also
draws from; it picks blocks that overlap no root-namespace interface, and ours are never in
the root namespace, so the two cannot meet on one interface) and a /64 of IPv6 ULA space
(fd00::/8). Names carry this process's id and a counter, so parallel tests never meet.

Every namespace gets ICMP error rate limits off (`icmp_ratelimit=0`): a trace asks each hop
for several time-exceeded messages in a row and the kernel's default bucket (6, then 1/s per
destination) would look like loss. Routers forward both families; rp_filter is off so a
routing loop really loops. Unprivileged ICMP echo sockets are allowed for every group
(`ping_group_range`), which the ICMP-datagram trace method needs.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import itertools
import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from support.netns import NetnsError, _run, _unavailable

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "Link",
    "Node",
    "Topology",
    "cut_forwarding",
    "rate_limit_time_exceeded",
    "route_loop",
]

CHAIN_NET = ipaddress.IPv4Network("198.19.0.0/16")
_BLOCKS = CHAIN_NET.num_addresses // 4
_topologies = itertools.count(1)

_NODE_SYSCTLS = (
    "net.ipv4.icmp_ratelimit=0",
    "net.ipv6.icmp.ratelimit=0",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv4.ping_group_range=0 2147483647",
    # No router advertisements or autoconfiguration inside: the routes are ours alone.
    "net.ipv6.conf.default.accept_ra=0",
    "net.ipv6.conf.default.autoconf=0",
    # No duplicate address detection: link-local addresses usable at once, so neighbour
    # discovery (and the first ICMPv6 errors) does not wait a second or two.
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.all.accept_dad=0",
)
_ROUTER_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv6.conf.all.forwarding=1",
)


@dataclass(frozen=True, slots=True)
class Node:
    """One namespace of the topology."""

    name: str  # the short name the test gave ("r1")
    namespace: str  # the real namespace name (with pid and serial)
    router: bool


@dataclass(frozen=True, slots=True)
class Link:
    """A veth pair between two nodes, with an IPv4 /30 and an IPv6 /64."""

    a: Node
    b: Node
    a_interface: str
    b_interface: str
    network: ipaddress.IPv4Network
    network6: ipaddress.IPv6Network

    def end(self, node: Node) -> tuple[str, str, str]:
        """(interface, IPv4 address, IPv6 address) of `node`'s end of this link."""
        hosts = list(self.network.hosts())
        if node == self.a:
            return self.a_interface, str(hosts[0]), str(self.network6.network_address + 1)
        if node == self.b:
            return self.b_interface, str(hosts[1]), str(self.network6.network_address + 2)
        raise ValueError(f"{node.name} is not on the link {self.a.name}-{self.b.name}")

    def other(self, node: Node) -> Node:
        """The node at the other end."""
        return self.b if node == self.a else self.a


@dataclass(slots=True)
class Topology:
    """Namespaces and links, removed on exit (namespaces, veth pairs, nftables tables).

    Use as a context manager; nodes and links are created as they are declared.
    """

    tag: str
    nodes: list[Node] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    _serial: int = 0
    _tables: list[tuple[Node, str]] = field(default_factory=list)
    _sources: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._serial = next(_topologies)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    # ------------------------------------------------------------------ building

    def _add(self, name: str, *, router: bool) -> Node:
        node = Node(name=name, namespace=f"probenet-{self.tag}-{os.getpid()}-{self._serial}-{name}",
                    router=router)
        _remove_namespace(node.namespace)  # a dead process with our pid may have left it
        try:
            _run(["ip", "netns", "add", node.namespace])
        except NetnsError as exc:
            if "Operation not permitted" in str(exc) or "Permission denied" in str(exc):
                _unavailable(f"cannot create a network namespace here: {exc}")
            raise
        self.nodes.append(node)
        _run(["ip", "-n", node.namespace, "link", "set", "lo", "up"])
        for setting in (*_NODE_SYSCTLS, *(_ROUTER_SYSCTLS if router else ())):
            _run([*self.exec_prefix(node), "sysctl", "-q", "-w", setting])
        return node

    def node(self, name: str) -> Node:
        """An end host (agent or target): no forwarding."""
        return self._add(name, router=False)

    def router(self, name: str) -> Node:
        """A router: forwards IPv4 and IPv6."""
        return self._add(name, router=True)

    def link(self, a: Node, b: Node) -> Link:
        """Join two nodes by a veth pair with fresh addresses; both ends up."""
        index = len(self.links) + 1
        block_index = (os.getpid() * 257 + self._serial * 31 + index) % _BLOCKS
        network = ipaddress.IPv4Network((int(CHAIN_NET.network_address) + 4 * block_index, 30))
        # fd00:198:<pid>:<serial*256+index>::/64 -- unique per process, topology and link.
        network6 = ipaddress.IPv6Network(
            (int(ipaddress.IPv6Address("fd00:198::"))
             | (os.getpid() % 0x10000) << 80 | ((self._serial * 256 + index) % 0x10000) << 64, 64))
        # Interface names: at most 15 characters, unique only inside their namespace, but
        # the pair is created in the root namespace first, so make them unique there too.
        stem = f"pt{os.getpid() % 100000}{self._serial % 100}"
        link = Link(a=a, b=b, a_interface=f"{stem}a{index}", b_interface=f"{stem}b{index}",
                    network=network, network6=network6)
        _run(["ip", "link", "add", link.a_interface, "netns", a.namespace, "type", "veth",
              "peer", "name", link.b_interface, "netns", b.namespace])
        self.links.append(link)
        for node in (a, b):
            interface, address, address6 = link.end(node)
            inside = ["ip", "-n", node.namespace]
            _run([*inside, "addr", "add", f"{address}/30", "dev", interface])
            _run([*inside, "-6", "addr", "add", f"{address6}/64", "dev", interface, "nodad"])
            _run([*inside, "link", "set", interface, "up"])
        return link

    def loopback_source(self, node: Node) -> tuple[str, str]:
        """Give `node` a /32 (and /128) on its loopback, the source of everything it sends.

        Call before install_routes, whose routes from `node` then carry it as their preferred
        source: the ICMP errors it sends (time exceeded) come from this one address whichever
        interface they leave by, as on a router with a loopback address. Returns (v4, v6).
        """
        serial = len(self._sources) + 1
        block_index = (os.getpid() * 257 + self._serial * 31 + 200 + serial) % _BLOCKS
        address = str(CHAIN_NET.network_address + 4 * block_index + 1)
        address6 = str(ipaddress.IPv6Address(
            int(ipaddress.IPv6Address("fd00:199::")) | (os.getpid() % 0x10000) << 80
            | (self._serial % 0x10000) << 64 | serial))
        _run(["ip", "-n", node.namespace, "addr", "add", f"{address}/32", "dev", "lo"])
        _run(["ip", "-n", node.namespace, "-6", "addr", "add", f"{address6}/128", "dev", "lo"])
        self._sources[node.namespace] = (address, address6)
        return address, address6

    def install_routes(self) -> None:
        """Static routes on every node to every link's networks, along shortest paths."""
        for node in self.nodes:
            first_hop = self._first_hops(node)
            source = self._sources.get(node.namespace)
            src4 = ["src", source[0]] if source else []
            src6 = ["src", source[1]] if source else []
            for link in self.links:
                if node in (link.a, link.b):
                    continue
                nearer = min((link.a, link.b), key=lambda n: first_hop[n][1])
                via_link, _ = first_hop[nearer]
                neighbour = via_link.other(node)
                _, gateway, gateway6 = via_link.end(neighbour)
                _run(["ip", "-n", node.namespace, "route", "replace", str(link.network),
                      "via", gateway, *src4])
                _run(["ip", "-n", node.namespace, "-6", "route", "replace", str(link.network6),
                      "via", gateway6, *src6])

        self.wait_ready()

    def wait_ready(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) until every link end is up with its IPv6 link-local address.

        IPv6 configures an interface only once its carrier is up, a moment after `ip link
        set up`; probes sent before that vanish, which a trace would report as a silent hop.
        """
        deadline = time.monotonic() + timeout_s
        pending = [(node, link.end(node)[0]) for link in self.links for node in (link.a, link.b)]
        while pending:
            node, interface = pending[0]
            shown = _run(["ip", "-n", node.namespace, "-6", "addr", "show", "dev", interface])
            if "fe80" in shown and "tentative" not in shown and "state UP" in shown:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise NetnsError(f"{interface} in {node.namespace} not ready within "
                                 f"{timeout_s:g}s: {shown.strip()}")
            time.sleep(0.05)

    def _first_hops(self, source: Node) -> dict[Node, tuple[Link, int]]:
        """For each reachable node: the link leaving `source` toward it, and the distance."""
        found: dict[Node, tuple[Link, int]] = {}
        queue: collections.deque[tuple[Node, Link | None, int]] = collections.deque(
            [(source, None, 0)])
        seen = {source}
        while queue:
            current, first, distance = queue.popleft()
            for link in self.links:
                if current not in (link.a, link.b):
                    continue
                neighbour = link.other(current)
                if neighbour in seen:
                    continue
                seen.add(neighbour)
                via = first or link
                found[neighbour] = (via, distance + 1)
                queue.append((neighbour, via, distance + 1))
        return found

    # ------------------------------------------------------------------ reading

    def exec_prefix(self, node: Node) -> list[str]:
        """The argv prefix that runs a command inside `node`'s namespace."""
        return ["ip", "netns", "exec", node.namespace]

    def link_between(self, a: Node, b: Node) -> Link:
        """The link joining two neighbours."""
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link
        raise ValueError(f"no link between {a.name} and {b.name}")

    def address(self, node: Node, *, facing: Node, family: int = 4) -> str:
        """`node`'s address on its link to the neighbour `facing`."""
        _, address, address6 = self.link_between(node, facing).end(node)
        return address if family == 4 else address6

    def interface(self, node: Node, *, facing: Node) -> str:
        """`node`'s interface on its link to the neighbour `facing`."""
        return self.link_between(node, facing).end(node)[0]

    # ------------------------------------------------------------------ nftables

    def add_table(self, node: Node, table: str, ruleset: str) -> None:
        """Load an nftables ruleset (defining `table`) into `node`; removed on exit."""
        _run([*self.exec_prefix(node), "nft", "-f", "-"], stdin=ruleset)
        self._tables.append((node, table))

    def delete_table(self, node: Node, table: str) -> None:
        """Delete a table loaded by add_table (idempotent)."""
        with contextlib.suppress(ValueError):
            self._tables.remove((node, table))
        try:
            _run([*self.exec_prefix(node), "nft", "delete", "table", "inet", table])
        except NetnsError as exc:
            if "No such file or directory" not in str(exc):
                raise

    # ------------------------------------------------------------------ removal

    def remove(self) -> None:
        """Remove every table, namespace and veth pair; never raises."""
        for node, table in list(self._tables):
            with contextlib.suppress(NetnsError):
                self.delete_table(node, table)
        for node in self.nodes:
            _remove_namespace(node.namespace)
        # Deleting a namespace deletes the veth ends inside it and their peers; a pair left
        # in the root namespace by a half-made link goes here.
        for link in self.links:
            for interface in (link.a_interface, link.b_interface):
                with contextlib.suppress(NetnsError):
                    _run(["ip", "link", "del", interface])
        self.nodes.clear()
        self.links.clear()

    def namespaces(self) -> list[str]:
        """The real namespace names, to check they are gone after the test."""
        return [node.namespace for node in self.nodes]


def _remove_namespace(namespace: str) -> None:
    """SIGKILL what still runs inside (ours: nobody else knows the name), then delete it."""
    with contextlib.suppress(NetnsError):
        for word in _run(["ip", "netns", "pids", namespace]).split():
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                os.kill(int(word), signal.SIGKILL)
    with contextlib.suppress(NetnsError):
        _run(["ip", "netns", "del", namespace])


# --------------------------------------------------------------------------- faults


@contextlib.contextmanager
def cut_forwarding(topo: Topology, router: Node, *, toward: Node,
                   arriving_from: Node | None = None) -> Iterator[None]:
    """`router` silently drops every packet it would forward to its neighbour `toward`.

    With `arriving_from`, only packets that came in from that neighbour (one region's
    traffic through a shared router). The router still answers expired probes itself (the
    TTL check comes before the forward hook), so a trace shows it as the last hop that answers.
    """
    table = f"probenet_cut_{os.getpid()}_{router.name}"
    match = f'oifname "{topo.interface(router, facing=toward)}"'
    if arriving_from is not None:
        match = f'iifname "{topo.interface(router, facing=arriving_from)}" {match}'
    topo.add_table(router, table, f"""
table inet {table} {{
    chain forward {{
        type filter hook forward priority -10; policy accept;
        {match} drop
    }}
}}
""")
    try:
        yield
    finally:
        topo.delete_table(router, table)


def rate_limit_time_exceeded(topo: Topology, router: Node) -> None:
    """`router` sends one ICMP/ICMPv6 time-exceeded a minute; the rest are dropped unsent."""
    table = f"probenet_ratelimit_{os.getpid()}_{router.name}"
    topo.add_table(router, table, f"""
table inet {table} {{
    chain output {{
        type filter hook output priority -10; policy accept;
        icmp type time-exceeded limit rate over 1/minute burst 1 packets drop
        icmpv6 type time-exceeded limit rate over 1/minute burst 1 packets drop
    }}
}}
""")


def route_loop(topo: Topology, first: Node, second: Node, *, destination: Node) -> None:
    """`first` and `second` route every address of `destination` to each other."""
    for link in topo.links:
        if destination not in (link.a, link.b):
            continue
        _, address, address6 = link.end(destination)
        for here, there in ((first, second), (second, first)):
            _, gateway, gateway6 = topo.link_between(here, there).end(there)
            _run(["ip", "-n", here.namespace, "route", "replace", f"{address}/32",
                  "via", gateway])
            _run(["ip", "-n", here.namespace, "-6", "route", "replace", f"{address6}/128",
                  "via", gateway6])
