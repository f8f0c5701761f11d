"""The JSON paths of flow checks and extractions: grammar, lookups, MISSING, errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probenet.agent.jsonpath import MISSING, JsonPath

DOCUMENT = {
    "user": {"name": "probe-bot", "roles": ["reader", "poster"], "nick-name": "pb"},
    "items": [{"id": 1}, {"id": 2}, {"id": 3}],
    "weird key": {"a.b": True, "it's": 0},
    "nothing": None,
}


@pytest.mark.parametrize(("path", "steps"), [
    ("$", ()),
    ("$.user.name", ("user", "name")),
    ("$.user.nick-name", ("user", "nick-name")),
    ("$.items[0].id", ("items", 0, "id")),
    ("$.items[-1]", ("items", -1)),
    ("$['weird key']['a.b']", ("weird key", "a.b")),
    ('$["weird key"]', ("weird key",)),
    (r"$['weird key']['it\'s']", ("weird key", "it's")),
    ("$[0][1]", (0, 1)),
])
def test_parse(path, steps):
    parsed = JsonPath.parse(path)
    assert parsed.steps == steps
    assert str(parsed) == path


@pytest.mark.parametrize(("path", "found"), [
    ("$.user.name", "probe-bot"),
    ("$.user.roles[1]", "poster"),
    ("$.items[-1].id", 3),
    ("$['weird key']['a.b']", True),
    (r"$['weird key']['it\'s']", 0),
    ("$.nothing", None),  # JSON null is a value, not MISSING
    ("$.user.nick-name", "pb"),
])
def test_find_values(path, found):
    assert JsonPath.parse(path).find(DOCUMENT) == found


@pytest.mark.parametrize("path", [
    "$.user.email", "$.items[3]", "$.items[-4]", "$.user.name.first", "$.user[0]",
    "$.items.id", "$.nothing.inside",
])
def test_find_missing(path):
    assert JsonPath.parse(path).find(DOCUMENT) is MISSING


def test_whole_document_and_scalars():
    assert JsonPath.parse("$").find(DOCUMENT) is DOCUMENT
    assert JsonPath.parse("$").find(7) == 7
    assert JsonPath.parse("$.a").find("text") is MISSING
    assert repr(MISSING) == "MISSING"


@pytest.mark.parametrize(("path", "fragment"), [
    ("user.name", "it must start with $"),
    ("", "it must start with $"),
    ("$.", "expected a name after '.' at offset 1"),
    ("$.user..name", "expected a name after '.' at offset 6"),
    ("$.items[*]", "expected an index or a quoted key after '[' at offset 7"),
    ("$.items[?(@.id)]", "wildcards and filters are not supported"),
    ("$.items[0", "expected ']' at offset 9"),
    ("$['unclosed]", "unclosed quote at offset 2"),
    ("$..name", "expected a name after '.' at offset 1"),
    ("$ user", "unexpected ' ' at offset 1"),
])
def test_parse_errors_name_the_offset(path, fragment):
    with pytest.raises(ValueError) as raised:
        JsonPath.parse(path)
    assert fragment in str(raised.value)


_keys = st.text(min_size=1, max_size=8)


@given(st.lists(st.one_of(_keys, st.integers(min_value=-3, max_value=3)), max_size=5))
def test_any_written_path_finds_what_it_names(steps):
    # Build a document holding a marker at `steps`, write the path with quoted keys, find it.
    marker = {"found": True}
    document: object = marker
    for step in reversed(steps):
        if isinstance(step, str):
            document = {step: document}
        else:
            size = abs(step) + 1 if step < 0 else step + 1
            items: list[object] = [None] * size
            items[step] = document
            document = items
    text = "$" + "".join(f"[{_quoted(step)}]" if isinstance(step, str) else f"[{step}]"
                         for step in steps)
    assert JsonPath.parse(text).find(document) is marker


def _quoted(key: str) -> str:
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
