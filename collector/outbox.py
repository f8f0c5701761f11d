"""The MQTT outbox: which messages are still to be published, in what order, and what was lost.

Pure: no asyncio, no sockets, no broker. `collector.events.MqttPublisher` adds committed
transitions and publishes what the outbox hands out, one message at a time; this module
decides everything about the queue (DESIGN.md "MQTT events"):

- what is published: every TargetChange (on the retained `{prefix}/state/{probe}`) and the
  outage transitions `opened`, `scope_changed` and `resolved` (on `{prefix}/events`;
  `updated` is journaled only). An event carries the journal's `seq`, which increases per
  collector, and `collector_id`: consumers deduplicate on the pair;
- order: messages leave in the order their transitions were added, events and states
  interleaved;
- merging: only the newest view of a probe waits (a newer state replaces the waiting one and
  moves to the back), so state changes never overflow the queue;
- the bound: at most `capacity` events wait (plus the one in flight); when more arrive the
  oldest waiting event is dropped and counted. An overflow episode lasts until an event is
  published again, so that it can be reported once;
- in flight: `take` hands out the oldest message; the caller ends it with `acknowledged`
  (counted published), `put_back` (the publish was cut off: the message is again the first
  to go, unless a newer view of the probe is waiting by then) or `give_up` (the broker or the
  client refuses it for good: counted dropped);
- after a (re)connect, `requeue_states` queues the newest state of every probe again, so the
  retained state is current even on a broker that lost it;
- `abandon`, at stop: what is still queued is counted dropped.

Counts (`published`, `dropped`, by kind) are cumulative and never reset: the publisher's
metrics read them at scrape time. A transition that cannot be rendered (a time with no
RFC 3339 form) is counted dropped and reported back, never raised.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import OrderedDict, deque
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from .model import (
    JournaledTransition,
    OutageEvent,
    OutageTransition,
    TargetChange,
    TargetView,
    rfc3339,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

Kind = Literal["event", "state"]
KINDS: tuple[Kind, ...] = ("event", "state")

PUBLISHED_EVENTS = frozenset({OutageEvent.OPENED, OutageEvent.SCOPE_CHANGED,
                              OutageEvent.RESOLVED})
"""The outage events that go to `{prefix}/events` (`updated` is journaled only)."""

_LEVEL_ESCAPES = str.maketrans({"%": "%25", "/": "%2F", "+": "%2B", "#": "%23", "\0": "%00"})


def topic_level(name: str) -> str:
    """`name` as one MQTT topic level: `%`, `/`, `+`, `#`, NUL percent-encoded (reversible)."""
    return name.translate(_LEVEL_ESCAPES)


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """A message payload: compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Message:
    """One message to publish; `order` is its place in the order transitions were added."""

    kind: Kind
    key: str  # the probe for a state, the seq for an event
    topic: str
    payload: bytes
    order: int

    @property
    def retain(self) -> bool:
        """States are retained, events are not."""
        return self.kind == "state"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A transition that could not be rendered as a message (counted as dropped)."""

    seq: int
    kind: Kind
    error: Exception


@dataclass(frozen=True, slots=True)
class Queued:
    """What adding to the outbox cost: transitions rejected, events dropped to make room.

    `overflow_began` is true when `overflowed` opened an overflow episode (the first events
    dropped since an event was last published): the moment to report it, once.
    """

    rejected: tuple[Rejected, ...] = ()
    overflowed: tuple[Message, ...] = ()
    overflow_began: bool = False


class Outbox:
    """The bounded, ordered queue of one collector's MQTT messages (see the module docstring)."""

    def __init__(self, *, collector_id: str, topic_prefix: str, capacity: int) -> None:
        """`capacity`: how many events may wait (at least 1); states are merged per probe."""
        if capacity < 1:
            raise ValueError(f"an outbox needs room for at least one event, not {capacity}")
        self.collector_id = collector_id
        self.capacity = capacity
        self._prefix = topic_prefix.rstrip("/")
        self._events: deque[Message] = deque()
        self._states: OrderedDict[str, Message] = OrderedDict()  # waiting, oldest first
        self._latest_states: dict[str, Message] = {}  # the newest of every probe ever seen
        self._in_flight: Message | None = None
        self._order = itertools.count()
        self._overflowing = 0  # events dropped in the current overflow episode
        self._published: dict[Kind, int] = dict.fromkeys(KINDS, 0)
        self._dropped: dict[Kind, int] = dict.fromkeys(KINDS, 0)

    # -- topics -----------------------------------------------------------------------------

    @property
    def events_topic(self) -> str:
        """The topic of outage events."""
        return f"{self._prefix}/events"

    def topic_for_state(self, probe: str) -> str:
        """The retained state topic of `probe` (escaped, see `topic_level`)."""
        return f"{self._prefix}/state/{topic_level(probe)}"

    @property
    def status_topic(self) -> str:
        """The retained online/offline topic of this collector."""
        return f"{self._prefix}/status/{topic_level(self.collector_id)}"

    # -- counts -----------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Messages waiting, including the one in flight."""
        return len(self._events) + len(self._states) + (self._in_flight is not None)

    @property
    def published(self) -> Mapping[Kind, int]:
        """Messages acknowledged, by kind, since the outbox was made."""
        return MappingProxyType(self._published)

    @property
    def dropped(self) -> Mapping[Kind, int]:
        """Messages given up, by kind: overflowed, unrenderable, refused or abandoned."""
        return MappingProxyType(self._dropped)

    @property
    def overflowing(self) -> int:
        """Events dropped since an event was last published (0: no overflow episode)."""
        return self._overflowing

    # -- adding -----------------------------------------------------------------------------

    def add(self, items: Iterable[JournaledTransition]) -> Queued:
        """Queue committed transitions, in order; never raises for a transition's content."""
        rejected: list[Rejected] = []
        overflowed_before = self._overflowing
        overflowed: list[Message] = []
        for item in items:
            transition = item.transition
            kind: Kind = "state" if isinstance(transition, TargetChange) else "event"
            try:
                message = self._render(item.seq, transition)
            except Exception as exc:
                # One transition that cannot be rendered must not hold up the others.
                self._dropped[kind] += 1
                rejected.append(Rejected(seq=item.seq, kind=kind, error=exc))
                continue
            if message is not None:
                overflowed += self._queue(message)
        return Queued(rejected=tuple(rejected), overflowed=tuple(overflowed),
                      overflow_began=bool(overflowed) and overflowed_before == 0)

    def requeue_states(self, views: Iterable[TargetView], now: float) -> Queued:
        """After a (re)connect: queue the newest state of every probe again.

        `views` (the collector's current targets) adds the probes that had no change yet,
        stamped `now`; a probe with a change keeps its own view and `changed_at`. A probe
        whose state is already waiting keeps its place.
        """
        queued = self.add(JournaledTransition(seq=0, transition=TargetChange(view=view, at=now))
                          for view in views if view.probe not in self._latest_states)
        for probe, message in self._latest_states.items():
            if probe not in self._states and message is not self._in_flight:
                self._states[probe] = dataclasses.replace(message, order=next(self._order))
        return queued

    def _render(self, seq: int, transition: OutageTransition | TargetChange) -> Message | None:
        if isinstance(transition, TargetChange):
            probe = transition.view.probe
            payload = transition.view.to_json()
            payload["changed_at"] = rfc3339(transition.at)
            return Message(kind="state", key=probe, topic=self.topic_for_state(probe),
                           payload=encode_json(payload), order=next(self._order))
        if transition.event not in PUBLISHED_EVENTS:
            return None
        payload = transition.record.to_json()
        payload["event"] = str(transition.event)
        payload["at"] = rfc3339(transition.at)
        payload["seq"] = seq
        payload["collector_id"] = self.collector_id
        return Message(kind="event", key=str(seq), topic=self.events_topic,
                       payload=encode_json(payload), order=next(self._order))

    def _queue(self, message: Message) -> list[Message]:
        if message.kind == "state":
            self._latest_states[message.key] = message
            self._states.pop(message.key, None)
            self._states[message.key] = message
            return []
        self._events.append(message)
        return self._trim_events()

    def _trim_events(self) -> list[Message]:
        """Drop the oldest waiting events beyond the capacity; they are counted."""
        overflowed: list[Message] = []
        while len(self._events) > self.capacity:
            overflowed.append(self._events.popleft())
        self._dropped["event"] += len(overflowed)
        self._overflowing += len(overflowed)
        return overflowed

    # -- publishing -------------------------------------------------------------------------

    def take(self) -> Message | None:
        """The oldest waiting message, now in flight; None when nothing waits.

        One message is in flight at a time: end it (`acknowledged`, `put_back`, `give_up`)
        before taking the next. Raises RuntimeError otherwise.
        """
        if self._in_flight is not None:
            raise RuntimeError("a message is already in flight")
        event = self._events[0] if self._events else None
        state = next(iter(self._states.values())) if self._states else None
        if event is not None and (state is None or event.order < state.order):
            message = self._events.popleft()
        elif state is not None:
            message = self._states.pop(state.key)
        else:
            return None
        self._in_flight = message
        return message

    def acknowledged(self, message: Message) -> int:
        """The broker has `message`: count it published.

        Returns how many events the overflow episode that this event ends had dropped (0 when
        there was none, or for a state: only a published event ends an episode).
        """
        self._land(message)
        self._published[message.kind] += 1
        if message.kind != "event":
            return 0
        ended, self._overflowing = self._overflowing, 0
        return ended

    def put_back(self, message: Message) -> Queued:
        """The publish of `message` was cut off: it is the first to go again.

        An event goes back to the head of the queue (when the queue is full meanwhile, it is
        the oldest and the one dropped); a state goes back only while no newer view of its
        probe waits.
        """
        self._land(message)
        if message.kind == "state":
            if message.key not in self._states:
                self._states[message.key] = message
                self._states.move_to_end(message.key, last=False)
            return Queued()
        overflowed_before = self._overflowing
        self._events.appendleft(message)
        overflowed = self._trim_events()
        return Queued(overflowed=tuple(overflowed),
                      overflow_began=bool(overflowed) and overflowed_before == 0)

    def give_up(self, message: Message) -> None:
        """`message` can never be published (refused for good): count it dropped."""
        self._land(message)
        self._dropped[message.kind] += 1

    def abandon(self) -> dict[Kind, int]:
        """At stop: count everything still waiting (or in flight) dropped, by kind; empty."""
        abandoned: dict[Kind, int] = {"event": len(self._events), "state": len(self._states)}
        if self._in_flight is not None:
            abandoned[self._in_flight.kind] += 1
            self._in_flight = None
        for kind, count in abandoned.items():
            self._dropped[kind] += count
        self._events.clear()
        self._states.clear()
        return abandoned

    def _land(self, message: Message) -> None:
        if message is not self._in_flight:
            raise RuntimeError("the message is not the one in flight")
        self._in_flight = None
