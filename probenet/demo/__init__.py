"""`probenet demo`: a self-contained multi-region fleet on loopback with scheduled faults.

Built on `probenet.lab` (the fleet of child processes, the fault-injecting targets, the API
client). Modules: `schedule` (phases and the fault policy), `scenario` (the demo's fleet and
story), `table` (the live view), `report` (events and summary), `app` (the command itself).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from probenet.configfile import parse_duration
from probenet.lab.errors import LabError

from .errors import DemoError

if TYPE_CHECKING:
    import argparse

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Entry point of `probenet demo` (see `probenet demo --help` for the options)."""
    from .app import DemoOptions, run_demo  # noqa: PLC0415 - keeps --help fast

    try:
        interval_s = parse_duration(args.interval)
        duration_s = None if args.duration is None else parse_duration(args.duration)
        options = DemoOptions(
            interval_s=interval_s,
            duration_s=duration_s,
            ui=not args.no_ui and sys.stdout.isatty(),
            http_port=args.port,
            log_level=args.log_level,
        )
    except (ValueError, DemoError, LabError) as exc:
        sys.stderr.write(f"probenet demo: {exc}\n")
        return 2
    return run_demo(options)
