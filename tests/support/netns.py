"""Network namespaces joined to this one by a veth pair, and silent partitions (nftables).

    require_netns()                                    # skip (laptop) or fail (CI=true)
    with namespace_link("part") as link:               # removed on exit, even on failure
        link.host_address, link.address                # e.g. 198.18.0.1 here, .2 inside
        argv = [*link.exec_prefix(), sys.executable, ...]   # a process inside it
        install_partition(link)                        # packets vanish both ways: no RST
        remove_partition(link)                         # the path works again

Each link is a fresh namespace with loopback up and one veth pair to the root namespace,
addressed with a /30 of 198.18.0.0/15 (RFC 2544 benchmarking space, never routed) that no
interface here uses yet. Names carry this process's id and a counter, so tests running in
parallel never meet.

The partition drops every IP packet *arriving* over the link, on both sides (an nftables
table in the namespace and one in the root namespace, matching only this link's
interfaces): each side sends as usual and hears nothing, which is what a dead path looks like.
Dropping on output instead would not be silent: the kernel answers a local sender's dropped
datagram with EPERM. ARP is left alone (the `inet` family never sees it), so the neighbour
entries stay valid and no "host unreachable" gives the cut away either.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import pytest

from support.system import IN_CI, need_binary, need_root

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "NamespaceLink",
    "NetnsError",
    "install_partition",
    "namespace_link",
    "partitioned",
    "remove_partition",
    "require_netns",
]

BENCHMARK_NET = ipaddress.IPv4Network("198.18.0.0/15")
_BLOCKS = BENCHMARK_NET.num_addresses // 4  # /30 blocks: network, host side, inside, broadcast
_COMMAND_TIMEOUT_S = 10.0
_counter = itertools.count(1)


class NetnsError(Exception):
    """An `ip` or `nft` command failed; the message holds the command and its stderr."""


def require_netns() -> None:
    """Skip (laptop) or fail (CI=true) unless root with `ip` and `nft` installed."""
    need_root("a partition between network namespaces (ip netns, nft)")
    need_binary("ip", "iproute2")
    need_binary("nft", "nftables")


def _unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def _run(argv: list[str], *, stdin: str | None = None) -> str:
    """Run one command with a deadline; NetnsError with its stderr when it fails."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False,
                              timeout=_COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"{' '.join(argv)}: no answer within {_COMMAND_TIMEOUT_S:g}s") from exc
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True, slots=True)
class NamespaceLink:
    """One namespace and the veth pair joining it to the root namespace."""

    namespace: str
    host_interface: str  # the root namespace's end
    interface: str  # the end inside the namespace
    host_address: str
    address: str  # inside the namespace
    prefix_length: int
    table: str  # the nftables table of this link's partition (same name on both sides)

    def exec_prefix(self) -> list[str]:
        """The argv prefix that runs a command inside the namespace (`ip netns exec NS`).

        `ip netns exec` replaces itself with the command, so the child's pid is the
        command's own: signals sent to it reach the command.
        """
        return ["ip", "netns", "exec", self.namespace]


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of every interface address of the root namespace."""
    found = []
    for line in _run(["ip", "-o", "-4", "addr", "show"]).splitlines():
        words = line.split()
        if "inet" in words:
            found.append(ipaddress.IPv4Interface(words[words.index("inet") + 1]).network)
    return found


def _free_block(seed: int) -> ipaddress.IPv4Network:
    """A /30 of 198.18.0.0/15 that overlaps no interface's network here."""
    used = _networks_in_use()
    for attempt in range(256):
        index = (seed + attempt * 7919) % _BLOCKS  # a prime stride spreads the retries
        block = ipaddress.IPv4Network((int(BENCHMARK_NET.network_address) + 4 * index, 30))
        if not any(block.overlaps(network) for network in used):
            return block
    raise NetnsError("no free /30 left in 198.18.0.0/15")


def _kill_leftovers(namespace: str) -> None:
    """SIGKILL processes still inside our namespace (ours: nobody else knows its name).

    A process left inside would keep the namespace, and its veth pair, alive after
    `ip netns del`.
    """
    with contextlib.suppress(NetnsError):
        for word in _run(["ip", "netns", "pids", namespace]).split():
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                os.kill(int(word), signal.SIGKILL)


def _remove(link: NamespaceLink) -> None:
    """Remove the partition tables, the namespace and the veth pair; never raises."""
    with contextlib.suppress(NetnsError):
        remove_partition(link)
    _kill_leftovers(link.namespace)
    with contextlib.suppress(NetnsError):
        _run(["ip", "netns", "del", link.namespace])
    # Deleting the namespace deletes the pair; this only matters when it failed half-way.
    with contextlib.suppress(NetnsError):
        _run(["ip", "link", "del", link.host_interface])


def _create(link: NamespaceLink) -> None:
    try:
        _run(["ip", "netns", "add", link.namespace])
    except NetnsError as exc:
        if "Operation not permitted" in str(exc) or "Permission denied" in str(exc):
            _unavailable(f"cannot create a network namespace here: {exc}")
        raise
    _run(["ip", "link", "add", link.host_interface, "type", "veth",
          "peer", "name", link.interface, "netns", link.namespace])
    _run(["ip", "addr", "add", f"{link.host_address}/{link.prefix_length}",
          "dev", link.host_interface])
    _run(["ip", "link", "set", link.host_interface, "up"])
    inside = ["ip", "-n", link.namespace]
    _run([*inside, "addr", "add", f"{link.address}/{link.prefix_length}",
          "dev", link.interface])
    _run([*inside, "link", "set", link.interface, "up"])
    _run([*inside, "link", "set", "lo", "up"])


@contextlib.contextmanager
def namespace_link(tag: str) -> Iterator[NamespaceLink]:
    """A new namespace joined by a veth pair; everything is removed on exit.

    `tag` (a few letters) goes into the names, to tell whose namespace it is. Call
    `require_netns()` first; a kernel that refuses namespaces (an unprivileged container)
    skips the test, or fails it when CI=true.
    """
    pid = os.getpid()
    serial = next(_counter)
    block = _free_block(pid * 16 + serial)
    host_address, address = (str(a) for a in block.hosts())
    link = NamespaceLink(
        namespace=f"probenet-{tag}-{pid}-{serial}",
        # Interface names hold at most 15 characters: pid (<= 7 digits) and serial suffice.
        host_interface=f"pn{pid}h{serial}", interface=f"pn{pid}a{serial}",
        host_address=host_address, address=address, prefix_length=block.prefixlen,
        table=f"probenet_partition_{pid}_{serial}")
    _remove(link)  # leftovers of a dead process that had our pid, if any
    try:
        _create(link)
        yield link
    finally:
        _remove(link)


# --------------------------------------------------------------------------- partition


def _drop_ruleset(table: str, interface: str) -> str:
    """A table dropping every IP packet that arrives over `interface` (input and forward)."""
    # Priority -10: before any accept of another table at the default priority 0 (an
    # accept there ends only that table's verdict; a drop here is final either way).
    return f"""
table inet {table} {{
    chain input {{
        type filter hook input priority -10; policy accept;
        iifname "{interface}" drop
    }}
    chain forward {{
        type filter hook forward priority -10; policy accept;
        iifname "{interface}" drop
    }}
}}
"""


def install_partition(link: NamespaceLink) -> None:
    """Cut the link silently, both ways: every packet vanishes, nothing is answered."""
    _run(["ip", "netns", "exec", link.namespace, "nft", "-f", "-"],
         stdin=_drop_ruleset(link.table, link.interface))
    try:
        _run(["nft", "-f", "-"], stdin=_drop_ruleset(link.table, link.host_interface))
    except NetnsError:
        remove_partition(link)
        raise


def remove_partition(link: NamespaceLink) -> None:
    """Heal the link; idempotent (a table that is not there is fine, any other error raises)."""
    failures = []
    for prefix in (["ip", "netns", "exec", link.namespace], []):
        try:
            _run([*prefix, "nft", "delete", "table", "inet", link.table])
        except NetnsError as exc:
            if "No such file or directory" not in str(exc):
                failures.append(str(exc))
    if failures:
        raise NetnsError("; ".join(failures))


@contextlib.contextmanager
def partitioned(link: NamespaceLink) -> Iterator[None]:
    """The link cut for the duration of the block, healed on exit (even on failure)."""
    install_partition(link)
    try:
        yield
    finally:
        remove_partition(link)
