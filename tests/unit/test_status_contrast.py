"""WCAG AA on the status page's stylesheet: every text colour against its background, and
the map's markers and the uptime bars (graphics) against what they are drawn on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import probenet.collector.status as status_package

CSS = (Path(status_package.__file__).parent / "static" / "status.css").read_text()
TEXT_AA = 4.5
GRAPHICS_AA = 3.0
_RULE = re.compile(r"([^{}]+)\{([^{}]*)\}")
_HEX = re.compile(r"#([0-9a-fA-F]{6})\b")


def rules(css: str) -> list[tuple[str, dict[str, str]]]:
    """(selector, {property: value}) of every rule, comments dropped, media blocks flattened."""
    text = re.sub(r"/\*.*?\*/", "", css, flags=re.DOTALL)
    text = re.sub(r"@media[^{]*\{", "", text)
    found = []
    for selector, body in _RULE.findall(text):
        declarations = {}
        for part in body.split(";"):
            name, _, value = part.partition(":")
            if value:
                declarations[name.strip()] = value.strip()
        found.append((" ".join(selector.split()), declarations))
    return found


def colour(value: str) -> tuple[float, float, float]:
    match = _HEX.search(value)
    assert match, f"colours in status.css are written #rrggbb, not {value!r}"
    digits = match.group(1)
    return tuple(int(digits[i:i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def luminance(rgb: tuple[float, float, float]) -> float:
    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (linear(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    la, lb = sorted((luminance(colour(a)), luminance(colour(b))), reverse=True)
    return (la + 0.05) / (lb + 0.05)


RULES = rules(CSS)
PAGE_BACKGROUND = next(d["background-color"] for s, d in RULES if s == "body")
MAP_BACKGROUND = next(d["fill"] for s, d in RULES if s == ".worldmap .sea")


def test_the_contrast_formula_matches_wcag_examples():
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)
    assert contrast("#ffffff", "#ffffff") == pytest.approx(1.0)


PAIRS = [(s, d["color"], d["background-color"]) for s, d in RULES
         if "color" in d and "background-color" in d]
ALONE = [(s, d["color"]) for s, d in RULES if "color" in d and "background-color" not in d
         and d["color"] != "currentColor"]


def test_every_state_and_level_has_its_own_text_colour_pair():
    selectors = " ".join(s for s, _, _ in PAIRS)
    for state in ("up", "down", "global_outage", "regional_outage", "unknown", "maintenance",
                  "isolated", "degraded"):
        assert f".st-{state}" in selectors, state
    for level in ("up", "global", "regional", "isolated", "maintenance", "unknown",
                  "degraded"):
        assert f".banner.lv-{level}" in selectors, level


@pytest.mark.parametrize(("selector", "text", "background"), PAIRS,
                         ids=[s for s, _, _ in PAIRS])
def test_text_on_its_own_background_meets_aa(selector, text, background):
    assert contrast(text, background) >= TEXT_AA, (selector, contrast(text, background))


HEADER_BACKGROUND = next(d["background-color"] for s, d in RULES if s == "header")


@pytest.mark.parametrize(("selector", "text"), ALONE, ids=[s for s, _ in ALONE])
def test_text_without_a_background_meets_aa_on_what_it_sits_on(selector, text):
    # A rule without its own background sits on the header's (inside it) or the page's.
    background = HEADER_BACKGROUND if selector.startswith("header") else PAGE_BACKGROUND
    assert contrast(text, background) >= TEXT_AA, (selector, text)


def test_map_labels_meet_aa_on_the_map():
    label = next(d for s, d in RULES if s == ".rg-label")
    assert contrast(label["fill"], MAP_BACKGROUND) >= TEXT_AA
    assert contrast(label["fill"], label["stroke"]) >= TEXT_AA  # the halo behind the letters


MARKERS = [(s, d["fill"] if d["fill"] != MAP_BACKGROUND else d["stroke"])
           for s, d in RULES if s.startswith(".rg.st-") and "fill" in d]
BARS = [(s, d["fill"]) for s, d in RULES if s.startswith(".bars .ub-")]


def test_every_marker_and_bar_state_is_styled():
    assert {s.split(".mk-")[-1] for s, _ in MARKERS} == {"up", "down", "unknown",
                                                          "maintenance", "isolated"}
    assert {s.split(".ub-")[-1] for s, _ in BARS} == {"up", "minor", "major", "maint", "none"}


@pytest.mark.parametrize(("selector", "fill"), MARKERS, ids=[s for s, _ in MARKERS])
def test_map_markers_stand_out_from_the_map(selector, fill):
    assert contrast(fill, MAP_BACKGROUND) >= GRAPHICS_AA, selector


@pytest.mark.parametrize(("selector", "fill"), BARS, ids=[s for s, _ in BARS])
def test_uptime_bars_stand_out_from_the_page(selector, fill):
    assert contrast(fill, PAGE_BACKGROUND) >= GRAPHICS_AA, selector
