"""The status page's world map: an inline SVG with a marker per configured region (pure).

Equirectangular (x = longitude, y = -latitude), a graticule every 30 degrees and rough
continent outlines drawn from a few dozen points each: no tiles, fonts or scripts from
anywhere. Each region's marker holds one shape per state (CSS shows the one of the region's
state class), and a text label says the state in words: never colour alone.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

# The part of the world drawn: latitudes 80 N to 60 S (nobody probes from Antarctica).
TOP_LAT = 80.0
BOTTOM_LAT = -60.0
VIEW_BOX = f"0 0 360 {TOP_LAT - BOTTOM_LAT:g}"

# Rough outlines, (longitude, latitude) in degrees: enough to place a region, no more.
_CONTINENTS: tuple[tuple[tuple[float, float], ...], ...] = (
    # North America
    ((-168, 66), (-160, 71), (-140, 70), (-120, 72), (-95, 72), (-80, 73), (-62, 66),
     (-55, 52), (-66, 45), (-70, 41), (-76, 35), (-81, 30), (-80, 25), (-83, 29), (-90, 30),
     (-97, 27), (-97, 22), (-92, 18), (-87, 21), (-83, 15), (-78, 8), (-80, 7), (-86, 12),
     (-92, 14), (-105, 20), (-110, 24), (-115, 30), (-118, 34), (-124, 40), (-124, 48),
     (-135, 58), (-150, 60), (-165, 60)),
    # Greenland
    ((-73, 78), (-60, 80), (-30, 80), (-20, 76), (-22, 70), (-42, 60), (-52, 64), (-58, 75)),
    # South America
    ((-78, 8), (-72, 12), (-62, 10), (-50, 2), (-35, -5), (-38, -13), (-41, -22), (-48, -26),
     (-53, -34), (-58, -38), (-65, -42), (-68, -52), (-72, -54), (-75, -48), (-73, -38),
     (-71, -28), (-70, -18), (-76, -14), (-81, -6), (-80, 0)),
    # Europe and Asia
    ((-10, 36), (-9, 43), (-2, 44), (-5, 48), (2, 51), (8, 54), (10, 57), (5, 59), (5, 62),
     (14, 67), (25, 71), (40, 68), (60, 70), (70, 73), (80, 73), (100, 78), (115, 74),
     (130, 72), (140, 73), (160, 70), (180, 69), (180, 65), (172, 62), (163, 60), (158, 52),
     (143, 59), (135, 55), (141, 46), (131, 42), (127, 35), (122, 40), (117, 38), (122, 31),
     (120, 24), (110, 20), (108, 12), (105, 9), (100, 13), (103, 2), (98, 8), (98, 16),
     (92, 21), (88, 22), (80, 15), (77, 8), (73, 18), (70, 22), (66, 25), (57, 25),
     (52, 30), (48, 29), (55, 22), (59, 22), (52, 16), (44, 13), (39, 21), (35, 28),
     (34, 31), (35, 36), (27, 37), (26, 40), (23, 38), (22, 36), (19, 41), (12, 44),
     (16, 38), (12, 38), (9, 44), (3, 43), (-1, 37), (-6, 36)),
    # Africa
    ((-17, 21), (-6, 36), (10, 37), (11, 33), (20, 31), (32, 31), (35, 28), (43, 12),
     (51, 12), (40, -5), (40, -16), (35, -24), (32, -29), (27, -34), (20, -35), (18, -30),
     (12, -18), (13, -9), (9, -1), (9, 4), (-3, 5), (-8, 4), (-13, 8), (-17, 14)),
    # Australia
    ((114, -22), (122, -18), (130, -12), (137, -12), (142, -11), (146, -19), (153, -25),
     (151, -33), (146, -39), (138, -35), (130, -32), (116, -35), (114, -28)),
    # Great Britain, Japan
    ((-5, 50), (1, 51), (0, 53), (-2, 56), (-5, 58), (-6, 55), (-3, 54)),
    ((130, 31), (135, 34), (140, 36), (142, 40), (141, 45), (140, 42), (136, 37), (131, 34)),
)

# One shape per state; CSS shows the one matching the marker's `st-*` class.
_MARKERS = (
    '<circle class="mk mk-up" r="3.2"/>'
    '<path class="mk mk-down" d="M-3.4,-3.4h6.8v6.8h-6.8zM-2,-2l4,4M2,-2l-4,4"/>'
    '<circle class="mk mk-unknown" r="2.8"/>'
    '<path class="mk mk-maintenance" d="M0,-4L4,0L0,4L-4,0z"/>'
    '<path class="mk mk-isolated" d="M0,-4.2L4,3L-4,3z"/>'
)


def project(lat: float, lon: float) -> tuple[float, float]:
    """SVG coordinates of a position (latitudes beyond the drawn band are clamped)."""
    lat = max(BOTTOM_LAT, min(TOP_LAT, lat))
    return round(lon + 180.0, 2), round(TOP_LAT - lat, 2)


def _points(outline: Sequence[tuple[float, float]]) -> str:
    return " ".join("{:g},{:g}".format(*project(lat, lon)) for lon, lat in outline)


def _graticule() -> str:
    lines = [f'<line x1="{x}" y1="0" x2="{x}" y2="{TOP_LAT - BOTTOM_LAT:g}"/>'
             for x in range(0, 361, 30)]
    lines.extend(f'<line x1="0" y1="{y:g}" x2="360" y2="{y:g}"/>'
                 for y in (TOP_LAT - lat for lat in range(60, int(BOTTOM_LAT) - 1, -30)))
    return f'<g class="graticule">{"".join(lines)}</g>'


def world_map(regions: Sequence[Mapping[str, Any]], states: Mapping[str, str],
              words: Mapping[str, str]) -> str:
    """The map's SVG: a marker and a label (`Frankfurt: Down`) per region with a location.

    `regions` are the page model's (id, name, location); `states` region -> state (`up`,
    `down`, `unknown`, `maintenance`, `isolated`); `words` state -> its word.
    """
    land = "".join(f'<polygon points="{_points(outline)}"/>' for outline in _CONTINENTS)
    markers = []
    for region in regions:
        location = region.get("location")
        if not location:
            continue
        x, y = project(float(location[0]), float(location[1]))
        state = states.get(region["id"], "unknown")
        anchor = "end" if x > 300 else "start" if x < 60 else "middle"
        markers.append(
            f'<g class="rg st-{escape(state)}" data-region="{escape(region["id"])}" '
            f'transform="translate({x:g} {y:g})">{_MARKERS}'
            f'<text class="rg-label" y="10" text-anchor="{anchor}">'
            f'<tspan class="rg-name">{escape(region["name"])}</tspan>: '
            f'<tspan class="rg-state">{escape(words.get(state, state))}</tspan></text></g>')
    return (f'<svg class="worldmap" viewBox="{VIEW_BOX}" role="img" '
            f'aria-label="Map of the regions and their state" '
            f'preserveAspectRatio="xMidYMid meet">'
            f'<rect class="sea" x="0" y="0" width="360" height="{TOP_LAT - BOTTOM_LAT:g}"/>'
            f'{_graticule()}<g class="land">{land}</g>{"".join(markers)}</svg>')
