"""The flow probe's Redactor: a secret is removed from a text in every form it may take."""

from __future__ import annotations

import html
import json
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from probenet.agent.probes.flow import REDACTED, Redactor

SECRET = "hunter2 & 'é'/\"<>%"

FORMS = {
    "raw": SECRET,
    "percent-encoded": quote(SECRET, safe=""),
    "percent-encoded path": quote(SECRET),
    "form-encoded": quote_plus(SECRET),
    "HTML-escaped": html.escape(SECRET),
    "JSON string": json.dumps(SECRET)[1:-1],
    "JSON string, ASCII": json.dumps(SECRET, ensure_ascii=False)[1:-1],
    "repr": repr(SECRET)[1:-1],
    "bytes repr": repr(SECRET.encode())[2:-1],
    "read back as latin-1": SECRET.encode().decode("latin-1"),
    "sent as latin-1": SECRET.encode("latin-1", errors="replace").decode("latin-1"),
}


@pytest.mark.parametrize("form", FORMS)
def test_every_form_is_redacted(form):
    text = f"before {FORMS[form]} after"
    assert Redactor([SECRET])(text) == f"before {REDACTED} after"


@pytest.mark.parametrize("cut", [4, 8, len(SECRET) - 1])
def test_a_secret_cut_by_an_excerpt_is_redacted(cut):
    redact = Redactor([SECRET])
    start = SECRET[:cut]
    assert redact(f"value {start!r} does not match") == f"value '{REDACTED}' does not match"
    assert redact(f"error: {start}...") == f"error: {REDACTED}..."
    assert redact(f"ends with {start}") == f"ends with {REDACTED}"


def test_short_starts_and_starts_inside_a_text_stay():
    redact = Redactor(["hunter2"])
    assert redact("the hunters went 'hun'") == "the hunters went 'hun'"
    assert redact("hunter is not a secret here") == "hunter is not a secret here"


def test_several_secrets_and_no_secret():
    redact = Redactor(["alpha-1", "beta-22", ""])
    assert redact("alpha-1:beta-22") == f"{REDACTED}:{REDACTED}"
    assert Redactor([])("anything") == "anything"
    assert Redactor(["x1234"])("") == ""


def test_a_secret_that_holds_another_is_redacted_whole():
    redact = Redactor(["abcd", "abcdefgh"])
    assert redact("[abcdefgh]") == f"[{REDACTED}]"


_secrets = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
                   min_size=5, max_size=24)
_encoders = st.sampled_from([
    lambda s: s, lambda s: quote(s, safe=""), quote_plus, html.escape,
    lambda s: json.dumps(s)[1:-1], lambda s: repr(s)[1:-1],
    lambda s: s.encode().decode("latin-1")])


@given(_secrets, _encoders, st.text(max_size=20), st.text(max_size=20))
def test_no_encoded_secret_survives(secret, encode, before, after):
    form = encode(secret)
    assume(secret not in REDACTED and form not in REDACTED)
    text = Redactor([secret])(before + form + after)
    assert secret not in text
    assert form not in text


@given(_secrets, st.integers(min_value=4, max_value=23), st.sampled_from(["'", '"', "...", ""]))
def test_no_cut_secret_survives(secret, cut, end):
    start = secret[:cut]
    assume(start not in REDACTED)
    assert start not in Redactor([secret])(f"x {start}{end}")
