"""Where the path breaks: per-region path traces and an outage's regions in, a summary out.

Pure: no I/O, no clock. `summarize_paths` takes one path per region (the hop addresses in
TTL order, "" where no hop answered, and whether the destination answered) and the outage's
failing (down) and healthy (up) regions, and returns per region the last hop that answered,
and the divergence when there is one:

- `after_hop`: the deepest address on every failing region's path and on every healthy
  region's path, where every failing path stops (its last answering hop) and every healthy
  path goes on (a later answering hop, or the destination): "paths from ap-south and
  sa-east stop after 198.18.3.1; eu-central and us-east pass it".
- failing that, `before_hop`: the first address on every healthy path that no failing path
  passes, right after a hop that failing and healthy paths share (the failing paths having
  no shared last hop): "paths from ap-south and sa-east stop before 198.18.4.1; eu-central
  passes it". With a single healthy path that shares no hop with the failing ones there is
  no divergence (its hops may be its own region's routers; the failing paths' own last hops
  are named instead).
- When addresses differ but prefixes match (/24 for IPv4, /48 for IPv6) the same is tried on
  networks (`level` "network").
- With no healthy region traced, the last hop shared by every failing region is reported
  ("paths from ap-south and sa-east stop after ..."), the only evidence there is.

A region without a path is listed under `missing` and takes no part; a failing region whose
path reached the destination means the path is not where it breaks: no divergence.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

    from probenet.v1 import probenet_pb2 as pb

__all__ = ["Divergence", "PathSummary", "RegionPath", "RegionSummary", "network_of",
           "summarize_paths"]

_V4_PREFIX = 24
_V6_PREFIX = 48


@dataclass(frozen=True, slots=True)
class RegionPath:
    """One region's path: hop addresses in TTL order ("" where none answered), reached."""

    hops: tuple[str, ...]
    reached: bool = False

    @classmethod
    def from_trace(cls, trace: pb.PathTrace) -> RegionPath:
        """The path of a `PathTrace` (hops sorted by TTL)."""
        ordered = sorted(trace.hops, key=lambda hop: hop.ttl)
        return cls(tuple(hop.address for hop in ordered), reached=trace.reached)

    @classmethod
    def from_json(cls, trace: Mapping[str, Any]) -> RegionPath:
        """The path of a trace in its served JSON form ({"hops": [...], "reached": ...})."""
        hops = trace.get("hops") or []
        ordered = sorted(hops, key=lambda hop: int(hop.get("ttl", 0)))
        return cls(tuple(str(hop.get("address") or "") for hop in ordered),
                   reached=bool(trace.get("reached")))

    @property
    def answered(self) -> tuple[str, ...]:
        """The addresses that answered, in order, repeats dropped."""
        seen: dict[str, None] = {}
        for address in self.hops:
            if address and address not in seen:
                seen[address] = None
        return tuple(seen)

    @property
    def last_hop(self) -> str | None:
        """The last address that answered, None when none did."""
        answered = [address for address in self.hops if address]
        return answered[-1] if answered else None


@dataclass(frozen=True, slots=True)
class RegionSummary:
    """One region's line of the summary."""

    state: str  # "down", "up" or "unknown"
    last_hop: str | None
    reached: bool
    hops: int

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"state": self.state, "last_hop": self.last_hop, "reached": self.reached,
                "hops": self.hops}


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where failing paths part from healthy ones."""

    level: str  # "address" or "network"
    after_hop: str | None  # failing paths stop after it, healthy ones pass it
    before_hop: str | None  # the first hop healthy paths reach and failing ones do not
    failing: tuple[str, ...]
    healthy: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON form ("address" or "network" names the hop the sentence is about)."""
        hop = self.after_hop if self.after_hop is not None else self.before_hop
        return {"level": self.level, self.level: hop, "after_hop": self.after_hop,
                "before_hop": self.before_hop, "failing": list(self.failing),
                "healthy": list(self.healthy)}


@dataclass(frozen=True, slots=True)
class PathSummary:
    """The summary of an outage's paths."""

    regions: Mapping[str, RegionSummary]
    divergence: Divergence | None
    missing: tuple[str, ...]
    text: str
    public_text: str = field(default="")

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"text": self.text, "public_text": self.public_text,
                "divergence": self.divergence.to_json() if self.divergence else None,
                "regions": {region: line.to_json() for region, line in self.regions.items()},
                "missing": list(self.missing)}


def network_of(address: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) network of an address; the address itself if unparsable."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    prefix = _V4_PREFIX if parsed.version == 4 else _V6_PREFIX
    return str(ipaddress.ip_network(f"{parsed}/{prefix}", strict=False))


def _mapped(path: RegionPath, key: Callable[[str], str]) -> RegionPath:
    return RegionPath(tuple(key(hop) if hop else "" for hop in path.hops), path.reached)


def _passes(path: RegionPath, hop: str) -> bool:
    """The path has an answering hop after `hop` (other than `hop`), or reached."""
    answered = path.answered
    if hop not in answered:
        return False
    return path.reached or answered.index(hop) < len(answered) - 1


def _common(paths: Iterable[RegionPath]) -> set[str]:
    sets = [set(path.answered) for path in paths]
    return set.intersection(*sets) if sets else set()


def _first_missed(failing: Sequence[RegionPath], healthy: Sequence[RegionPath]) -> str | None:
    """The first hop on every healthy path past the last one any failing path reaches."""
    common = _common(healthy)
    shared = [hop for hop in healthy[0].answered if hop in common]
    passed = set().union(*(path.answered for path in failing))
    reached = [index for index, hop in enumerate(shared) if hop in passed]
    if not reached and len(healthy) < 2:
        # The failing paths share no hop with the one healthy path: its hops may be its own
        # (its region's first routers), which the failing paths never were to pass.
        return None
    after = reached[-1] + 1 if reached else 0
    return shared[after] if after < len(shared) else None


def _find(failing: Sequence[RegionPath], healthy: Sequence[RegionPath]
          ) -> tuple[str | None, str | None]:
    """(after_hop, before_hop) on these paths, either may be None."""
    if any(path.reached for path in failing):
        return None, None
    stops = {path.last_hop for path in failing}
    stop = stops.pop() if len(stops) == 1 else None
    if not healthy:
        return stop, None
    if stop is not None and all(_passes(path, stop) for path in healthy):
        return stop, _first_missed(failing, healthy)
    return None, _first_missed(failing, healthy)


def _join(regions: Sequence[str]) -> str:
    if len(regions) <= 1:
        return "".join(regions)
    return f"{', '.join(regions[:-1])} and {regions[-1]}"


def _subject(failing: int) -> tuple[str, str]:
    """("path", "stops") for one failing region, ("paths", "stop") for several."""
    return ("path", "stops") if failing == 1 else ("paths", "stop")


def _own_stops(names: Sequence[str], failing: Sequence[RegionPath]) -> tuple[str, str]:
    """(text, public_text) when the failing paths share no hop with the healthy ones."""
    subject, stop = _subject(len(names))
    if all(path.last_hop is None for path in failing):
        get = "gets" if len(names) == 1 else "get"
        text = f"{subject} from {_join(names)} {get} no answer from any hop"
        return text, text
    stops = _join([f"{path.last_hop or 'no hop'} ({name})"
                   for name, path in zip(names, failing, strict=True)])
    text = (f"{subject} from {_join(names)} {stop} after {stops}, "
            f"a hop the healthy regions' paths do not pass")
    public = f"{subject} from {_join(names)} {stop} inside the network before the target"
    return text, public


def _sentences(divergence: Divergence) -> tuple[str, str]:
    """(text, public_text) of a divergence; the public one names no address."""
    failing, healthy = _join(divergence.failing), _join(divergence.healthy)
    subject, stop = _subject(len(divergence.failing))
    passes = "passes" if len(divergence.healthy) == 1 else "pass"
    where = "" if divergence.level == "address" else "network "
    if divergence.after_hop is not None:
        text = f"{subject} from {failing} {stop} after {where}{divergence.after_hop}"
        if healthy:
            text += f"; {healthy} {passes} it"
    else:
        text = f"{subject} from {failing} {stop} before {where}{divergence.before_hop}"
        text += f"; {healthy} {passes} it"
    public = f"{subject} from {failing} {stop} inside the network before the target"
    if healthy:
        public += f"; {healthy} {'reaches' if passes == 'passes' else 'reach'} past that point"
    return text, public


def summarize_paths(paths: Mapping[str, RegionPath | None], *, down: Collection[str],
                    up: Collection[str]) -> PathSummary:
    """The summary of an outage's paths (module docstring).

    `paths`: region -> its path (one per region: the caller picks the agent's trace), None or
    absent when the region has none. `down`: the outage's failing regions; `up`: the healthy
    ones. A region in `paths` but in neither is listed with state "unknown" and compared with
    nothing.
    """
    down_set, up_set = set(down), set(up)
    named = sorted(set(paths) | down_set | up_set)
    regions: dict[str, RegionSummary] = {}
    missing: list[str] = []
    for region in named:
        state = "down" if region in down_set else "up" if region in up_set else "unknown"
        path = paths.get(region)
        if path is None:
            if state != "unknown":
                missing.append(region)
            continue
        regions[region] = RegionSummary(state, path.last_hop, path.reached, len(path.hops))
    failing_names = tuple(r for r in named if r in down_set and paths.get(r) is not None)
    healthy_names = tuple(r for r in named if r in up_set and r not in down_set
                          and paths.get(r) is not None)
    failing = [p for r in failing_names if (p := paths.get(r)) is not None]
    healthy = [p for r in healthy_names if (p := paths.get(r)) is not None]
    divergence: Divergence | None = None
    if failing:
        found = [(level, *_find([_mapped(p, key) for p in failing],
                                [_mapped(p, key) for p in healthy]))
                 for level, key in (("address", str), ("network", network_of))]
        # A shared last hop (at either level) says more than a hop the failing paths miss.
        ranked = [f for f in found if f[1] is not None] + [f for f in found if f[2] is not None]
        if ranked:
            level, after, before = ranked[0]
            divergence = Divergence(level, after, before, failing_names, healthy_names)
    if divergence is not None:
        text, public = _sentences(divergence)
    elif not failing:
        text = public = "no trace from a failing region"
    elif any(path.reached for path in failing):
        text = public = "the failing regions' paths reach the target: the path is not the cause"
    elif healthy and not any(set(f.answered) & set(h.answered) for f in failing for h in healthy):
        text, public = _own_stops(failing_names, failing)
    else:
        text = public = "no hop separates the failing regions' paths from the healthy ones"
    return PathSummary(regions, divergence, tuple(missing), text, public)
