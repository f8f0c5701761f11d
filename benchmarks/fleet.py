"""A collector holding a fleet: 1,000 agent streams, 100 probes each at 10 s, on one core.

    .venv/bin/python benchmarks/fleet.py [--quick] [--seconds 60] [--agents 1000]
        [--probes 100] [--regions 50] [--procs 4]

The collector (`CollectorService` in its own process, every series on) is pinned to one
core. On the other core, `--procs` load processes run `--agents` agents (default 1,000:
50 regions x 20 agents), each on its own gRPC channel and TCP connection with the real
protocol (Hello, then ResultBatch after ResultBatch, at most 4 batches waiting for their
Ack): every agent sends each of its `--probes` probes (realistic HTTPS results) once per
10 s, what is due each second as one small batch, its agents spread over the second;
10,000 results/s with the defaults. All agents connect at once; once the collector holds
every (probe, agent) pair (one interval and a bit), the measured window of `--seconds`
begins. Through it, `/metrics` is scraped every 15 s as Prometheus would (its Accept
header, gzip), and `/healthz` polled every 10 ms.

Figures: streams connected (the load's count and the collector's `probenet_agent_streams`),
results applied per second (the collector's counter) against the offered rate, the
collector's CPU share of its core (utime + stime from /proc over the window), its RSS at
the window's start and end and sampled every 5 s (bounded memory shows flat), the Ack
latency of every batch acknowledged in the window (send to Ack, measured by the load
processes: p50, p99, max), the scrapes (time, bytes, series), the longest stall seen from
outside (/healthz) and inside (a 10 ms sleep's overshoot in the collector process), and how
busy the load core was (a saturated load core would make the figures the load's, not the
collector's). When the collector cannot hold the fleet, the figures say what it holds.

Prints a table, then one JSON object with every figure as the last stdout line. About two
minutes with the defaults; `--quick` (100 agents x 100 probes, 10 s window) about 40 s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from typing import Any

from collector_proc import Collector, highest_new_bucket
from http_watch import HttpWatch, longest_answer
from procs import DEADLINE_S, busy_share, cpus, pin
from wire import Fleet, FleetShape, ack_latency_split, acks_between

SCRAPE_EVERY_S = 15.0
RSS_EVERY_S = 5.0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def measure(collector: Collector, watch: HttpWatch, seconds: float
            ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], list[float]]:
    """The window: stats at both ends, scrapes every 15 s, RSS (and the lag watch) every 5 s.

    The end's `longest_lag_s` becomes the longest over the whole window (each stats read
    restarts the watch).
    """
    start = collector.stats()
    rss = [float(start["rss_bytes"])]
    longest_lag_s = 0.0
    watch.begin_scrapes(("prometheus",), seconds, period_s=SCRAPE_EVERY_S,
                        max_count=int(seconds // SCRAPE_EVERY_S) + 2)
    deadline = time.monotonic() + seconds
    scrapes = None
    while scrapes is None and (left := deadline - time.monotonic()) > 0:
        scrapes = watch.end_scrapes(poll_s=min(RSS_EVERY_S, left))
        sample = collector.stats()
        rss.append(float(sample["rss_bytes"]))
        longest_lag_s = max(longest_lag_s, sample["longest_lag_s"])
    if scrapes is None:  # the last scrape is still running: it belongs to the window
        scrapes = watch.end_scrapes()
        assert scrapes is not None
    end = collector.stats()
    rss.append(float(end["rss_bytes"]))
    end["longest_lag_s"] = max(longest_lag_s, end["longest_lag_s"])
    return start, end, scrapes, rss


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the collector and the fleet, ramp up, measure the window, stop everything."""
    cores = cpus()
    pin(cores[1])  # this process only waits; keep it off the collector's core
    ctx = multiprocessing.get_context("spawn")
    shape = FleetShape(agents=args.agents, probes=args.probes,
                       regions=min(args.regions, args.agents))
    with tempfile.TemporaryDirectory(prefix="probenet-fleet-") as folder:
        collector = Collector(ctx, cores[0], folder)
        collector.start()
        fleet = Fleet(ctx, cores[1], collector.grpc, shape, processes=args.procs)
        watch: HttpWatch | None = None
        try:
            began = time.monotonic()
            ready = fleet.start()
            connect_s = time.monotonic() - began
            # Every pair exists after one interval; give it three before calling it stuck.
            ramp = collector.wait_pairs(shape.pairs, shape.interval_s * 3 + DEADLINE_S)
            ramp_s = time.monotonic() - began
            time.sleep(2.0)  # past the first results of the last pairs (their slow path)
            watch = HttpWatch(ctx, cores[1], collector.http, max_seconds=args.seconds + 600)
            start, end, scrapes, rss = measure(collector, watch, args.seconds)
            polls = watch.stop()
            watch = None
            load = fleet.stop()
        finally:
            if watch is not None:
                watch.stop()
            fleet.stop()
            collector.stop()
    window_s = end["at"] - start["at"]
    acks = acks_between(load, start["at"], end["at"])
    outside = longest_answer(polls, start["at"], end["at"])
    scrape_s = [s["seconds"] for s in scrapes]
    split = ack_latency_split(load, start["at"], end["at"],
                              [(s["start"], s["end"]) for s in scrapes])
    return {
        "config": {"agents": shape.agents, "probes_per_agent": shape.probes,
                   "regions": shape.regions, "interval_s": shape.interval_s,
                   "batch_every_s": shape.tick_s, "window_batches": shape.window,
                   "load_processes": args.procs, "seconds": args.seconds,
                   "collector_cpu": cores[0], "load_cpu": cores[1], "quick": args.quick},
        "pairs": shape.pairs, "pairs_held": end["pairs"],
        "streams_connected_load": ready["connected"],
        "streams_open_collector": end["streams"], "connect_errors": ready["errors"],
        "connect_s": connect_s, "ramp_s": ramp_s, "pairs_at_ramp": ramp["pairs"],
        "window_s": window_s,
        "offered_results_per_s": shape.results_per_s,
        "applied_results_per_s": (end["applied"] - start["applied"]) / window_s,
        "acked_results_per_s": acks["results_per_s"],
        "rejected": end["rejected"], "duplicates": end["duplicate"],
        "collector_cpu_share": (end["cpu_s"] - start["cpu_s"]) / window_s,
        "load_core_busy": busy_share(start["cores"][cores[1]], end["cores"][cores[1]]),
        "rss_start_bytes": start["rss_bytes"], "rss_end_bytes": end["rss_bytes"],
        "rss_samples_bytes": rss,
        "ack_p50_s": acks["ack_p50_s"], "ack_p99_s": acks["ack_p99_s"],
        "ack_max_s": acks["ack_max_s"], "acked_batches": acks["batches"],
        "ack_sent_during_scrapes": split["during"], "ack_sent_outside_scrapes": split["outside"],
        "scrapes": len(scrapes), "scrape_min_s": min(scrape_s),
        "scrape_median_s": statistics.median(scrape_s), "scrape_max_s": max(scrape_s),
        "scrape_wire_bytes": scrapes[-1]["wire_bytes"],
        "scrape_page_bytes": scrapes[-1]["page_bytes"], "scrape_series": scrapes[-1]["series"],
        "scrape_encoding": scrapes[-1]["encoding"] or "identity",
        "scrape_content_type": scrapes[-1]["content_type"],
        "healthz_max_s": outside["max_s"], "healthz_p99_s": outside["p99_s"],
        "loop_lag_max_s": end["longest_lag_s"],
        "lag_histogram_highest": highest_new_bucket(start["lag_buckets"], end["lag_buckets"]),
        "load_errors": load["errors"], "healthz_failure": polls["failure"],
    }


def print_table(f: dict[str, Any]) -> None:
    """The human-readable part (the JSON line follows)."""
    c = f["config"]
    mib = 2**20
    rows = [
        ("streams connected (load / collector)",
         f"{f['streams_connected_load']:,} / {f['streams_open_collector']:,.0f}"),
        ("pairs held / expected", f"{f['pairs_held']:,} / {f['pairs']:,}"),
        ("connect all, ramp to every pair", f"{f['connect_s']:.1f} s, {f['ramp_s']:.1f} s"),
        ("results/s applied / offered",
         f"{f['applied_results_per_s']:,.0f} / {f['offered_results_per_s']:,.0f}"),
        ("collector CPU (share of one core)", f"{f['collector_cpu_share']:.0%}"),
        ("collector RSS start / end / max",
         (f"{f['rss_start_bytes'] / mib:,.0f} / {f['rss_end_bytes'] / mib:,.0f} / "
         f"{max(f['rss_samples_bytes']) / mib:,.0f} MiB")),
        ("ack latency p50 / p99 / max",
         f"{_ms(f['ack_p50_s'])} / {_ms(f['ack_p99_s'])} / {_ms(f['ack_max_s'])}"),
        ("  batches sent during a scrape: p99 / max",
         (f"{_ms(f['ack_sent_during_scrapes']['ack_p99_s'])} / "
          f"{_ms(f['ack_sent_during_scrapes']['ack_max_s'])} "
          f"({f['ack_sent_during_scrapes']['batches']:,.0f} batches)")),
        ("  batches sent between scrapes: p99 / max",
         (f"{_ms(f['ack_sent_outside_scrapes']['ack_p99_s'])} / "
          f"{_ms(f['ack_sent_outside_scrapes']['ack_max_s'])} "
          f"({f['ack_sent_outside_scrapes']['batches']:,.0f} batches)")),
        (f"scrapes every {SCRAPE_EVERY_S:g} s: n, min / median / max",
         (f"{f['scrapes']}, {_ms(f['scrape_min_s'])} / {_ms(f['scrape_median_s'])} / "
         f"{_ms(f['scrape_max_s'])}")),
        ("scrape bytes on the wire / page, series",
         (f"{f['scrape_wire_bytes']:,} / {f['scrape_page_bytes']:,} "
         f"({f['scrape_encoding']}), {f['scrape_series']:,}")),
        ("longest stall: /healthz, loop watch",
         f"{_ms(f['healthz_max_s'])}, {_ms(f['loop_lag_max_s'])}"),
        ("loop-lag histogram, highest bucket hit", f["lag_histogram_highest"]),
        ("load core busy", f"{f['load_core_busy']:.0%}"),
        ("rejected results, duplicates", f"{f['rejected']:,.0f}, {f['duplicates']:,.0f}"),
    ]
    print(f"fleet: {c['agents']:,} agents ({c['regions']} regions) x {c['probes_per_agent']} "
          f"probes every {c['interval_s']:g} s, a batch per agent every {c['batch_every_s']:g} s;"
          f" collector on cpu {c['collector_cpu']}, {c['load_processes']} load processes on "
          f"cpu {c['load_cpu']}; window {f['window_s']:.0f} s")
    for name, value in rows:
        print(f"  {name:42} {value}")
    errors = [e for e in (*f["connect_errors"], *f["load_errors"], f["healthz_failure"]) if e]
    for error in errors[:5]:
        print(f"  error: {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: 100 agents x 100 probes, 10 s window")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=100, help="probes per agent")
    parser.add_argument("--regions", type=int, default=50)
    parser.add_argument("--procs", type=int, default=4, help="load processes")
    args = parser.parse_args()
    if args.quick:
        args.agents, args.probes, args.seconds, args.procs = 100, 100, 10.0, 2
    started = time.monotonic()
    figures = run(args)
    figures["total_wall_s"] = time.monotonic() - started
    print_table(figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
