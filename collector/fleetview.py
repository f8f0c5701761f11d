"""The merged fleet view of sharded collector groups: pure merge rules, no I/O.

With `sharding.peers`, /api/v1/fleet/{targets,outages,agents} (collector/fleetview_api.py)
asks every other group for its /api/v1/{targets,outages,agents} and merges the answers with
the local one here. Each merged answer is an object:

    {"targets": [...], "shards": [{shard, source, ok, error?}, ...], "complete": bool}

(`outages` and `agents` likewise, under their own key). Its items are the local endpoint's
items, each tagged with `"shard": N`, the group it comes from. `shards` has one entry per
group (0 .. shards-1, in order): `source` is "local" or the peer URL that answered (null when
none did), `error` says why a group is missing. `complete` is true when every group answered.

Merge rules:

- targets: every group's, tagged; groups hold disjoint probes, so nothing is dropped (if two
  groups report one probe, after a change of `shards`, both entries are kept, each with its
  shard); ordered by (probe, shard);
- outages: the union, deduplicated by `id` (an id in several groups: the local group's
  record is kept, else the lowest shard's); newest first, by (started_at desc, id) as the
  local endpoint orders them, cut to the request's `limit`;
- agents: every agent says hello to every group, so each appears once, by `id`, with
  `shards`: the groups that know it, in order. Its other fields, and `shard`, are those of
  the local group when it knows the agent, else of the lowest shard that does: one group's
  coherent view of the agent (its `connected`, `stale` and `last_seen` are that group's),
  never a mix of fields from different collectors. Ordered by id.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

Resource = Literal["targets", "outages", "agents"]
RESOURCES: tuple[Resource, ...] = ("targets", "outages", "agents")
LOCAL = "local"
# The field each resource's items are keyed by (and must carry as a string).
_KEY_FIELD: dict[str, str] = {"targets": "probe", "outages": "id", "agents": "id"}
# An error text taken from a peer is cut to this many characters.
MAX_ERROR_CHARS = 300


class PeerAnswerError(ValueError):
    """A peer's body is not a /api/v1/{resource} answer (not a list of proper items)."""


@dataclass(frozen=True, slots=True)
class GroupAnswer:
    """One group's answer: its items (JSON objects), or why there are none."""

    shard: int
    source: str | None  # "local", or the peer URL that answered (None: none did)
    items: Sequence[dict[str, Any]] | None  # None: the group did not answer
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the group answered."""
        return self.items is not None

    @classmethod
    def missing(cls, shard: int, error: str) -> GroupAnswer:
        """A group that did not answer, and why."""
        return cls(shard, None, None, cut(error))

    def status(self) -> dict[str, Any]:
        """The group's entry of the answer's `shards` list."""
        entry: dict[str, Any] = {"shard": self.shard, "source": self.source, "ok": self.ok}
        if not self.ok:
            entry["error"] = self.error or "no answer"
        return entry


def cut(text: str) -> str:
    """`text` cut to MAX_ERROR_CHARS (peer errors are shown, not trusted to be short)."""
    return text if len(text) <= MAX_ERROR_CHARS else f"{text[:MAX_ERROR_CHARS]}..."


def started_at_key(value: Any) -> float:
    """An outage's `started_at` (RFC 3339) as unix seconds; -inf when it is not one."""
    if not isinstance(value, str):
        return -math.inf
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return -math.inf
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def peer_items(resource: Resource, body: Any) -> list[dict[str, Any]]:
    """A peer's decoded JSON body as items; PeerAnswerError when it is no such answer.

    The answer must be a list of objects, each with its key field (`probe` or `id`) a string.
    """
    if not isinstance(body, list):
        raise PeerAnswerError(f"not a JSON list but {type(body).__name__}")
    key = _KEY_FIELD[resource]
    for index, item in enumerate(body):
        if not isinstance(item, dict) or not isinstance(item.get(key), str):
            raise PeerAnswerError(f"item {index} is not an object with a string {key!r}")
    return body


def _tagged(item: dict[str, Any], shard: int) -> dict[str, Any]:
    return {**item, "shard": shard}


def _preference(answers: Iterable[GroupAnswer]) -> list[GroupAnswer]:
    """The groups that answered, the local one first, then by shard."""
    return sorted((a for a in answers if a.ok), key=lambda a: (a.source != LOCAL, a.shard))


def merge(resource: Resource, answers: Sequence[GroupAnswer], *, shards: int,
          limit: int | None = None) -> dict[str, Any]:
    """The merged answer of `resource` from the groups' `answers` (see the module docstring).

    A shard in 0 .. shards-1 without an answer in `answers` is listed as not configured
    (and makes the answer incomplete). `limit` cuts the outages (None: no cut).
    """
    by_shard = {answer.shard: answer for answer in answers}
    groups = [by_shard.get(shard) or GroupAnswer.missing(
        shard, "no peer configured for this shard (sharding.peers)")
        for shard in range(shards)]
    groups.extend(answer for shard, answer in sorted(by_shard.items()) if shard >= shards)
    if resource == "targets":
        items = _merge_targets(groups)
    elif resource == "outages":
        items = _merge_outages(groups, limit)
    else:
        items = _merge_agents(groups)
    return {resource: items, "shards": [g.status() for g in groups],
            "complete": all(g.ok for g in groups)}


def _merge_targets(groups: Sequence[GroupAnswer]) -> list[dict[str, Any]]:
    tagged = [_tagged(item, g.shard) for g in groups for item in g.items or ()]
    tagged.sort(key=lambda item: (item["probe"], item["shard"]))
    return tagged


def _merge_outages(groups: Sequence[GroupAnswer], limit: int | None) -> list[dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for group in _preference(groups):
        for item in group.items or ():
            records.setdefault(item["id"], _tagged(item, group.shard))
    merged = sorted(records.values(),
                    key=lambda r: (-started_at_key(r.get("started_at")), r["id"]))
    return merged if limit is None else merged[:limit]


def _merge_agents(groups: Sequence[GroupAnswer]) -> list[dict[str, Any]]:
    agents: dict[str, dict[str, Any]] = {}
    known_by: dict[str, list[int]] = {}
    for group in _preference(groups):
        for item in group.items or ():
            agent_id = item["id"]
            agents.setdefault(agent_id, _tagged(item, group.shard))
            known_by.setdefault(agent_id, []).append(group.shard)
    return [{**agents[agent_id], "shards": sorted(set(known_by[agent_id]))}
            for agent_id in sorted(agents)]
