"""Maintenance windows: what they cover and when, and the store of config and API windows.

Pure: no I/O. A window covers probes and/or services (by name), in every region or only in
the regions it lists, from `start` (inclusive) to `end` (exclusive), unix seconds. While a
window covers a (probe, region), the classifier takes that region's results as no evidence
for an outage (collector/classify.py, `Classifier.set_maintenance`).

Windows come from two places: the config file's `maintenance:` list (`source: "config"`,
id "cfg-" + a hash of the content, so it is stable across restarts and changes when the
window does) and the HTTP API (`source: "api"`, a random id, journaled so that it survives a
restart). Config windows cannot be deleted through the API.

Coverage is merged across windows: a probe covered by one window in every region and by
another in `eu` only is covered in every region; two windows naming regions cover the union.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from probenet.names import name_problem

from .model import rfc3339

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

Source = Literal["config", "api"]
WindowState = Literal["active", "planned", "ended"]

Coverage = frozenset[str] | None
"""Regions a window set covers a probe in: None = every region, empty = not covered."""

MAX_REASON_CHARS = 500
MAX_NAMES = 200  # entries of each of probes, services, regions
MAX_API_WINDOWS = 1000  # API windows not yet ended
MAX_WINDOW_S = 31 * 86_400.0  # the longest window the API accepts
MAX_BODY_BYTES = 64 * 1024  # a POST body
# An API window may start this far in the past (clock skew of the caller, "starting now").
START_SLACK_S = 300.0
# Ended API windows are kept (listed, journaled) this long, then pruned from the store.
RETAIN_ENDED_S = 7 * 86_400.0

_KEYS = ("probes", "services", "regions", "start", "end", "reason")
REJECTION_REASONS = ("unauthenticated", "forbidden", "write_disabled", "invalid",
                     "too_large", "too_many", "unknown_id", "config_window")
"""The `reason` values of probenet_maintenance_api_rejections_total."""


class MaintenanceError(ValueError):
    """A window (or a request about one) is not acceptable; `field` names what is wrong."""

    def __init__(self, field: str | None, message: str) -> None:
        """`field` is the JSON key (or None when the whole body is wrong)."""
        super().__init__(message)
        self.field = field


class UnknownWindowError(KeyError):
    """No window has this id."""


class ConfigWindowError(ValueError):
    """The window comes from the config file: only the config file can change it."""


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """One maintenance window (frozen; JSON field names are the API's contract)."""

    id: str
    probes: tuple[str, ...]
    services: tuple[str, ...]
    regions: tuple[str, ...]  # empty: every region
    start: float
    end: float
    reason: str
    source: Source
    created_at: float | None = None

    def active_at(self, now: float) -> bool:
        """True while the window is open: start <= now < end."""
        return self.start <= now < self.end

    def state(self, now: float) -> WindowState:
        """active, planned (not started yet) or ended."""
        if now < self.start:
            return "planned"
        return "active" if now < self.end else "ended"

    def applies_to(self, probe: str, service: str | None) -> bool:
        """Whether the window names the probe, or its service (whatever the time)."""
        return probe in self.probes or (bool(service) and service in self.services)

    def covers(self, probe: str, service: str | None, region: str, at: float) -> bool:
        """Whether the window covers `probe` (of `service`) in `region` at time `at`."""
        return (self.active_at(at) and self.applies_to(probe, service)
                and (not self.regions or region in self.regions))

    @property
    def coverage(self) -> Coverage:
        """The regions the window covers its probes in (None: every region)."""
        return frozenset(self.regions) if self.regions else None

    def to_json(self, now: float) -> dict[str, Any]:
        """The API's JSON (times in RFC 3339 UTC), with the state at `now`."""
        return {
            "id": self.id,
            "probes": list(self.probes),
            "services": list(self.services),
            "regions": list(self.regions),
            "start": rfc3339(self.start),
            "end": rfc3339(self.end),
            "reason": self.reason,
            "source": self.source,
            "state": self.state(now),
            "created_at": rfc3339(self.created_at),
        }

    def to_record(self) -> dict[str, Any]:
        """The journal's JSON (times as unix seconds, exact)."""
        return {"id": self.id, "probes": list(self.probes), "services": list(self.services),
                "regions": list(self.regions), "start": self.start, "end": self.end,
                "reason": self.reason, "source": self.source, "created_at": self.created_at}

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> MaintenanceWindow:
        """Inverse of `to_record` (KeyError, TypeError or ValueError when malformed)."""
        source = data["source"]
        if source not in {"config", "api"}:
            raise ValueError(f"unknown source {source!r}")
        created = data.get("created_at")
        return cls(id=str(data["id"]), probes=tuple(data["probes"]),
                   services=tuple(data["services"]), regions=tuple(data["regions"]),
                   start=float(data["start"]), end=float(data["end"]),
                   reason=str(data["reason"]), source=source,
                   created_at=None if created is None else float(created))


def config_window_id(probes: Iterable[str], services: Iterable[str], regions: Iterable[str],
                     *, start: float, end: float, reason: str) -> str:
    """A config window's id: stable across restarts, changes with the window's content."""
    content = json.dumps([sorted(probes), sorted(services), sorted(regions), start, end,
                          reason], separators=(",", ":"))
    return "cfg-" + hashlib.sha256(content.encode()).hexdigest()[:12]


def new_window_id() -> str:
    """An API window's id."""
    return uuid.uuid4().hex


def check_reason(value: str) -> str:
    """A window's reason: non-empty, printable, at most MAX_REASON_CHARS (ValueError)."""
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) > MAX_REASON_CHARS:
        raise ValueError(f"must be at most {MAX_REASON_CHARS} characters, not {len(value)}")
    if any(not ch.isprintable() for ch in value):
        raise ValueError("must not hold control characters")
    return value


def check_names(values: Iterable[str], what: str) -> tuple[str, ...]:
    """Sorted, de-duplicated names (ValueError naming the first invalid one, or too many)."""
    names = tuple(sorted(set(values)))
    if len(names) > MAX_NAMES:
        raise ValueError(f"at most {MAX_NAMES} {what}, not {len(names)}")
    for name in names:
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(problem)
    return names


def check_span(start: float, end: float) -> None:
    """Check that end comes after start (ValueError)."""
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError("start and end must be finite times")
    if end <= start:
        raise ValueError(f"end ({rfc3339(end)}) must be after start ({rfc3339(start)})")


# RFC 3339 date-time (section 5.6): fromisoformat alone also takes ISO week dates and more.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})?")
# Times a window may name: what RFC 3339 UTC output can show back (years 1970 to 9998).
_EARLIEST_S = 0.0
_LATEST_S = 253_370_764_800.0  # 9999-01-01T00:00:00Z


def parse_time(value: str) -> float:
    """RFC 3339 with a time zone (`2026-12-01T02:00:00Z`) as unix seconds (ValueError)."""
    text = value.upper()
    if _RFC3339.fullmatch(text) is None:
        raise ValueError(f"{_quoted(value)} is not an RFC 3339 time like "
                         "2026-12-01T02:00:00Z")
    if not text.endswith("Z") and text[-6] not in "+-":
        raise ValueError(f"{_quoted(value)} has no time zone: end it with Z or +hh:mm")
    # fromisoformat takes at most microseconds: cut nanoseconds to them.
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:min(digits, 6)]}{rest[digits:]}"
    try:
        seconds = dt.datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{_quoted(value)} is not a valid time: {exc}") from exc
    if not _EARLIEST_S <= seconds < _LATEST_S:
        raise ValueError(f"{_quoted(value)} is out of range (1970 to 9998)")
    return seconds


def _quoted(value: str) -> str:
    return repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value)} characters)"


def _names_field(body: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MaintenanceError(key, f"{key} must be a list of names")
    try:
        return check_names(value, key)
    except ValueError as exc:
        raise MaintenanceError(key, f"{key}: {exc}") from exc


def _time_field(body: Mapping[str, Any], key: str) -> float:
    value = body[key]
    if not isinstance(value, str):
        raise MaintenanceError(key, f"{key} must be an RFC 3339 time string like "
                                    "2026-12-01T02:00:00Z")
    try:
        return parse_time(value)
    except ValueError as exc:
        raise MaintenanceError(key, f"{key}: {exc}") from exc


def parse_window_json(body: object, *, now: float,
                      new_id: Callable[[], str] = new_window_id) -> MaintenanceWindow:
    """An API window from a POST body (parsed JSON); MaintenanceError naming the field.

    Keys: probes and/or services (lists of names, at least one entry in all), regions
    (optional, empty = every region), start (optional, default now), end and reason.
    """
    if not isinstance(body, dict):
        raise MaintenanceError(None, "the body must be a JSON object with probes and/or "
                                     "services, end and reason")
    unknown = sorted(str(k) for k in body if k not in _KEYS)
    if unknown:
        raise MaintenanceError(unknown[0], f"unknown key {_quoted(unknown[0])} (allowed: "
                                           f"{', '.join(_KEYS)})")
    probes = _names_field(body, "probes")
    services = _names_field(body, "services")
    regions = _names_field(body, "regions")
    if not probes and not services:
        raise MaintenanceError("probes", "a window must name probes or services (or both)")
    for key in ("end", "reason"):
        if key not in body:
            raise MaintenanceError(key, f"{key} is required")
    start, end = _span_fields(body, now)
    reason = body["reason"]
    if not isinstance(reason, str):
        raise MaintenanceError("reason", "reason must be a string")
    try:
        check_reason(reason)
    except ValueError as exc:
        raise MaintenanceError("reason", f"reason {exc}") from exc
    return MaintenanceWindow(id=new_id(), probes=probes, services=services, regions=regions,
                             start=start, end=end, reason=reason, source="api",
                             created_at=now)


def _span_fields(body: Mapping[str, Any], now: float) -> tuple[float, float]:
    """A POST body's start (default now) and end, checked against each other and `now`."""
    start = _time_field(body, "start") if "start" in body else now
    end = _time_field(body, "end")
    if end <= start:
        raise MaintenanceError("end", f"end ({rfc3339(end)}) must be after start "
                                      f"({rfc3339(start)})")
    if end <= now:
        raise MaintenanceError("end", f"end ({rfc3339(end)}) is in the past")
    if start < now - START_SLACK_S:
        raise MaintenanceError("start", f"start ({rfc3339(start)}) is more than "
                                        f"{START_SLACK_S:g}s in the past: a window cannot "
                                        "be declared after the fact")
    if end - start > MAX_WINDOW_S:
        raise MaintenanceError("end", f"a window lasts at most {MAX_WINDOW_S / 86400:g} days")
    return start, end


def merge(a: Coverage, b: Coverage) -> Coverage:
    """Coverage of two windows together (None, every region, wins)."""
    if a is None or b is None:
        return None
    return a | b


@dataclass(frozen=True, slots=True)
class CoverageMap:
    """What the active windows cover at one time, by probe and by service name."""

    probes: Mapping[str, Coverage]
    services: Mapping[str, Coverage]


class MaintenanceStore:
    """Config and API windows, the admin token that guards writes, and rejection counts.

    `add` and `delete` change the API windows only and tell every subscriber (the collector
    journals before it calls them, and re-applies coverage to the classifier when told).
    """

    def __init__(self, config_windows: Iterable[MaintenanceWindow] = (),
                 api_windows: Iterable[MaintenanceWindow] = (), *,
                 admin_token: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`admin_token` None: the write API is off. `clock` gives the API's now."""
        self._windows: dict[str, MaintenanceWindow] = {}
        for window in (*config_windows, *api_windows):
            self._windows.setdefault(window.id, window)
        self._admin_token = admin_token or None
        self.clock = clock
        self._subscribers: list[Callable[[], None]] = []
        self.rejections: dict[str, int] = dict.fromkeys(REJECTION_REASONS, 0)

    @property
    def admin_token(self) -> str | None:
        """The token POST and DELETE require; None: the write API is off."""
        return self._admin_token

    @property
    def write_enabled(self) -> bool:
        """True when an admin token is configured (`api.admin_token_file`)."""
        return self._admin_token is not None

    def windows(self) -> list[MaintenanceWindow]:
        """Every window, by start then id."""
        return sorted(self._windows.values(), key=lambda w: (w.start, w.id))

    def active(self, now: float) -> list[MaintenanceWindow]:
        """The windows open at `now`, by start then id."""
        return [w for w in self.windows() if w.active_at(now)]

    def get(self, window_id: str) -> MaintenanceWindow | None:
        """The window with this id, if any."""
        return self._windows.get(window_id)

    def count_open_api(self, now: float) -> int:
        """API windows not yet ended."""
        return sum(1 for w in self._windows.values() if w.source == "api" and w.end > now)

    def load(self, windows: Iterable[MaintenanceWindow]) -> None:
        """Take windows read back from the journal (no limits, no notice; ids kept unique)."""
        for window in windows:
            self._windows.setdefault(window.id, window)

    def add(self, window: MaintenanceWindow) -> None:
        """Add an API window (MaintenanceError on a duplicate id or too many windows)."""
        if window.id in self._windows:
            raise MaintenanceError("id", f"a window with id {window.id!r} exists")
        if window.source == "api" and self.count_open_api(self.clock()) >= MAX_API_WINDOWS:
            raise MaintenanceError(None, f"at most {MAX_API_WINDOWS} API windows may be "
                                         "planned or active at once")
        self._windows[window.id] = window
        self._notify()

    def check_deletable(self, window_id: str) -> MaintenanceWindow:
        """The API window `window_id` (UnknownWindowError, or ConfigWindowError)."""
        window = self._windows.get(window_id)
        if window is None:
            raise UnknownWindowError(window_id)
        if window.source == "config":
            raise ConfigWindowError(f"window {window_id!r} comes from the config file: "
                                    "remove it there (and reload the collector)")
        return window

    def delete(self, window_id: str) -> MaintenanceWindow:
        """Remove an API window and return it (UnknownWindowError, ConfigWindowError)."""
        window = self.check_deletable(window_id)
        del self._windows[window_id]
        self._notify()
        return window

    def prune(self, now: float) -> list[MaintenanceWindow]:
        """Forget API windows ended more than RETAIN_ENDED_S ago; return them."""
        gone = [w for w in self._windows.values()
                if w.source == "api" and w.end <= now - RETAIN_ENDED_S]
        for window in gone:
            del self._windows[window.id]
        return gone

    def covered_regions(self, probe: str, service: str | None, now: float) -> Coverage:
        """Where the windows open at `now` cover `probe`: None every region, empty nowhere."""
        found: Coverage = frozenset()
        for window in self._windows.values():
            if window.active_at(now) and window.applies_to(probe, service):
                found = merge(found, window.coverage)
                if found is None:
                    break
        return found

    def coverage(self, now: float) -> CoverageMap:
        """What the windows open at `now` cover, by probe and by service (for the classifier)."""
        probes: dict[str, Coverage] = {}
        services: dict[str, Coverage] = {}
        for window in self._windows.values():
            if not window.active_at(now):
                continue
            for target, names in ((probes, window.probes), (services, window.services)):
                for name in names:
                    target[name] = merge(target.get(name, frozenset()), window.coverage)
        return CoverageMap(probes, services)

    def next_change_after(self, now: float) -> float | None:
        """The next start or end of a window after `now` (None when there is none)."""
        times = [t for w in self._windows.values() for t in (w.start, w.end) if t > now]
        return min(times, default=None)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every add or delete."""
        self._subscribers.append(callback)

    def count_rejection(self, reason: str) -> None:
        """Count one refused API request (REJECTION_REASONS)."""
        self.rejections[reason] = self.rejections.get(reason, 0) + 1

    def _notify(self) -> None:
        for callback in self._subscribers:
            callback()
