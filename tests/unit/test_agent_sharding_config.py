"""Sharding by probe in agent.yaml: validation at file:line:col, defaults, shard_of, check."""

from __future__ import annotations

import hashlib

import pytest

from probenet.agent.config import ConfigError, load_config, parse_config
from probenet.agent.spool import ProbeShards, Spool
from probenet.cli import check
from probenet.sharding import MAX_SHARDS, shard_of
from probenet.v1 import probenet_pb2 as pb

HEAD = """agent: {id: fra-1, region: eu}
"""
PROBES = """probes:
  - {name: web, kind: tcp, target: "127.0.0.1:80"}
"""


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "agent.yaml")
    return [str(i) for i in caught.value.issues]


def test_without_shard_every_collector_takes_everything():
    config = parse_config(HEAD + """collectors:
  - {address: "a:7070"}
  - {address: "b:7070"}
""" + PROBES)
    assert config.shard_count is None
    assert [c.shard for c in config.collectors] == [None, None]


def test_shards_default_to_the_highest_shard_plus_one():
    config = parse_config(HEAD + """collectors:
  - {address: "a1:7070", shard: 0}
  - {address: "a2:7070", shard: 0}
  - {address: "b1:7070", shard: 1}
""" + PROBES)
    assert config.shards is None
    assert config.shard_count == 2
    assert [c.shard for c in config.collectors] == [0, 0, 1]


def test_explicit_shards_is_kept():
    config = parse_config(HEAD + """collectors:
  - {address: "a:7070", shard: 0}
  - {address: "b:7070", shard: 1}
  - {address: "c:7070", shard: 2}
shards: 3
""" + PROBES)
    assert config.shard_count == 3


def test_a_collector_without_shard_among_sharded_ones_is_named():
    assert issues(HEAD + """collectors:
  - {address: "a:7070", shard: 0}
  - {address: "b:7070"}
  - {address: "c:7070", shard: 1}
""" + PROBES) == [
        ("agent.yaml:4:5: collectors[1] (b:7070) has no shard: when one collector sets shard, "
        "every one must")]


def test_a_shard_beyond_shards_is_an_error_at_that_shard():
    assert issues(HEAD + """collectors:
  - {address: "a:7070", shard: 0}
  - {address: "b:7070", shard: 2}
shards: 2
""" + PROBES) == [
        ("agent.yaml:4:32: collectors[1] (b:7070): shard 2 is out of range: shards is 2, so "
        "shard must be 0 .. 1"),
        ("agent.yaml:5:9: shard 1 has no collector (shards: 2): every shard 0 .. 1 needs at "
        "least one")]


def test_a_shard_without_collector_is_named():
    assert issues(HEAD + """collectors:
  - {address: "a:7070", shard: 0}
  - {address: "c:7070", shard: 2}
""" + PROBES) == [
        ("agent.yaml:3:3: shard 1 has no collector (shards: 3): every shard 0 .. 2 needs at "
        "least one")]


def test_explicit_shards_with_an_empty_shard_points_at_shards():
    assert issues(HEAD + """collectors:
  - {address: "a:7070", shard: 0}
  - {address: "b:7070", shard: 1}
shards: 4
""" + PROBES) == [
        ("agent.yaml:5:9: shard 2 has no collector (shards: 4): every shard 0 .. 3 needs at "
        "least one"),
        ("agent.yaml:5:9: shard 3 has no collector (shards: 4): every shard 0 .. 3 needs at "
        "least one")]


def test_shards_without_any_shard_is_an_error():
    assert issues(HEAD + """collectors:
  - {address: "a:7070"}
shards: 2
""" + PROBES) == [
        ("agent.yaml:4:9: shards is set but no collector has a shard: give each collector its "
        "shard (0 .. shards-1), or remove shards")]


@pytest.mark.parametrize(("value", "key", "expected"), [
    ("shard: -1", "collectors", ("3:32: collectors[0].shard: Input should be greater than or "
                                "equal to 0")),
    ("shard: 1024", "collectors", "3:32: collectors[0].shard: Input should be less than 1024"),
    ("shards: 0", "top", "4:9: shards: Input should be greater than or equal to 1"),
    ("shards: 1025", "top", "4:9: shards: Input should be less than or equal to 1024"),
])
def test_numbers_out_of_bounds(value, key, expected):
    if key == "collectors":
        text = HEAD + f'collectors:\n  - {{address: "a:7070", {value}}}\n'
    else:
        text = HEAD + f'collectors:\n  - {{address: "a:7070", shard: 0}}\n{value}\n'
    assert issues(text + PROBES) == [f"agent.yaml:{expected}"]
    assert MAX_SHARDS == 1024


def test_shard_of_is_prometheus_hashmod():
    # Prometheus' hashmod (model/relabel): md5 of the joined source label values, the
    # last 8 bytes read big-endian as uint64, modulo `modulus`.
    # md5("a") = 0cc175b9c0f1b6a8 31c399e269772661: the low 64 bits end in 0x...61 (97),
    # an odd number, 1 mod 16, 97 mod 256.
    assert hashlib.md5(b"a").hexdigest() == "0cc175b9c0f1b6a831c399e269772661"
    assert shard_of("a", 2) == 1
    assert shard_of("a", 16) == 1
    assert shard_of("a", 256) == 97
    assert shard_of("a", 1) == 0
    # md5("b") = 92eb5ffee6ae2fec 3ad71c777531578f: the last byte 0x8f (143).
    assert hashlib.md5(b"b").hexdigest() == "92eb5ffee6ae2fec3ad71c777531578f"
    assert shard_of("b", 256) == 143
    assert shard_of("b", 2) == 1
    for name in ("facebook-web", "instagram", "whatsapp", "threads", "é-unicode"):
        low64 = int(hashlib.md5(name.encode()).hexdigest()[16:], 16)
        for shards in (1, 2, 3, 7, 1024):
            assert shard_of(name, shards) == low64 % shards


@pytest.mark.parametrize("shards", [0, MAX_SHARDS + 1])
def test_shard_of_refuses_bad_counts(shards):
    with pytest.raises(ValueError, match="shards must be between"):
        shard_of("a", shards)


def test_shards_spread_probes():
    counts = [0, 0, 0]
    for i in range(300):
        counts[shard_of(f"probe-{i}", 3)] += 1
    assert min(counts) > 60, counts


def result(probe: str, seq: int) -> pb.ProbeResult:
    return pb.ProbeResult(probe=probe, seq=seq, kind="tcp")


def test_a_spool_takes_only_its_shard_and_acks_past_skipped_results():
    shards = ProbeShards(2)
    names = [f"p{i}" for i in range(8)]
    mine = [n for n in names if shard_of(n, 2) == 1]
    other = [n for n in names if shard_of(n, 2) == 0]
    assert mine
    assert other
    spool = Spool(100, takes=shards.taker(1))
    seq = 0
    for name in names:
        seq += 1
        spool.add(result(name, seq))
    held = spool.take(100)
    assert [r.probe for r in held] == mine
    spool.ack(held[-1].seq)
    # Nothing is held: the results of the other shard after it count as acknowledged.
    assert len(spool) == 0
    assert spool.acked_seq == seq
    spool.add(result(other[0], seq + 1))
    assert spool.acked_seq == seq + 1
    spool.add(result(mine[0], seq + 2))
    spool.add(result(other[0], seq + 3))
    assert spool.acked_seq == seq + 1  # a held result is outstanding: no skipping past it
    assert len(spool) == 1


def test_check_prints_probes_per_shard(tmp_path, capsys):
    path = tmp_path / "agent.yaml"
    names = [f"svc-{i}" for i in range(6)]
    probes = "".join(f'  - {{name: {n}, kind: tcp, target: "127.0.0.1:80"}}\n' for n in names)
    path.write_text(HEAD + """collectors:
  - {address: "a1:7070", shard: 0}
  - {address: "a2:7070", shard: 0}
  - {address: "b1:7070", shard: 1}
probes:
""" + probes)
    assert check([path]) == 0
    out = capsys.readouterr().out.splitlines()
    by_shard = {s: [n for n in names if shard_of(n, 2) == s] for s in (0, 1)}
    assert out[0] == f"{path}: ok (agent config)"
    assert out[1] == "  2 shards (hashmod of the probe name); local probes per shard:"

    def line(shard: int, collectors: str) -> str:
        found = by_shard[shard]
        plural = "" if len(found) == 1 else "s"
        listed = f": {', '.join(found)}" if found else ""
        return f"  shard {shard} ({collectors}): {len(found)} probe{plural}{listed}"
    assert out[2:] == [line(0, "a1:7070, a2:7070"), line(1, "b1:7070")]


def test_check_reports_shard_errors(tmp_path, capsys):
    path = tmp_path / "agent.yaml"
    path.write_text(HEAD + """collectors:
  - {address: "a1:7070", shard: 0}
  - {address: "b1:7070"}
""" + PROBES)
    assert check([path]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [(f"{path}:4:5: collectors[1] (b1:7070) has no shard: when one collector "
                   "sets shard, every one must")]
    # unsharded: no summary
    path.write_text(HEAD + 'collectors: [{address: "a1:7070"}]\n' + PROBES)
    assert check([path]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{path}: ok (agent config)"]
    assert load_config(path).shard_count is None


def test_a_path_trace_goes_where_its_probe_goes():
    shards = ProbeShards(3)
    names = [f"svc-{i}" for i in range(12)]
    for shard in range(3):
        takes = shards.taker(shard)
        for name in names:
            trace = pb.ProbeResult(probe=name, kind="trace", seq=1)
            assert takes(trace) == takes(result(name, 1)) == (shard_of(name, 3) == shard)


async def test_an_idle_shard_does_not_hold_back_the_state_file(tmp_path):
    from probenet.agent.state import DurableSpools, StateFile  # noqa: PLC0415

    shards = ProbeShards(2)
    names = [n for n in (f"p{i}" for i in range(20)) if shard_of(n, 2) == 0][:3]
    busy, idle = Spool(100, takes=shards.taker(0)), Spool(100, takes=shards.taker(1))
    state = StateFile(tmp_path / "a.spool", max_results=100, max_bytes=1 << 20)
    state.open(1)
    durable = DurableSpools(state, {"a:1": busy, "b:1": idle})
    try:
        for seq, name in enumerate(names * 2, start=1):
            durable.stage(result(name, seq))
        await durable.drain()
        assert len(busy) == 6
        assert len(idle) == 0
        assert durable.held[0] == 6
        busy.ack(6)  # the busy shard's collector acknowledges everything
        await durable.drain()
        assert idle.acked_seq == 6
        assert durable.held[0] == 0  # compacted: the idle shard's collector owes nothing
    finally:
        durable.close()
