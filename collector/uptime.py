"""Uptime reports: availability and seconds per state, overall, per region and per UTC day.

Pure: `compute_uptime` takes the journal's history (collector/history.py), a number of days
and `now`, and returns an `UptimeReport`; no I/O, no clock.

What each second counts as, for one probe:

- outside every collector run, or before the probe's first view in a run: `unknown`;
- otherwise the probe's state then (`target_states`): `up`, `regional_outage`,
  `global_outage`, `maintenance`, or `unknown` (fewer than 2 regions with a fresh
  unimpaired agent, or any state this version does not know).

Outage time counts from the state change, i.e. from the outage's detection (`detected_at`),
not from its first failing observation (`started_at`), to its recovery (`ended_at`).

For a service, each second takes the worst of its probes: `global_outage` if any probe is
in one, else `regional_outage` if any is, else `up` if any probe is up, else `maintenance`
if any is, else `unknown`. A region is `down` for the service when any probe is down there,
else `up` when any is up, else `maintenance`, else `unknown`.

Availability (each null when there is no known time, `known` = total - maintenance - unknown):

- `availability` (what the status page shows): the share of known time the target served
  its users, a regional outage counted by the share of regions still up:
  (up + sum over regional-outage time of up regions / (up + down regions)) / known. A
  10-minute outage in 1 of 4 regions costs 2.5 minutes; a global outage costs all of it;
- `availability_strict`: up / known (an outage of any scope counts as down, the SLO view of
  "every region must reach it");
- `availability_global`: (up + regional_outage) / known (only global outages count).

Per region: `availability` = up / (up + down) of that region's verdicts.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .model import rfc3339

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .history import RunPeriod, StateRow

DAY_S = 86_400.0
MAX_DAYS = 400

UP = "up"
REGIONAL = "regional_outage"
GLOBAL = "global_outage"
MAINTENANCE = "maintenance"
UNKNOWN = "unknown"
STATES = (UP, REGIONAL, GLOBAL, MAINTENANCE, UNKNOWN)
REGION_UP = "up"
REGION_DOWN = "down"
REGION_STATES = (REGION_UP, REGION_DOWN, MAINTENANCE, UNKNOWN)
# Worst first: a service's state is the first of these any of its probes is in.
_SERVICE_ORDER = (GLOBAL, REGIONAL, UP, MAINTENANCE, UNKNOWN)
_REGION_ORDER = (REGION_DOWN, REGION_UP, MAINTENANCE, UNKNOWN)


def _ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator <= 0 else round(numerator / denominator, 6)


@dataclass(slots=True)
class Tally:
    """Seconds per state over some span (the whole range or one day)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STATES, 0.0))
    # Regional-outage seconds weighted by the share of regions up (for `availability`).
    served: float = 0.0

    def add(self, state: str, seconds: float, up_share: float) -> None:
        """Count `seconds` in `state` (`up_share`: regions up, for a regional outage)."""
        self.seconds[state] += seconds
        if state == UP:
            self.served += seconds
        elif state == REGIONAL:
            self.served += seconds * up_share

    @property
    def total(self) -> float:
        """Every second counted."""
        return sum(self.seconds.values())

    @property
    def known(self) -> float:
        """Seconds neither in maintenance nor unknown."""
        s = self.seconds
        return s[UP] + s[REGIONAL] + s[GLOBAL]

    def to_json(self) -> dict[str, Any]:
        """`availability*` and `seconds` (rounded to the millisecond)."""
        s = self.seconds
        return {
            "availability": _ratio(self.served, self.known),
            "availability_strict": _ratio(s[UP], self.known),
            "availability_global": _ratio(s[UP] + s[REGIONAL], self.known),
            "seconds": {"total": round(self.total, 3),
                        **{name: round(s[name], 3) for name in STATES}},
        }


@dataclass(slots=True)
class RegionTally:
    """One region's seconds per verdict."""

    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(REGION_STATES, 0.0))

    def to_json(self) -> dict[str, Any]:
        """`availability` (up / (up + down)) and `seconds`."""
        s = self.seconds
        return {"availability": _ratio(s[REGION_UP], s[REGION_UP] + s[REGION_DOWN]),
                "seconds": {name: round(s[name], 3) for name in REGION_STATES}}


@dataclass(frozen=True, slots=True)
class DayTally:
    """One UTC day's bucket."""

    date: dt.date
    tally: Tally


@dataclass(frozen=True, slots=True)
class UptimeReport:
    """An uptime report of one probe or one service (the /api/v1/uptime answer)."""

    probe: str | None
    service: str | None
    probes: tuple[str, ...]
    days: int
    start: float
    end: float
    overall: Tally
    regions: Mapping[str, RegionTally]
    daily: tuple[DayTally, ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON answer (field names are what the status page reads)."""
        return {
            "probe": self.probe,
            "service": self.service,
            "probes": list(self.probes),
            "days": self.days,
            "from": rfc3339(self.start),
            "to": rfc3339(self.end),
            **self.overall.to_json(),
            "regions": {name: tally.to_json() for name, tally in sorted(self.regions.items())},
            "daily": [{"date": day.date.isoformat(), **day.tally.to_json()}
                      for day in self.daily],
        }


def report_range(days: int, now: float) -> tuple[float, float]:
    """[start, end) of a `days` report at `now`: from midnight UTC `days - 1` days ago to now."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be from 1 to {MAX_DAYS}, not {days}")
    today = dt.datetime.fromtimestamp(now, tz=dt.UTC).date()
    first = today - dt.timedelta(days=days - 1)
    start = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC).timestamp()
    return start, now


@dataclass(frozen=True, slots=True)
class _Segment:
    start: float
    end: float
    state: str
    regions: Mapping[str, str]


def _segments(rows: Sequence[StateRow], runs: Sequence[RunPeriod], start: float,
              end: float, now: float) -> dict[str, list[_Segment]]:
    """Each probe's known spans inside [start, end), by start.

    A row holds until the probe's next row of the same run, or until the run's end.
    """
    run_end = {run.id: (run.ended_at if run.ended_at is not None else now) for run in runs}
    by_probe: dict[str, list[StateRow]] = {}
    for row in rows:
        if row.run in run_end:
            by_probe.setdefault(row.probe, []).append(row)
    out: dict[str, list[_Segment]] = {}
    for probe, own in by_probe.items():
        own.sort(key=lambda row: (row.run, row.at))
        spans: list[_Segment] = []
        for i, row in enumerate(own):
            following = own[i + 1] if i + 1 < len(own) else None
            until = (following.at if following is not None and following.run == row.run
                     else run_end[row.run])
            lo, hi = max(row.at, start), min(until, end)
            if hi > lo:
                spans.append(_Segment(lo, hi, row.state, row.regions))
        spans.sort(key=lambda span: span.start)
        out[probe] = spans
    return out


def _state(text: str) -> str:
    return text if text in STATES else UNKNOWN


def _region_state(text: str) -> str:
    return text if text in REGION_STATES else UNKNOWN


def compute_uptime(history_rows: Sequence[StateRow], runs: Sequence[RunPeriod], *,
                   probes: Sequence[str], days: int, now: float, probe: str | None = None,
                   service: str | None = None) -> UptimeReport:
    """The uptime of `probes` (one probe, or a service's) over the last `days` UTC days.

    `history_rows` and `runs` as collector/history.py reads them; rows of other probes and
    of runs not given are ignored. The current day is partial (up to `now`).
    """
    start, end = report_range(days, now)
    names = tuple(sorted(set(probes)))
    wanted = set(names)
    spans = _segments([row for row in history_rows if row.probe in wanted], runs, start,
                      end, now)
    region_names = sorted({region for probe_spans in spans.values()
                           for span in probe_spans for region in span.regions})
    cuts = {start, end}
    cuts.update(start + day * DAY_S for day in range(1, days) if start + day * DAY_S < end)
    for probe_spans in spans.values():
        for span in probe_spans:
            cuts.update((span.start, span.end))
    edges = sorted(cuts)
    overall = Tally()
    daily = [Tally() for _ in range(days)]
    regions = {name: RegionTally() for name in region_names}
    cursor = dict.fromkeys(spans, 0)
    for lo, hi in itertools.pairwise(edges):
        current: list[_Segment] = []
        for name, probe_spans in spans.items():
            i = cursor[name]
            while i < len(probe_spans) and probe_spans[i].end <= lo:
                i += 1
            cursor[name] = i
            if i < len(probe_spans) and probe_spans[i].start <= lo:
                current.append(probe_spans[i])
        state, verdicts = _combine(current, region_names)
        up = sum(1 for v in verdicts.values() if v == REGION_UP)
        down = sum(1 for v in verdicts.values() if v == REGION_DOWN)
        up_share = up / (up + down) if down else 0.0
        seconds = hi - lo
        overall.add(state, seconds, up_share)
        daily[min(int((lo - start) // DAY_S), days - 1)].add(state, seconds, up_share)
        for name, verdict in verdicts.items():
            regions[name].seconds[verdict] += seconds
    first = dt.datetime.fromtimestamp(start, tz=dt.UTC).date()
    return UptimeReport(
        probe=probe, service=service, probes=names, days=days, start=start, end=end,
        overall=overall, regions=regions,
        daily=tuple(DayTally(first + dt.timedelta(days=i), tally)
                    for i, tally in enumerate(daily)))


def _combine(current: Sequence[_Segment], region_names: Sequence[str]) -> tuple[
        str, dict[str, str]]:
    """The state and region verdicts of the probes' spans covering one moment (worst-of)."""
    if not current:
        return UNKNOWN, dict.fromkeys(region_names, UNKNOWN)
    states = {_state(span.state) for span in current}
    state = next(s for s in _SERVICE_ORDER if s in states or s == UNKNOWN)
    verdicts: dict[str, str] = {}
    for name in region_names:
        seen = {_region_state(span.regions.get(name, UNKNOWN)) for span in current}
        verdicts[name] = next(v for v in _REGION_ORDER if v in seen or v == UNKNOWN)
    return state, verdicts
