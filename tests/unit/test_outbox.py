"""The MQTT outbox without a broker: order, merging of states, the bound, put-back, counts."""

from __future__ import annotations

import json
import random
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probenet.collector.model import (
    JournaledTransition,
    OutageEvent,
    OutageKind,
    OutageRecord,
    OutageTransition,
    RegionVerdict,
    Scope,
    TargetChange,
    TargetState,
    TargetView,
    parse_rfc3339,
    rfc3339,
)
from probenet.collector.outbox import Message, Outbox, Queued, topic_level

T0 = 1_795_000_000.0
COLLECTOR = "col-1"
PREFIX = "pn"


def make_outbox(capacity: int = 100, prefix: str = PREFIX) -> Outbox:
    return Outbox(collector_id=COLLECTOR, topic_prefix=prefix, capacity=capacity)


def record(probe: str, *, ended_at: float | None = None) -> OutageRecord:
    return OutageRecord(
        id=f"out-{probe}", kind=OutageKind.PROBE, probe=probe, service="meta", region=None,
        probes=(), scope=Scope.GLOBAL, peak_scope=Scope.GLOBAL, regions=("eu", "us"),
        regions_ever=("eu", "us"), phase="dns", reason="dns_servfail",
        started_at=T0, detected_at=T0 + 4.5, ended_at=ended_at)


def event(seq: int, probe: str = "web", kind: OutageEvent = OutageEvent.OPENED,
          at: float = T0) -> JournaledTransition:
    return JournaledTransition(seq=seq, transition=OutageTransition(
        event=kind, record=record(probe), at=at))


def view(probe: str, state: TargetState = TargetState.UP) -> TargetView:
    verdict = RegionVerdict.UP if state == TargetState.UP else RegionVerdict.DOWN
    return TargetView(probe=probe, target=f"https://{probe}.example/", service="meta",
                      kind="http", state=state, regions={"eu": verdict})


def change(probe: str, state: TargetState = TargetState.UP, at: float = T0) -> JournaledTransition:
    return JournaledTransition(seq=0, transition=TargetChange(view=view(probe, state), at=at))


def drain(outbox: Outbox) -> list[Message]:
    """Take and acknowledge everything, in order."""
    sent = []
    while (message := outbox.take()) is not None:
        outbox.acknowledged(message)
        sent.append(message)
    return sent


def labels(messages: list[Message]) -> list[str]:
    """`e<seq>` for events, `s<probe>:<state>` for states."""
    return [f"e{m.key}" if m.kind == "event"
            else f"s{m.key}:{json.loads(m.payload)['state']}" for m in messages]


# -- what is published ----------------------------------------------------------------------


def test_an_event_carries_the_record_event_time_seq_and_collector():
    outbox = make_outbox()
    outbox.add([JournaledTransition(seq=42, transition=OutageTransition(
        event=OutageEvent.RESOLVED, record=record("web", ended_at=T0 + 60), at=T0 + 60))])
    [message] = drain(outbox)
    assert message.kind == "event"
    assert message.key == "42"
    assert message.topic == "pn/events"
    assert not message.retain
    payload = json.loads(message.payload)
    assert payload == {**record("web", ended_at=T0 + 60).to_json(), "event": "resolved",
                       "at": rfc3339(T0 + 60), "seq": 42, "collector_id": COLLECTOR}


def test_a_state_is_the_target_entry_plus_changed_at_retained_on_an_escaped_topic():
    outbox = make_outbox()
    outbox.add([change("api/v2+beta#1", TargetState.GLOBAL_OUTAGE, T0 + 3)])
    [message] = drain(outbox)
    assert message.kind == "state"
    assert message.retain
    assert message.topic == "pn/state/api%2Fv2%2Bbeta%231"
    assert message.topic == outbox.topic_for_state("api/v2+beta#1")
    assert json.loads(message.payload) == {
        **view("api/v2+beta#1", TargetState.GLOBAL_OUTAGE).to_json(),
        "changed_at": rfc3339(T0 + 3)}


def test_only_opened_scope_changed_and_resolved_are_published():
    outbox = make_outbox()
    queued = outbox.add([event(seq, kind=kind) for seq, kind in enumerate(OutageEvent, 1)])
    assert queued.rejected == ()
    sent = drain(outbox)
    assert [json.loads(m.payload)["event"] for m in sent] == ["opened", "scope_changed",
                                                               "resolved"]
    assert outbox.dropped == {"event": 0, "state": 0}  # `updated` is not a loss


def test_topics_strip_a_trailing_slash_of_the_prefix_and_escape_the_collector():
    outbox = Outbox(collector_id="a/b", topic_prefix="probenet/", capacity=1)
    assert outbox.events_topic == "probenet/events"
    assert outbox.status_topic == "probenet/status/a%2Fb"
    assert outbox.topic_for_state("x") == "probenet/state/x"


def test_topic_level_escapes_exactly_the_mqtt_specials_reversibly():
    for name in ["plain", "a/b", "+", "#", "%2F", "50%/x+#", "caf\u00e9", "nul\0byte", ""]:
        level = topic_level(name)
        assert not any(c in level for c in "/+#\0")
        assert unquote(level) == name
    assert topic_level("plain-name_1.x ~!") == "plain-name_1.x ~!"


def test_a_transition_that_cannot_be_rendered_is_counted_and_reported_not_raised():
    outbox = make_outbox()
    queued = outbox.add([event(1, "a", at=float("nan")), change("b", at=float("inf")),
                         event(2, "c")])
    assert [(r.seq, r.kind) for r in queued.rejected] == [(1, "event"), (0, "state")]
    assert all(isinstance(r.error, Exception) for r in queued.rejected)
    assert outbox.dropped == {"event": 1, "state": 1}
    assert labels(drain(outbox)) == ["e2"]


def test_capacity_must_hold_one_event():
    with pytest.raises(ValueError, match="at least one"):
        make_outbox(capacity=0)


# -- order and merging -----------------------------------------------------------------------


def test_events_and_states_leave_in_the_order_they_were_added():
    outbox = make_outbox()
    outbox.add([event(1), change("web", TargetState.GLOBAL_OUTAGE), event(2)])
    outbox.add([change("api", TargetState.GLOBAL_OUTAGE), event(3)])
    assert labels(drain(outbox)) == ["e1", "sweb:global_outage", "e2", "sapi:global_outage",
                                     "e3"]


def test_only_the_newest_state_of_a_probe_waits_and_it_moves_back():
    outbox = make_outbox()
    outbox.add([change("web", TargetState.REGIONAL_OUTAGE), event(1),
                change("api", TargetState.UP)])
    outbox.add([change("web", TargetState.GLOBAL_OUTAGE, T0 + 9)])
    assert outbox.depth == 3
    sent = drain(outbox)
    assert labels(sent) == ["e1", "sapi:up", "sweb:global_outage"]
    assert json.loads(sent[-1].payload)["changed_at"] == rfc3339(T0 + 9)
    assert outbox.published == {"event": 1, "state": 2}
    assert outbox.dropped == {"event": 0, "state": 0}  # merged, not lost


def test_states_never_overflow_the_queue():
    outbox = make_outbox(capacity=1)
    for i in range(100):
        queued = outbox.add([change(f"p{i % 7}", TargetState.UP, T0 + i)])
        assert queued.overflowed == ()
    assert outbox.depth == 7
    assert outbox.dropped == {"event": 0, "state": 0}
    sent = drain(outbox)
    assert {m.key: json.loads(m.payload)["changed_at"] for m in sent} == {
        f"p{p}": rfc3339(T0 + max(i for i in range(100) if i % 7 == p)) for p in range(7)}


# -- the bound ---------------------------------------------------------------------------------


def test_overflow_drops_the_oldest_events_counts_them_and_begins_one_episode():
    outbox = make_outbox(capacity=3)
    first = outbox.add([event(seq) for seq in range(1, 6)])
    assert [m.key for m in first.overflowed] == ["1", "2"]
    assert first.overflow_began
    second = outbox.add([event(6)])
    assert [m.key for m in second.overflowed] == ["3"]
    assert not second.overflow_began  # the same episode: reported once
    assert outbox.overflowing == 3
    assert outbox.dropped == {"event": 3, "state": 0}
    assert outbox.depth == 3
    assert labels(drain(outbox)) == ["e4", "e5", "e6"]


def test_publishing_an_event_ends_the_episode_and_says_how_many_were_lost():
    outbox = make_outbox(capacity=1)
    outbox.add([event(1), event(2), change("web")])
    state_first = outbox.add([change("api")])
    assert not state_first.overflow_began
    message = outbox.take()
    assert message is not None
    assert message.key == "2"
    assert outbox.acknowledged(message) == 1
    assert outbox.overflowing == 0
    assert [outbox.acknowledged(m) for m in iter(outbox.take, None)] == [0, 0]
    # A new overflow is a new episode.
    assert outbox.add([event(3), event(4)]).overflow_began


def test_a_published_state_does_not_end_an_episode():
    outbox = make_outbox(capacity=1)
    outbox.add([change("web"), event(1), event(2)])
    message = outbox.take()
    assert message is not None
    assert message.kind == "state"
    assert outbox.acknowledged(message) == 0
    assert outbox.overflowing == 1


def test_the_one_in_flight_does_not_count_against_the_bound():
    outbox = make_outbox(capacity=2)
    outbox.add([event(1), event(2)])
    assert outbox.take() is not None
    assert outbox.add([event(3)]).overflowed == ()
    assert outbox.depth == 3


# -- in flight -------------------------------------------------------------------------------


def test_take_hands_out_one_message_at_a_time():
    outbox = make_outbox()
    assert outbox.take() is None
    outbox.add([event(1), event(2)])
    message = outbox.take()
    assert message is not None
    assert outbox.depth == 2  # the one in flight still counts
    with pytest.raises(RuntimeError, match="already in flight"):
        outbox.take()
    outbox.acknowledged(message)
    assert outbox.depth == 1
    with pytest.raises(RuntimeError, match="not the one in flight"):
        outbox.acknowledged(message)


def test_an_event_cut_off_goes_back_to_the_head():
    outbox = make_outbox()
    outbox.add([event(1), event(2)])
    message = outbox.take()
    assert message is not None
    outbox.add([event(3)])
    assert outbox.put_back(message).overflowed == ()
    assert outbox.published == {"event": 0, "state": 0}
    assert labels(drain(outbox)) == ["e1", "e2", "e3"]
    assert outbox.published == {"event": 3, "state": 0}


def test_an_event_put_back_into_a_full_queue_is_the_oldest_and_dropped():
    outbox = make_outbox(capacity=2)
    outbox.add([event(1), event(2)])
    message = outbox.take()
    assert message is not None
    outbox.add([event(3)])  # full again while 1 is in flight
    queued = outbox.put_back(message)
    assert [m.key for m in queued.overflowed] == ["1"]
    assert queued.overflow_began
    assert outbox.dropped == {"event": 1, "state": 0}
    assert labels(drain(outbox)) == ["e2", "e3"]


def test_a_state_cut_off_goes_back_unless_a_newer_one_waits():
    outbox = make_outbox()
    outbox.add([change("web", TargetState.REGIONAL_OUTAGE), change("api"), event(1)])
    message = outbox.take()
    assert message is not None
    outbox.put_back(message)
    assert labels(drain(outbox)) == ["sweb:regional_outage", "sapi:up", "e1"]

    outbox = make_outbox()
    outbox.add([change("web", TargetState.REGIONAL_OUTAGE), change("api")])
    message = outbox.take()
    assert message is not None
    outbox.add([change("web", TargetState.GLOBAL_OUTAGE)])
    assert outbox.put_back(message) == Queued()
    assert labels(drain(outbox)) == ["sapi:up", "sweb:global_outage"]
    assert outbox.dropped == {"event": 0, "state": 0}  # superseded, not lost


def test_a_refused_message_is_counted_dropped():
    outbox = make_outbox()
    outbox.add([event(1), change("web")])
    for message in iter(outbox.take, None):
        outbox.give_up(message)
    assert outbox.dropped == {"event": 1, "state": 1}
    assert outbox.published == {"event": 0, "state": 0}
    assert outbox.depth == 0


# -- reconnects and the end ------------------------------------------------------------------


def test_after_a_reconnect_the_newest_state_of_every_probe_goes_out_again():
    outbox = make_outbox()
    outbox.add([change("web", TargetState.REGIONAL_OUTAGE, T0 + 1),
                change("web", TargetState.GLOBAL_OUTAGE, T0 + 2), change("api", at=T0 + 3)])
    drain(outbox)
    outbox.add([event(7), change("db", at=T0 + 4)])
    # The collector's current targets: web is known (its change wins), new is not.
    queued = outbox.requeue_states([view("web"), view("new")], now=T0 + 100)
    assert queued.rejected == ()
    sent = drain(outbox)
    assert labels(sent) == ["e7", "sdb:up", "snew:up", "sweb:global_outage", "sapi:up"]
    changed_at = {m.key: json.loads(m.payload)["changed_at"] for m in sent if m.kind == "state"}
    assert changed_at == {"db": rfc3339(T0 + 4), "new": rfc3339(T0 + 100),
                          "web": rfc3339(T0 + 2), "api": rfc3339(T0 + 3)}
    # The seeded probe is known from now on: it is not stamped again.
    outbox.requeue_states([view("new", TargetState.GLOBAL_OUTAGE)], now=T0 + 200)
    again = {m.key: json.loads(m.payload) for m in drain(outbox)}
    assert again["new"]["changed_at"] == rfc3339(T0 + 100)
    assert again["new"]["state"] == "up"


def test_requeue_reports_an_unrenderable_view_and_goes_on():
    outbox = make_outbox()
    queued = outbox.requeue_states([view("a"), view("b")], now=float("nan"))
    assert [(r.seq, r.kind) for r in queued.rejected] == [(0, "state"), (0, "state")]
    assert outbox.dropped == {"event": 0, "state": 2}
    assert outbox.depth == 0


def test_abandon_counts_everything_unpublished_and_empties():
    outbox = make_outbox()
    outbox.add([event(1), event(2), change("web"), change("api")])
    assert outbox.take() is not None  # in flight when the publisher stops
    assert outbox.abandon() == {"event": 2, "state": 2}
    assert outbox.dropped == {"event": 2, "state": 2}
    assert outbox.depth == 0
    assert outbox.take() is None
    assert outbox.abandon() == {"event": 0, "state": 0}
    assert outbox.dropped == {"event": 2, "state": 2}


def test_counts_are_read_only_views():
    outbox = make_outbox()
    with pytest.raises(TypeError):
        outbox.published["event"] = 5  # type: ignore[index]


# -- properties over random runs -------------------------------------------------------------

operations = st.lists(st.one_of(
    st.tuples(st.just("event"), st.sampled_from(list(OutageEvent))),
    st.tuples(st.just("state"), st.sampled_from(["a", "b", "c"])),
    st.tuples(st.sampled_from(["ack", "put_back", "give_up", "reconnect"]), st.none()),
), max_size=80)


@settings(max_examples=300, deadline=None)
@given(ops=operations, capacity=st.integers(1, 4))
def test_nothing_is_lost_reordered_or_left_stale(ops, capacity):
    outbox = make_outbox(capacity=capacity)
    seq = 0
    added_events = 0
    newest: dict[str, int] = {}  # probe -> step of its newest change
    acked_seqs: list[int] = []
    retained: dict[str, int] = {}  # what a subscriber holds as the retained state
    given_up_states = 0
    for step, (op, arg) in enumerate(ops):
        if op == "event":
            seq += 1
            outbox.add([event(seq, kind=arg)])
            added_events += arg in {OutageEvent.OPENED, OutageEvent.SCOPE_CHANGED,
                                    OutageEvent.RESOLVED}
        elif op == "state":
            newest[arg] = step
            outbox.add([change(arg, at=T0 + step)])
        elif op == "reconnect":
            outbox.requeue_states([], now=T0)
        elif (message := outbox.take()) is not None:
            if op == "ack":
                outbox.acknowledged(message)
                if message.kind == "event":
                    acked_seqs.append(int(message.key))
                else:
                    retained[message.key] = _step_of(message)
            elif op == "put_back":
                outbox.put_back(message)
            else:
                outbox.give_up(message)
                given_up_states += message.kind == "state"
        # Counted, never silently lost: every event is published, dropped or waiting.
        waiting_events = outbox.depth - _waiting_states(outbox)
        assert added_events == (outbox.published["event"] + outbox.dropped["event"]
                                + waiting_events)
        assert outbox.depth <= capacity + 1 + len(newest)
    # Then the broker stays up: everything left goes out.
    outbox.requeue_states([], now=T0)
    for message in drain(outbox):
        if message.kind == "event":
            acked_seqs.append(int(message.key))
        else:
            retained[message.key] = _step_of(message)
    assert acked_seqs == sorted(set(acked_seqs))  # in order, each once
    assert retained == newest  # the retained state ends up current
    assert outbox.dropped["state"] == given_up_states  # states are merged, never dropped


def _step_of(message: Message) -> int:
    at = parse_rfc3339(json.loads(message.payload)["changed_at"])
    assert at is not None
    return round(at - T0)


def _waiting_states(outbox: Outbox) -> int:
    return len(outbox._states) + (outbox._in_flight is not None
                                  and outbox._in_flight.kind == "state")


def test_random_runs_keep_submit_order_among_what_is_published():
    rng = random.Random(11)
    outbox = make_outbox(capacity=1000)
    expected = []
    for seq in range(1, 300):
        outbox.add([event(seq)])
        expected.append(str(seq))
        if rng.random() < 0.5 and (message := outbox.take()) is not None:
            outbox.put_back(message)
    assert [m.key for m in drain(outbox)] == expected
