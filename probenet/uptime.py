"""`probenet uptime`: a probe's or a service's uptime report as a table for the terminal.

From a running collector (`--url`, GET /api/v1/uptime), or straight from the journal file
(`--journal`) when the collector is down. Exit status 1 with one clear line on stderr when
the collector cannot be reached, answers an error, or the journal cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:9464"
DEFAULT_DAYS = 30
MAX_DAYS = 400
TIMEOUT_S = 30.0
# An error body is quoted up to this many characters.
_BODY_CHARS = 200


class UptimeCommandError(Exception):
    """What `probenet uptime` reports on stderr before exiting with status 1."""


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_DAYS}, not {text!r}")
    return days


def add_parser(sub: Any) -> None:
    """Declare `probenet uptime` on the subcommands of the `probenet` parser."""
    p = sub.add_parser("uptime", help="print a probe's or a service's uptime report")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--probe", help="the probe's name")
    what.add_argument("--service", help="the service's name (its probes together)")
    p.add_argument("--days", type=_days, default=DEFAULT_DAYS,
                   help=f"UTC days up to now, today included (1 to {MAX_DAYS}; "
                        f"default {DEFAULT_DAYS})")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--url", default=DEFAULT_URL,
                        help=f"the collector's HTTP address (default {DEFAULT_URL})")
    source.add_argument("--journal", type=Path,
                        help="read this journal file instead (when the collector is down)")


def fetch(url: str, *, probe: str | None, service: str | None, days: int,
          timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """GET /api/v1/uptime from the collector at `url` (UptimeCommandError on any failure)."""
    query = urllib.parse.urlencode(
        {"probe": probe} if probe is not None else {"service": service or ""})
    target = f"{url.rstrip('/')}/api/v1/uptime?{query}&days={days}"
    if urllib.parse.urlsplit(target).scheme not in {"http", "https"}:
        raise UptimeCommandError(f"--url must be an http:// or https:// address, not {url!r}")
    try:
        with urllib.request.urlopen(target, timeout=timeout_s) as response:  # noqa: S310 - scheme checked
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise UptimeCommandError(_http_error(url, exc)) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UptimeCommandError(f"cannot reach the collector at {url}: {reason}") from exc
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise UptimeCommandError(f"{url} answered something that is not JSON: {exc}") from exc
    if not isinstance(data, dict) or "seconds" not in data:
        raise UptimeCommandError(f"{url} answered no uptime report (is it a probenet "
                                 "collector?)")
    return data


def _http_error(url: str, exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read().decode("utf-8", "replace")
    except OSError:
        text = ""
    try:
        message = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        message = text[:_BODY_CHARS].strip() or exc.reason
    return f"the collector at {url} answered {exc.code}: {message}"


def read_journal(path: Path, *, probe: str | None, service: str | None, days: int,
                 now: float | None = None) -> dict[str, Any]:
    """The same report computed from the journal file at `path` (no collector needed)."""
    from probenet.collector.errors import JournalError  # noqa: PLC0415 - lazy on purpose
    from probenet.collector.journal import Journal  # noqa: PLC0415
    from probenet.collector.uptime_api import (  # noqa: PLC0415
        UnknownSubjectError,
        read_uptime_report,
    )

    if not path.is_file():
        raise UptimeCommandError(f"{path}: no journal here")
    try:
        with Journal(path) as journal:
            report = read_uptime_report(journal, probe=probe, service=service, days=days,
                                        now=time.time() if now is None else now)
    except UnknownSubjectError as exc:
        raise UptimeCommandError(f"{path}: {exc}") from exc
    except JournalError as exc:
        raise UptimeCommandError(str(exc)) from exc
    return report.to_json()


def _duration(seconds: float) -> str:
    """`3d 04h05m`, `2h03m04s`, `5m07s`, `12.3s`."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.4f} %"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                         strict=True)]
        print("  ".join(cells).rstrip(), file=out)


_STATE_COLUMNS = (("up", "up"), ("regional", "regional_outage"), ("global", "global_outage"),
                  ("maintenance", "maintenance"), ("unknown", "unknown"))


def render(report: dict[str, Any], out: TextIO) -> None:
    """Print `report` (the /api/v1/uptime JSON) as tables: overall, per region, daily."""
    if report.get("service") is not None:
        title = f"service {report['service']} (probes: {', '.join(report['probes'])})"
    else:
        title = f"probe {report['probe']}"
    print(f"{title}, last {report['days']} days: {report['from']} to {report['to']}",
          file=out)
    print(f"availability {_percent(report['availability'])}  (strict "
          f"{_percent(report.get('availability_strict'))}, global outages only "
          f"{_percent(report.get('availability_global'))})", file=out)
    seconds = report["seconds"]
    total = seconds["total"] or 1.0
    rows = [["", "time", "share"]]
    rows += [[label, _duration(seconds[key]), f"{seconds[key] / total * 100:.3f} %"]
             for label, key in _STATE_COLUMNS]
    rows.append(["total", _duration(seconds["total"]), ""])
    print(file=out)
    _table(rows, out)
    if report["regions"]:
        print(file=out)
        rows = [["region", "availability", "up", "down", "maintenance", "unknown"]]
        for name, region in report["regions"].items():
            s = region["seconds"]
            rows.append([name, _percent(region["availability"]), _duration(s["up"]),
                         _duration(s["down"]), _duration(s["maintenance"]),
                         _duration(s["unknown"])])
        _table(rows, out)
    print(file=out)
    rows = [["date", "availability", *(label for label, _ in _STATE_COLUMNS)]]
    for day in report["daily"]:
        s = day["seconds"]
        rows.append([day["date"], _percent(day["availability"]),
                     *(_duration(s[key]) for _, key in _STATE_COLUMNS)])
    _table(rows, out)


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """`probenet uptime` with parsed `args`: print the report; 0, or 1 on any failure."""
    stream = out if out is not None else sys.stdout
    try:
        if args.journal is not None:
            report = read_journal(args.journal, probe=args.probe, service=args.service,
                                  days=args.days)
        else:
            report = fetch(args.url, probe=args.probe, service=args.service, days=args.days)
        render(report, stream)
    except UptimeCommandError as exc:
        sys.stderr.write(f"probenet uptime: {exc}\n")
        return 1
    except (KeyError, TypeError, ValueError) as exc:
        sys.stderr.write(f"probenet uptime: the report is not in the expected shape: {exc!r}\n")
        return 1
    return 0
