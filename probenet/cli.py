"""The `probenet` command: `collector`, `agent`, `check`, `demo`, `reset-agent` and `uptime`.

Each subcommand imports its package lazily, so `probenet check` stays fast and an agent host
never imports the collector's dependencies it does not use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from probenet.configfile import ConfigError, load_tree, read_config_text
from probenet.logs import setup_logging
from probenet.uptime import add_parser as add_uptime_parser
from probenet.version import __version__


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="logfmt", choices=["logfmt", "json"])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="probenet",
        description="Multi-region probe network: is it down for everyone, only for some "
                    "regions, or is our own probe broken?")
    parser.add_argument("--version", action="version", version=f"probenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("collector", help="run the collector")
    p.add_argument("--config", required=True, type=Path, help="collector.yaml")
    _common(p)

    p = sub.add_parser("agent", help="run an agent")
    p.add_argument("--config", required=True, type=Path, help="agent.yaml")
    _common(p)

    p = sub.add_parser("check", help="validate agent or collector config files")
    p.add_argument("configs", nargs="+", type=Path, metavar="CONFIG")

    p = sub.add_parser("reset-agent", help="forget an agent's watermark (collector stopped)")
    p.add_argument("--config", required=True, type=Path, help="collector.yaml")
    p.add_argument("agent_id", metavar="AGENT_ID")

    p = sub.add_parser("demo", help="run a self-contained multi-region demo on loopback")
    p.add_argument("--duration", default=None,
                   help="stop after this long (e.g. 90s, 5m); default: until Ctrl-C")
    p.add_argument("--interval", default="2s", help="probe interval of the demo agents")
    p.add_argument("--no-ui", action="store_true",
                   help="plain log lines instead of the live table (for non-terminals)")
    p.add_argument("--port", type=int, default=9464, help="the collector's HTTP port")
    _common(p)

    add_uptime_parser(sub)
    return parser


def config_kind(data: Any) -> str:
    """Tell an agent config, a fleet file and a collector config apart by their top-level keys.

    An agent config has `agent` (required there); a fleet file has `probes` or `defaults`
    and nothing of an agent's (`agent`, `collectors`); anything else is a collector config.
    """
    if isinstance(data, dict) and "agent" in data:
        return "agent"
    if isinstance(data, dict) and ("probes" in data or "defaults" in data):
        return "agent" if "collectors" in data else "fleet"
    return "collector"


def check(paths: list[Path]) -> int:
    """Validate each file; print every error as `file:line:col: message`."""
    from probenet.agent.config import load_config as load_agent  # noqa: PLC0415 - lazy on purpose
    from probenet.agent.probes import unavailable_kinds  # noqa: PLC0415
    from probenet.collector.config import load_config as load_collector  # noqa: PLC0415

    failed = False
    for path in paths:
        summary: list[str] = []
        try:
            data, _ = load_tree(read_config_text(path), str(path), allow_empty=False)
            kind = config_kind(data)
            if kind == "agent":
                summary = shard_summary(load_agent(path, checks=(unavailable_kinds,)))
            elif kind == "fleet":
                from probenet.collector.fleet import load_fleet  # noqa: PLC0415 - lazy on purpose
                load_fleet(path)
            else:
                check_fleet(load_collector(path))
        except ConfigError as exc:
            failed = True
            for issue in exc.issues:
                print(issue, file=sys.stderr)
            continue
        except Exception as exc:  # the last line of defence: never a traceback
            # The loader turns every known bad input into a ConfigError; anything else is a
            # bug in it, still reported in the `file:line:col` form so CI logs stay parseable.
            failed = True
            print(f"{path}:1:1: internal error while checking ({type(exc).__name__}: {exc}); "
                  "please report it", file=sys.stderr)
            continue
        print(f"{path}: ok ({kind} config)")
        for line in summary:
            print(f"  {line}")
    return 1 if failed else 0


_SHOWN_PROBES = 20


def shard_summary(config: Any) -> list[str]:
    """For a sharded agent config: one line per shard, its collectors and local probes."""
    from probenet.sharding import shard_of  # noqa: PLC0415 - lazy on purpose

    shards = config.shard_count
    if shards is None:
        return []
    lines = [f"{shards} shards (hashmod of the probe name); local probes per shard:"]
    for shard in range(shards):
        collectors = ", ".join(c.address for c in config.collectors if c.shard == shard)
        names = [p.name for p in config.probes if shard_of(p.name, shards) == shard]
        shown = ", ".join(names[:_SHOWN_PROBES])
        more = f", and {len(names) - _SHOWN_PROBES} more" if len(names) > _SHOWN_PROBES else ""
        lines.append(f"shard {shard} ({collectors}): {len(names)} "
                     f"probe{'' if len(names) == 1 else 's'}{': ' if names else ''}{shown}{more}")
    return lines


def check_fleet(config: Any) -> None:
    """Validate a collector config's fleet file (ConfigError); print selector warnings."""
    from probenet.collector.fleet import load_fleet, selector_warnings  # noqa: PLC0415

    if config.fleet is None:
        return
    path = config.fleet.probes_file
    fleet = load_fleet(path)
    if config.agents is None:
        return  # no registry: any agent may connect, so no selector can be judged
    registered = [(a.id, a.region, a.labels) for a in config.agents]
    for issue in selector_warnings(fleet, read_config_text(path), registered):
        print(issue, file=sys.stderr)


def reset_agent(config_path: Path, agent_id: str) -> int:
    """Delete `agent_id`'s watermark from the journal, so its next epoch starts afresh.

    For an agent refused as `stale_epoch` (its clock stepped back, or someone streamed a
    newer epoch under its id). Offline: refused while a collector holds the journal.
    """
    from probenet.collector.config import load_config  # noqa: PLC0415 - lazy on purpose
    from probenet.collector.errors import JournalError  # noqa: PLC0415
    from probenet.collector.journal import Journal  # noqa: PLC0415

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    path = Path(config.journal.path)
    if not path.is_file():
        print(f"{path}: no journal here (journal.path): nothing to reset", file=sys.stderr)
        return 1
    try:
        with Journal(path, exclusive=True) as journal:
            previous = journal.reset_watermark(agent_id)
    except JournalError as exc:
        print(f"probenet reset-agent: {exc}", file=sys.stderr)
        return 1
    if previous is None:
        print(f"{agent_id}: no watermark in {path}; nothing to reset")
    else:
        epoch, seq = previous
        print(f"{agent_id}: watermark (epoch {epoch}, seq {seq}) removed from {path}; "
              "its next stream starts afresh")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `probenet` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "check":
        sys.exit(check(args.configs))
    if args.command == "reset-agent":
        sys.exit(reset_agent(args.config, args.agent_id))
    if args.command == "uptime":
        from probenet.uptime import run as run_uptime  # noqa: PLC0415 - beside its parser

        sys.exit(run_uptime(args))
    setup_logging(args.log_level, args.log_format)
    if args.command == "collector":
        from probenet.collector.main import run as run_collector  # noqa: PLC0415

        sys.exit(run_collector(args.config))
    if args.command == "agent":
        from probenet.agent.main import run as run_agent  # noqa: PLC0415

        sys.exit(run_agent(args.config))
    if args.command == "demo":
        from probenet.demo import run as run_demo  # noqa: PLC0415

        sys.exit(run_demo(args))
