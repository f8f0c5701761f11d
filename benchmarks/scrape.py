"""Collector /metrics under load: scrape time and bytes, event-loop stalls, ingest kept.

    .venv/bin/python benchmarks/scrape.py [--quick] [--window 10] [--settings-pairs 10000]

For each size (default 10 agents x 1,000 probes = 10,000 pairs, then 100 x 1,000 =
100,000; 5 regions), a real collector (`CollectorService` in its own process, pinned to
one core, every series on) is filled with realistic HTTPS results (five timing phases,
HTTP and TLS facts; 1 % unconfirmed connect failures), every pair once, and scraped once
(`first scrape`: it decodes every pair's details). Then the same agents keep streaming
every probe once per 10 s: pairs / 10 results per second (10,000/s at 100,000 pairs), from
a separate process pinned to the other core, with the real Hello/ResultBatch/Ack protocol,
one batch per agent per second, 4 batches in flight per stream. Once they caught up with
what the first scrape held back, four windows:

1. quiet: the fixed rate, no scrapes (`--window` seconds);
2. scraping: the fixed rate, back-to-back `GET /metrics`, in turn with
   `Accept-Encoding: gzip` and with OpenMetrics (`Accept: application/openmetrics-text`),
   for `--window` seconds and at least one of each (so at least one scrape long);
3. flat out: the agents send as fast as their windows allow (the collector's capacity),
   no scrapes (half a window);
4. flat out + scraping: the same with back-to-back plain scrapes (half a window, at least
   one scrape).

Through them, a poller process asks `/healthz` every 10 ms (the longest answer is the
longest stall seen from outside); inside the collector a task sleeps 10 ms at a time and
notes its overshoot (the longest stall seen from inside), and the collector's own
`probenet_event_loop_lag_seconds` histogram is read when it has one (the highest bucket
that gained observations). Per window: results applied per second (the collector's
`probenet_ingest_results_total{outcome="applied"}`), the Ack latency of every batch (from
the load process), the collector's CPU (/proc) and how busy the load core was. The ingest
ratio is window 2 over window 1 (at a fixed rate below capacity it shows whether ingest
keeps up, not what scrapes cost it); the capacity ratio is window 4 over window 3.

Then, with the load stopped, the page's own render (`service.page.render()`) and
`prometheus_client.generate_latest` over the same series
(`service.page.reference_registry()`; before the page existed, /metrics was generate_latest
over the service's registry itself) are timed side by side in the collector process, best
of up to three each within `--render-budget` seconds.

Last, the series on the page per `metrics:` setting (`per_agent: all | success | none`,
`per_kind_details`), a fresh collector per setting filled with `--settings-pairs` pairs;
a setting the config refuses is reported as such (before the section existed, the
no-details row falls back to `CollectorService(kind_details=False)`).

Targets (largest size, every series on): longest stall <= 50 ms; ingest while scraping
>= 80 % of the quiet window's (checked at the fixed rate and flat out); page render <= 1/3
of generate_latest's. Prints a table, then one JSON object with every figure as the last
stdout line. About 3 minutes with the defaults on a quiet 2-core machine (7 before the
chunked page: each scrape of 100,000 pairs took 45 s and more), about 35 s with `--quick`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from collector_proc import Collector, highest_new_bucket
from http_watch import POLL_PERIOD_S, HttpWatch, longest_answer
from procs import DEADLINE_S, busy_share, cpus, pin, rss_bytes
from wire import Fleet, FleetShape, acks_between

REGIONS = 5
SCRAPE_KINDS = ("plain", "gzip", "openmetrics")
TARGETS = {"longest_stall_s": 0.05, "ingest_ratio": 0.8, "render_ratio": 1 / 3}

# (label, `metrics:` section, fallback before the section existed: kind_details or None)
SETTINGS: tuple[tuple[str, str, bool | None], ...] = (
    ("all + details", "metrics: {per_agent: all, per_kind_details: true}\n", True),
    ("all, no details", "metrics: {per_agent: all, per_kind_details: false}\n", False),
    ("success", "metrics: {per_agent: success, per_kind_details: false}\n", None),
    ("none", "metrics: {per_agent: none, per_kind_details: false}\n", None),
)


def _scrape_summary(scrapes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per kind: count, fastest/median/slowest seconds, bytes on the wire and of the page."""
    summary = {}
    for kind in SCRAPE_KINDS:
        mine = [s for s in scrapes if s["kind"] == kind]
        if not mine:
            continue
        seconds = [s["seconds"] for s in mine]
        summary[kind] = {
            "count": len(mine), "min_s": min(seconds), "median_s": statistics.median(seconds),
            "max_s": max(seconds), "wire_bytes": mine[-1]["wire_bytes"],
            "page_bytes": mine[-1]["page_bytes"], "series": mine[-1]["series"],
            "encoding": mine[-1]["encoding"] or "identity",
            "content_type": mine[-1]["content_type"]}
    return summary


def _window(before: dict[str, Any], after: dict[str, Any], load: dict[str, Any],
            polls: dict[str, Any], load_cpu: int) -> dict[str, Any]:
    """Ingest, stalls, Ack latency and CPU between two stats reads of the collector."""
    start, end = before["at"], after["at"]
    acks = acks_between(load, start, end)
    outside = longest_answer(polls, start, end)
    return {
        "seconds": end - start,
        "applied_per_s": (after["applied"] - before["applied"]) / (end - start),
        "collector_cpu_share": (after["cpu_s"] - before["cpu_s"]) / (end - start),
        "load_core_busy": busy_share(before["cores"][load_cpu], after["cores"][load_cpu]),
        "healthz_max_s": outside["max_s"], "healthz_p99_s": outside["p99_s"],
        "healthz_polls": outside["polls"],
        "loop_lag_max_s": after["longest_lag_s"],
        "lag_histogram_highest": highest_new_bucket(before["lag_buckets"],
                                                    after["lag_buckets"]),
        "ack_p50_s": acks["ack_p50_s"], "ack_p99_s": acks["ack_p99_s"],
        "ack_max_s": acks["ack_max_s"]}


def settle(collector: Collector, offered_per_s: float, timeout_s: float = 60.0) -> float:
    """Wait until the agents caught up after a stall: 2 s with applied within 15 % of offered.

    After a long scrape the agents send what fell behind as fast as their windows allow;
    a window measured then would count that backlog. Returns the seconds waited.
    """
    started = time.monotonic()
    previous = collector.stats()
    while time.monotonic() - started < timeout_s:
        time.sleep(2.0)
        current = collector.stats()
        rate = (current["applied"] - previous["applied"]) / (current["at"] - previous["at"])
        if abs(rate - offered_per_s) <= 0.15 * offered_per_s:
            break
        previous = current
    return time.monotonic() - started


def size_run(ctx: Any, cores: tuple[int, int], folder: str, shape: FleetShape,
             args: argparse.Namespace) -> dict[str, Any]:
    """One collector filled with `shape`'s pairs: first scrape, the four windows, renders."""
    collector = Collector(ctx, cores[0], folder)
    collector.start()
    fleet = Fleet(ctx, cores[1], collector.grpc, shape, processes=1, fill=True)
    watch: HttpWatch | None = None
    try:
        fill_started = time.monotonic()
        ready = fleet.start()
        if ready["errors"]:
            raise RuntimeError(f"benchmark: agents failed: {ready['errors'][:3]}")
        collector.wait_pairs(shape.pairs, DEADLINE_S * 4)
        fill_s = time.monotonic() - fill_started
        rss_filled = rss_bytes(collector.proc.pid)
        watch = HttpWatch(ctx, cores[1], collector.http, max_seconds=900)
        first = watch.scrapes(("plain",), 0.0, max_count=1)[0]
        settle_s = settle(collector, shape.results_per_s)
        quiet_start = collector.stats()
        time.sleep(args.window)
        quiet_end = collector.stats()
        scrapes = watch.scrapes(("gzip", "openmetrics"), args.window)
        scraping_end = collector.stats()
        # Capacity: the agents send as fast as their windows allow, then the same with
        # back-to-back scrapes.
        fleet.mode("flat")
        time.sleep(1.0)
        flat_start = collector.stats()
        time.sleep(args.window / 2)
        flat_end = collector.stats()
        flat_scrapes = watch.scrapes(("plain",), args.window / 2)
        flat_scraping_end = collector.stats()
        rss_scraped = rss_bytes(collector.proc.pid)
        polls = watch.stop()
        watch = None
        load = fleet.stop()
        renders = collector.render(args.render_budget)
    finally:
        if watch is not None:
            watch.stop()
        fleet.stop()
        collector.stop()
    quiet = _window(quiet_start, quiet_end, load, polls, cores[1])
    scraping = _window(quiet_end, scraping_end, load, polls, cores[1])
    scraping["scrapes"] = len(scrapes)
    scraping["scraping_share"] = sum(s["seconds"] for s in scrapes) / scraping["seconds"]
    flat = _window(flat_start, flat_end, load, polls, cores[1])
    flat_scraping = _window(flat_end, flat_scraping_end, load, polls, cores[1])
    flat_scraping["scrapes"] = len(flat_scrapes)
    best = renders["best_s"]
    page_s = best.get("page", best["generate_latest"])
    return {
        "agents": shape.agents, "probes": shape.probes, "pairs": shape.pairs,
        "offered_results_per_s": shape.results_per_s, "fill_s": fill_s,
        "rss_filled_bytes": rss_filled, "rss_after_scrapes_bytes": rss_scraped,
        "first_scrape": {k: first[k] for k in ("seconds", "wire_bytes", "series")},
        "settle_after_first_scrape_s": settle_s,
        "scrapes": _scrape_summary(scrapes + flat_scrapes), "quiet": quiet,
        "scraping": scraping, "flat_out": flat, "flat_out_scraping": flat_scraping,
        "ingest_ratio": (scraping["applied_per_s"] / quiet["applied_per_s"]
                         if quiet["applied_per_s"] else 0.0),
        "capacity_ratio": (flat_scraping["applied_per_s"] / flat["applied_per_s"]
                           if flat["applied_per_s"] else 0.0),
        "longest_stall_s": max(scraping["healthz_max_s"], scraping["loop_lag_max_s"]),
        "render": {"page_api": renders["page_api"], "rounds": renders["rounds"],
                   "page_s": page_s, "generate_latest_s": best["generate_latest"],
                   "ratio": page_s / best["generate_latest"],
                   "series": renders["series"], "bytes": renders["bytes"]},
        "load_errors": load["errors"], "healthz_failure": polls["failure"]}


def settings_run(ctx: Any, cores: tuple[int, int], folder: Path, shape: FleetShape
                 ) -> list[dict[str, Any]]:
    """Series on the page per `metrics:` setting, a fresh collector filled for each."""
    rows = []
    for index, (label, section, fallback) in enumerate(SETTINGS):
        place = folder / f"setting-{index}"
        place.mkdir()
        collector = Collector(ctx, cores[0], str(place), extra_config=section)
        note = ""
        if not collector.start():
            if fallback is None:
                rows.append({"setting": label, "skipped": collector.refused})
                continue
            note = ("no `metrics:` section yet: "
                    + ("the default page" if fallback else "kind_details=False"))
            collector = Collector(ctx, cores[0], str(place), kind_details=fallback)
            collector.start()
        fleet = Fleet(ctx, cores[1], collector.grpc, shape, processes=1, fill=True)
        try:
            fleet.start()
            collector.wait_pairs(shape.pairs, DEADLINE_S * 4)
            watch = HttpWatch(ctx, cores[1], collector.http, max_seconds=300)
            try:
                first = watch.scrapes(("plain",), 0.0, max_count=1)[0]
                second = watch.scrapes(("plain",), 0.0, max_count=1)[0]
            finally:
                watch.stop()
            fleet.stop()
        finally:
            fleet.stop()
            collector.stop()
        rows.append({"setting": label, "note": note, "series": second["series"],
                     "page_bytes": second["page_bytes"], "first_s": first["seconds"],
                     "second_s": second["seconds"]})
    return rows


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def print_tables(figures: dict[str, Any]) -> None:
    """The human-readable part (the JSON line follows)."""
    config = figures["config"]
    print(f"scrape: collector on cpu {config['collector_cpu']}, load, poller and scraper on "
          f"cpu {config['load_cpu']}; windows of {config['window_s']:g} s; offered load = "
          f"pairs / 10 s")
    for run in figures["sizes"]:
        quiet, scraping, render = run["quiet"], run["scraping"], run["render"]
        print(f"\n{run['pairs']:,} pairs ({run['agents']} agents x {run['probes']:,} probes, "
              f"{run['offered_results_per_s']:,.0f} results/s offered); filled in "
              f"{run['fill_s']:.1f} s; RSS {run['rss_filled_bytes'] / 2**20:,.0f} MiB, after "
              f"scrapes {run['rss_after_scrapes_bytes'] / 2**20:,.0f} MiB; first scrape "
              f"{_ms(run['first_scrape']['seconds'])}")
        print(f"  {'scrape':12} {'n':>3} {'min':>9} {'median':>9} {'max':>9} "
              f"{'wire bytes':>13} {'page bytes':>13} {'series':>10}  encoding")
        for kind, s in run["scrapes"].items():
            print(f"  {kind:12} {s['count']:>3} {_ms(s['min_s']):>9} {_ms(s['median_s']):>9} "
                  f"{_ms(s['max_s']):>9} {s['wire_bytes']:>13,} {s['page_bytes']:>13,} "
                  f"{s['series']:>10,}  {s['encoding']}")
        print(f"  {'window':10} {'applied/s':>10} {'healthz max':>12} {'loop lag max':>13} "
              f"{'lag histogram':>14} {'ack p50':>9} {'ack p99':>9} {'ack max':>9} "
              f"{'collector cpu':>13} {'load core':>9}")
        for name, w in (("quiet", quiet), ("scraping", scraping),
                        ("flat out", run["flat_out"]),
                        ("+ scraping", run["flat_out_scraping"])):
            print(f"  {name:10} {w['applied_per_s']:>10,.0f} {_ms(w['healthz_max_s']):>12} "
                  f"{_ms(w['loop_lag_max_s']):>13} {w['lag_histogram_highest']:>14} "
                  f"{_ms(w['ack_p50_s']):>9} {_ms(w['ack_p99_s']):>9} "
                  f"{_ms(w['ack_max_s']):>9} {w['collector_cpu_share']:>13.0%} "
                  f"{w['load_core_busy']:>9.0%}")
        print(f"  scraping: {scraping['scrapes']} scrapes, busy {scraping['scraping_share']:.0%}"
              f" of the window; ingest while scraping / quiet: {run['ingest_ratio']:.2f} at the "
              f"fixed rate, {run['capacity_ratio']:.2f} flat out (capacity)")
        errors = [e for e in (*run["load_errors"], run["healthz_failure"]) if e]
        for error in errors[:5]:
            print(f"  error: {error}")
        page = (_ms(render["page_s"]) if render["page_api"]
                else "n/a (no service.page: /metrics is generate_latest itself)")
        print(f"  render in-process (best of {render['rounds']}): page {page}, generate_latest "
              f"{_ms(render['generate_latest_s'])}, ratio {render['ratio']:.2f}; series "
              f"{render['series']}")
    print(f"\nseries per `metrics:` setting ({figures['settings_pairs']:,} pairs):")
    for row in figures["settings"]:
        if "skipped" in row:
            print(f"  {row['setting']:16} skipped: the config refuses it ({row['skipped']})")
            continue
        note = f"  ({row['note']})" if row["note"] else ""
        print(f"  {row['setting']:16} {row['series']:>10,} series {row['page_bytes']:>13,} "
              f"bytes, scrape {_ms(row['first_s'])} then {_ms(row['second_s'])}{note}")
    checks = figures["targets_met"]
    print("targets at the largest size: " + "; ".join(
        f"{name} {'met' if ok else 'MISSED'} ({value})" for name, (ok, value) in checks.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: 1,000 and 5,000 pairs, 2 s windows (under a minute)")
    parser.add_argument("--window", type=float, default=10.0,
                        help="seconds of the quiet and of the scraping window")
    parser.add_argument("--settings-pairs", type=int, default=10_000)
    parser.add_argument("--render-budget", type=float, default=30.0,
                        help="seconds for the side-by-side render timing (one round at least)")
    args = parser.parse_args()
    sizes = [(10, 1000), (100, 1000)]
    if args.quick:
        sizes = [(2, 500), (5, 1000)]
        args.window, args.settings_pairs, args.render_budget = 2.0, 1000, 2.0
    cores = cpus()
    pin(cores[1])  # this process only waits; keep it off the collector's core
    ctx = multiprocessing.get_context("spawn")
    started = time.monotonic()
    runs = []
    with tempfile.TemporaryDirectory(prefix="probenet-scrape-") as tmp:
        for index, (agents, probes) in enumerate(sizes):
            place = Path(tmp, f"size-{index}")
            place.mkdir()
            shape = FleetShape(agents=agents, probes=probes, regions=min(REGIONS, agents))
            runs.append(size_run(ctx, cores, str(place), shape, args))
        per_agent = min(1000, args.settings_pairs)
        settings_shape = FleetShape(agents=max(1, args.settings_pairs // per_agent),
                                    probes=per_agent, regions=REGIONS)
        settings = settings_run(ctx, cores, Path(tmp), settings_shape)
    largest = runs[-1]
    figures: dict[str, Any] = {
        "config": {"sizes": sizes, "regions": REGIONS, "window_s": args.window,
                   "poll_period_s": POLL_PERIOD_S, "collector_cpu": cores[0],
                   "load_cpu": cores[1], "quick": args.quick},
        "sizes": runs, "settings_pairs": settings_shape.pairs, "settings": settings,
        "targets": TARGETS,
        "targets_met": {
            "longest_stall": (largest["longest_stall_s"] <= TARGETS["longest_stall_s"],
                              _ms(largest["longest_stall_s"])),
            "ingest_ratio": (largest["ingest_ratio"] >= TARGETS["ingest_ratio"],
                             f"{largest['ingest_ratio']:.2f}"),
            "capacity_ratio": (largest["capacity_ratio"] >= TARGETS["ingest_ratio"],
                               f"{largest['capacity_ratio']:.2f}"),
            "render_ratio": (largest["render"]["page_api"]
                             and largest["render"]["ratio"] <= TARGETS["render_ratio"],
                             f"{largest['render']['ratio']:.2f}"),
        },
        "total_wall_s": time.monotonic() - started,
    }
    print_tables(figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
