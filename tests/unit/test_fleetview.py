"""The merged fleet view's rules (collector/fleetview.py) and the `sharding` config section."""

from __future__ import annotations

import pytest

from probenet.collector.config import parse_config
from probenet.collector.fleetview import (
    GroupAnswer,
    PeerAnswerError,
    merge,
    peer_items,
    started_at_key,
)
from probenet.configfile import ConfigError


def target(probe: str, state: str = "up") -> dict:
    return {"probe": probe, "target": f"https://{probe}.example/", "service": None,
            "kind": "http", "state": state, "regions": {"eu": "up"}}


def outage(outage_id: str, started_at: str, probe: str = "web", ended_at: str | None = None
           ) -> dict:
    return {"id": outage_id, "kind": "probe", "probe": probe, "started_at": started_at,
            "ended_at": ended_at}


def agent(agent_id: str, *, connected: bool, region: str = "eu") -> dict:
    return {"id": agent_id, "region": region, "connected": connected, "impaired": False,
            "stale": not connected, "last_seen": None}


def local(shard: int, items: list[dict]) -> GroupAnswer:
    return GroupAnswer(shard, "local", items)


def peer(shard: int, items: list[dict], url: str = "http://peer:9464") -> GroupAnswer:
    return GroupAnswer(shard, url, items)


# -- targets ---------------------------------------------------------------------------------


def test_targets_of_every_group_are_tagged_with_their_shard_and_ordered_by_probe():
    merged = merge("targets", [local(0, [target("web"), target("mail")]),
                               peer(1, [target("dns"), target("api", "global_outage")])],
                   shards=2)
    assert [(t["probe"], t["shard"]) for t in merged["targets"]] == [
        ("api", 1), ("dns", 1), ("mail", 0), ("web", 0)]
    assert merged["targets"][0]["state"] == "global_outage"
    assert merged["complete"] is True
    assert merged["shards"] == [
        {"shard": 0, "source": "local", "ok": True},
        {"shard": 1, "source": "http://peer:9464", "ok": True}]


def test_a_probe_two_groups_report_is_kept_once_per_group():
    merged = merge("targets", [local(0, [target("web")]), peer(1, [target("web", "unknown")])],
                   shards=2)
    assert [(t["probe"], t["shard"], t["state"]) for t in merged["targets"]] == [
        ("web", 0, "up"), ("web", 1, "unknown")]


def test_the_input_items_are_not_changed_by_tagging():
    items = [target("web")]
    merge("targets", [local(0, items), peer(1, [])], shards=2)
    assert "shard" not in items[0]


# -- missing groups --------------------------------------------------------------------------


def test_a_group_that_did_not_answer_makes_the_answer_incomplete_and_keeps_the_rest():
    merged = merge("targets", [local(0, [target("web")]),
                               GroupAnswer.missing(1, "http://b1:9464: connection refused")],
                   shards=2)
    assert merged["complete"] is False
    assert [t["probe"] for t in merged["targets"]] == ["web"]
    assert merged["shards"][1] == {"shard": 1, "source": None, "ok": False,
                                   "error": "http://b1:9464: connection refused"}


def test_a_shard_without_a_configured_peer_is_listed_as_missing():
    merged = merge("agents", [local(0, [agent("fra-1", connected=True)]),
                              peer(2, [agent("fra-1", connected=True)])], shards=3)
    assert [s["shard"] for s in merged["shards"]] == [0, 1, 2]
    assert merged["shards"][1]["ok"] is False
    assert "sharding.peers" in merged["shards"][1]["error"]
    assert merged["complete"] is False


def test_a_long_peer_error_is_cut():
    merged = merge("targets", [local(0, []), GroupAnswer.missing(1, "x" * 5000)], shards=2)
    assert len(merged["shards"][1]["error"]) < 400


# -- outages ---------------------------------------------------------------------------------


def test_outages_are_the_union_deduplicated_by_id_newest_first():
    merged = merge("outages", [
        local(0, [outage("a", "2026-12-01T10:00:00.000Z"),
                  outage("c", "2026-12-01T12:00:00.000Z")]),
        peer(1, [outage("b", "2026-12-01T11:00:00.000Z"),
                 outage("a", "2026-12-01T10:00:00.000Z", ended_at="2026-12-01T10:05:00.000Z")]),
    ], shards=2)
    assert [(o["id"], o["shard"]) for o in merged["outages"]] == [
        ("c", 0), ("b", 1), ("a", 0)]
    # The duplicate id keeps the local group's record.
    assert merged["outages"][2]["ended_at"] is None


def test_a_duplicate_outage_among_peers_keeps_the_lowest_shard():
    merged = merge("outages", [
        local(0, []),
        peer(2, [outage("x", "2026-12-01T10:00:00.000Z", probe="two")]),
        peer(1, [outage("x", "2026-12-01T10:00:00.000Z", probe="one")]),
    ], shards=3)
    [record] = merged["outages"]
    assert (record["shard"], record["probe"]) == (1, "one")


def test_outages_are_cut_to_the_limit_after_merging():
    merged = merge("outages", [
        local(0, [outage("old", "2026-11-01T00:00:00.000Z")]),
        peer(1, [outage("new", "2026-12-01T00:00:00.000Z"),
                 outage("mid", "2026-11-15T00:00:00.000Z")]),
    ], shards=2, limit=2)
    assert [o["id"] for o in merged["outages"]] == ["new", "mid"]


def test_outages_with_equal_start_are_ordered_by_id_and_bad_times_sort_last():
    merged = merge("outages", [
        local(0, [outage("b", "2026-12-01T00:00:00.000Z"), outage("z", "not a time")]),
        peer(1, [outage("a", "2026-12-01T00:00:00Z")]),
    ], shards=2)
    assert [o["id"] for o in merged["outages"]] == ["a", "b", "z"]
    assert started_at_key("2026-12-01T00:00:00Z") == started_at_key("2026-12-01T00:00:00.000Z")


# -- agents ----------------------------------------------------------------------------------


def test_agents_are_merged_by_id_with_the_groups_that_know_them():
    merged = merge("agents", [
        peer(1, [agent("fra-1", connected=False), agent("iad-1", connected=True, region="us")]),
        local(0, [agent("fra-1", connected=True)]),
    ], shards=2)
    by_id = {a["id"]: a for a in merged["agents"]}
    assert list(by_id) == ["fra-1", "iad-1"]
    assert by_id["fra-1"]["shards"] == [0, 1]
    # The local group's fields win for an agent it knows ...
    assert (by_id["fra-1"]["connected"], by_id["fra-1"]["shard"]) == (True, 0)
    # ... else the lowest shard's that knows it.
    assert by_id["iad-1"]["shards"] == [1]
    assert (by_id["iad-1"]["region"], by_id["iad-1"]["shard"]) == ("us", 1)


def test_agents_of_a_missing_group_are_not_invented():
    merged = merge("agents", [local(0, [agent("fra-1", connected=True)]),
                              GroupAnswer.missing(1, "timeout")], shards=2)
    assert [(a["id"], a["shards"]) for a in merged["agents"]] == [("fra-1", [0])]
    assert merged["complete"] is False


# -- peer bodies -----------------------------------------------------------------------------


def test_a_peer_body_must_be_a_list_of_items_with_their_key():
    assert peer_items("targets", [target("web")]) == [target("web")]
    for body, resource in (({"targets": []}, "targets"), ([1], "agents"),
                           ([{"probe": "web"}], "outages"), ([{"id": 3}], "agents")):
        with pytest.raises(PeerAnswerError):
            peer_items(resource, body)


# -- the config section ----------------------------------------------------------------------

SHARDING = """\
sharding:
  shard: 0
  shards: 3
  peers:
    - {shard: 1, urls: ["http://collector-b1:9464", "https://collector-b2:9464/"]}
  timeout: 500ms
"""


def test_a_sharding_section_loads():
    sharding = parse_config(SHARDING).sharding
    assert sharding is not None
    assert (sharding.shard, sharding.shards, sharding.timeout) == (0, 3, 0.5)
    assert sharding.peers[0].urls == ["http://collector-b1:9464", "https://collector-b2:9464"]
    assert parse_config("{}").sharding is None


@pytest.mark.parametrize(("text", "expected"), [
    ("sharding: {shard: 2, shards: 2}",
     "1:19: sharding.shard 2 is not below sharding.shards 2 (shards are numbered from 0)"),
    ("sharding: {shard: 0, shards: 2000}",
     "1:30: sharding.shards: Input should be less than or equal to 1024"),
    ("sharding: {shard: -1, shards: 2}",
     "1:19: sharding.shard: Input should be greater than or equal to 0"),
    ("sharding: {shard: 0, shards: 2, peers: [{shard: 0, urls: ['http://b:1']}]}",
     ("1:49: sharding.peers[0].shard 0 is this collector's own shard (list only the other "
     "groups)")),
    ("sharding: {shard: 0, shards: 2, peers: [{shard: 2, urls: ['http://b:1']}]}",
     "1:49: sharding.peers[0].shard 2 is not below sharding.shards 2"),
    (("sharding: {shard: 0, shards: 3, peers: [{shard: 1, urls: ['http://b:1']},"
     " {shard: 1, urls: ['http://c:1']}]}"),
     "1:83: sharding.peers[1].shard 1 repeats sharding.peers[0]"),
    ("sharding: {shard: 0, shards: 2, peers: [{shard: 1, urls: ['b:9464']}]}",
     ("1:59: sharding.peers[0].urls[0]: 'b:9464' is not an absolute http(s) URL like "
     "http://collector-b1:9464")),
    ("sharding: {shard: 0, shards: 2, peers: [{shard: 1, urls: []}]}",
     ("1:58: sharding.peers[0].urls: List should have at least 1 item after validation, "
     "not 0")),
    ("sharding: {shard: 0, shards: 2, timeout: 0s}",
     "1:42: sharding.timeout: must be longer than 0s and at most 60s"),
    ("sharding: {shard: 0, shards: 2, tokn: x}",
     "1:33: unknown key 'tokn'"),
])
def test_a_bad_sharding_section_is_reported_where_it_is_written(text, expected):
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert [str(i) for i in raised.value.issues] == [f"<string>:{expected}"]
