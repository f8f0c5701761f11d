"""`${name}` templates of flow steps: parsing, escapes, names, filling, errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probenet.agent.templates import Template, check_variable_name


@pytest.mark.parametrize(("text", "parts"), [
    ("", ("",)),
    ("plain text", ("plain text",)),
    ("a${x}b", ("a", "x", "b")),
    ("${a}${b}", ("", "a", "", "b", "")),
    ("$${x}", ("${x}",)),  # the escape writes a literal ${
    ("$x and $ and $5 and ${y}", ("$x and $ and $5 and ", "y", "")),  # other $ are text
    ("{x} and }", ("{x} and }",)),
    ("${_private9}", ("", "_private9", "")),
])
def test_parse_splits_literals_and_names(text, parts):
    assert Template.parse(text).parts == parts


@pytest.mark.parametrize(("text", "fragment"), [
    ("${", "unclosed '${' at offset 0"),
    ("abc ${user", "unclosed '${' at offset 4"),
    ("${1user}", "invalid variable name '1user'"),
    ("${}", "invalid variable name ''"),
    ("${a-b}", "invalid variable name 'a-b'"),
    ("${" + "a" * 65 + "}", "invalid variable name"),
])
def test_parse_errors_say_what_and_where(text, fragment):
    with pytest.raises(ValueError) as raised:
        Template.parse(text)
    assert fragment in str(raised.value)


def test_names_keep_order_and_repeats():
    template = Template.parse("${b}-${a}-${b}")
    assert template.names == ("b", "a", "b")
    assert not template.is_constant
    assert Template.parse("no names").is_constant


def test_fill_replaces_every_placeholder_and_keeps_escapes():
    template = Template.parse("user=${user}&pw=${pw}&raw=$${user}")
    assert template.fill({"user": "bot", "pw": "p&w"}) == "user=bot&pw=p&w&raw=${user}"


def test_fill_does_not_substitute_again_inside_values():
    assert Template.parse("${a}").fill({"a": "${b}", "b": "no"}) == "${b}"


def test_fill_with_a_missing_name_is_a_key_error():
    with pytest.raises(KeyError):
        Template.parse("${missing}").fill({})


def test_check_variable_name():
    assert check_variable_name("csrf_token") == "csrf_token"
    with pytest.raises(ValueError, match="invalid variable name"):
        check_variable_name("csrf-token")


_literal = st.text(alphabet=st.characters(codec="utf-8"), max_size=12).filter(
    lambda text: not text.endswith("$"))
_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)


@given(st.lists(st.tuples(_literal, _name), max_size=5), _literal)
def test_written_templates_parse_back_to_their_parts(pairs, tail):
    # A literal written with every `${` escaped, then `${name}`: parsing gives the parts back.
    # (A literal may not end in `$`: `$` + `${x}` reads as the escape `$${` + `x}`.)
    text = "".join(literal.replace("${", "$${") + f"${{{name}}}" for literal, name in pairs)
    text += tail.replace("${", "$${")
    template = Template.parse(text)
    assert template.names == tuple(name for _, name in pairs)
    values = {name: f"<{name}>" for _, name in pairs}
    assert template.fill(values) == "".join(
        literal + f"<{name}>" for literal, name in pairs) + tail
