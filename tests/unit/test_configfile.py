"""YAML config primitives: durations, positions of errors, duplicate keys, cross-checks."""

from __future__ import annotations

import pytest

from probenet.configfile import (
    ConfigError,
    Duration,
    FrozenModel,
    format_duration,
    load_model,
    load_text,
    parse_duration,
)


class Item(FrozenModel):
    name: str
    every: Duration = 30.0
    count: int = 1


class Doc(FrozenModel):
    title: str
    items: tuple[Item, ...] = ()


def _unique_names(doc: Doc) -> list[tuple[tuple[str | int, ...], str]]:
    seen: set[str] = set()
    found = []
    for i, item in enumerate(doc.items):
        if item.name in seen:
            found.append((("items", i, "name"), f"duplicate name {item.name!r}"))
        seen.add(item.name)
    return found


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1m30s", 90.0),
    ("1.5s", 1.5), ("250us", 0.00025), ("2d", 172800.0),
])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "30", "5x", "s", "1m 30s", "-5s", "30s5", 30, True, None])
def test_bad_durations_are_refused(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(("seconds", "text"), [(0.5, "500ms"), (30.0, "30s"), (300.0, "5m"),
                                               (3600.0, "1h"), (1.5, "1.5s")])
def test_durations_format_back(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def _issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(Doc, text, "f.yaml", checks=[_unique_names])
    return [str(i) for i in info.value.issues]


def test_valid_document_becomes_a_frozen_model():
    doc = load_text(Doc, "title: t\nitems:\n  - {name: a, every: 5m}\n", "f.yaml")
    assert doc.items[0].every == 300.0
    with pytest.raises(ValueError, match="frozen"):
        doc.items[0].every = 1.0  # type: ignore[misc]


def test_errors_point_at_the_value():
    expected = ("f.yaml:4:12: items[0].every: invalid duration 'soon': write it like 500ms, "
                "30s, 5m or 1m30s")
    assert _issues("title: t\nitems:\n  - name: a\n    every: soon\n") == [expected]


def test_unknown_key_points_at_the_key():
    assert _issues("title: t\nitems:\n  - name: a\n    evry: 5s\n") == [
        "f.yaml:4:5: unknown key 'evry' (did you mean 'every'?)"]


def test_every_error_is_reported_in_file_order():
    issues = _issues("items:\n  - name: a\n    count: many\n  - bogus: 1\n")
    assert [i.split(": ")[0] for i in issues] == ["f.yaml:1:1", "f.yaml:3:12", "f.yaml:4:5",
                                                  "f.yaml:4:5"]
    assert "missing required key 'title'" in issues[0]


def test_yaml_syntax_error_has_a_position():
    assert _issues("title: [unclosed\nitems: []\n")[0].startswith("f.yaml:2:")


def test_duplicate_keys_are_errors():
    assert _issues("title: a\ntitle: b\n") == ["f.yaml:2:1: duplicate key 'title'"]


def test_cross_checks_are_reported_at_their_path():
    assert _issues("title: t\nitems:\n  - name: a\n  - name: a\n") == [
        "f.yaml:4:11: duplicate name 'a'"]


def test_top_level_must_be_a_mapping():
    assert _issues("- a\n- b\n") == ["f.yaml:1:1: the top level must be a mapping of keys"]


def test_several_documents_are_refused():
    assert "several" in _issues("title: a\n---\ntitle: b\n")[0]


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_model(Doc, tmp_path / "missing.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_model(Doc, binary)


def test_unknown_key_far_from_any_known_key_gets_no_guess():
    assert _issues("title: t\nzzz: 1\n") == ["f.yaml:2:1: unknown key 'zzz'"]
