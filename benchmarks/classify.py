"""Benchmark of the classifier's hot path: Classifier.apply on real ProbeResult messages.

    .venv/bin/python benchmarks/classify.py [--agents 100] [--probes 1000] [--results 1000000]

Builds a fleet of agents (10 regions) x probes = pairs, warms every pair up (one success
each), then times `apply` on batches of 100 real `probenet.v1.ProbeResult` messages per
agent in steady state (all successes: the fast path), then the same with 1% unconfirmed
failures (the noise every fleet has), then 5% of probes down everywhere (its first pass, the
onset, runs the slow path: region votes and outage records), and measures bytes per (agent,
probe) pair with tracemalloc. Prints a table, then as the last line one JSON object with
every figure. Timings are wall-clock on a shared machine: read them as an order of magnitude.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
import tracemalloc

from probenet.collector.classify import Classifier
from probenet.collector.model import ClassificationParams
from probenet.v1 import probenet_pb2 as pb

BATCH = 100
REGIONS = 10
START = 1_800_000_000.0


def build_fleet(agents: int, probes: int) -> tuple[Classifier, list[str], list[str]]:
    clf = Classifier(ClassificationParams())
    agent_ids = [f"agent-{i:04d}" for i in range(agents)]
    probe_names = [f"probe-{i:05d}" for i in range(probes)]
    for i, agent_id in enumerate(agent_ids):
        clf.agent_connected(agent_id, f"region-{i % REGIONS}", {"network": f"as{i}"}, 30.0,
                            START)
    return clf, agent_ids, probe_names


def make_batches(agent_ids: list[str], probe_names: list[str], total: int, *,
                 failure_rate: float, seed: int, down: frozenset[str] = frozenset(),
                 ) -> list[tuple[str, list[pb.ProbeResult]]]:
    """Batches of BATCH results, agent after agent, cycling through each agent's probes.

    `failure_rate`: share of unconfirmed (noise) failures; probes in `down` fail confirmed
    everywhere (a first failure, then the confirmed re-probe: two results).
    """
    rng = random.Random(seed)
    batches: list[tuple[str, list[pb.ProbeResult]]] = []
    cursor = dict.fromkeys(agent_ids, 0)
    made = 0
    while made < total:
        for agent_id in agent_ids:
            results: list[pb.ProbeResult] = []
            for _ in range(BATCH):
                name = probe_names[cursor[agent_id] % len(probe_names)]
                cursor[agent_id] += 1
                failed = name in down or rng.random() < failure_rate
                results.extend(pb.ProbeResult(
                    probe=name, target=f"https://{name}.example/", kind="http",
                    success=not failed, confirmed=confirmed,
                    failed_phase=pb.PHASE_CONNECT if failed else pb.PHASE_UNSPECIFIED,
                    reason="connect_refused" if failed else "",
                    duration_seconds=0.05, status_code=0 if failed else 200,
                    timestamp_ms=int(START * 1000), interval_ms=30_000)
                    for confirmed in ((False, True) if name in down else (False,)))
            batches.append((agent_id, results))
            made += BATCH
            if made >= total:
                break
    return batches


def warm_up(clf: Classifier, agent_ids: list[str], probe_names: list[str]) -> None:
    for agent_id in agent_ids:
        results = [pb.ProbeResult(probe=name, target=f"https://{name}.example/", kind="http",
                                  success=True, duration_seconds=0.05, status_code=200,
                                  timestamp_ms=int(START * 1000), interval_ms=30_000)
                   for name in probe_names]
        clf.apply(agent_id, results, START)


def time_apply(clf: Classifier, batches: list[tuple[str, list[pb.ProbeResult]]],
               repeat: int) -> list[float]:
    """Seconds per pass over `batches`, `repeat` passes (the state is steady after one)."""
    apply = clf.apply
    times = []
    for n in range(repeat):
        gc.collect()
        now = START + 1.0 + n
        started = time.perf_counter()
        for agent_id, results in batches:
            apply(agent_id, results, now)
        times.append(time.perf_counter() - started)
        clf.take_transitions()
    return times


def bytes_per_pair(agents: int, probes: int) -> float:
    """tracemalloc: memory the classifier holds for a warmed-up fleet, per pair."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    clf, agent_ids, probe_names = build_fleet(agents, probes)
    for agent_id in agent_ids:
        # One agent's results at a time, so the messages' memory is not counted.
        results = [pb.ProbeResult(probe=name, target=f"https://{name}.example/", kind="http",
                                  success=True, duration_seconds=0.05, status_code=200,
                                  timestamp_ms=int(START * 1000), interval_ms=30_000)
                   for name in probe_names]
        clf.apply(agent_id, results, START)
        del results
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # Keep clf alive until the snapshot is taken.
    assert len(clf.agents()) == agents
    return held / (agents * probes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--results", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="passes per run; best is kept")
    args = parser.parse_args()
    pairs = args.agents * args.probes

    clf, agent_ids, probe_names = build_fleet(args.agents, args.probes)
    warm_up(clf, agent_ids, probe_names)
    rows = []
    figures: dict[str, float | int] = {"agents": args.agents, "probes": args.probes,
                                       "pairs": pairs, "results": args.results,
                                       "repeat": args.repeat}
    outage = frozenset(probe_names[: max(1, args.probes // 20)])
    runs: tuple[tuple[str, str, float, frozenset[str]], ...] = (
        ("steady", "steady (all up)", 0.0, frozenset()),
        ("noisy", "1% unconfirmed failures", 0.01, frozenset()),
        ("outage", "5% of probes down, global", 0.0, outage),
    )
    for key, label, rate, down in runs:
        batches = make_batches(agent_ids, probe_names, args.results, failure_rate=rate, seed=7,
                               down=down)
        count = sum(len(results) for _, results in batches)
        times = time_apply(clf, batches, args.repeat)
        best, median = min(times), statistics.median(times)
        rows.append((label, count, best, median))
        figures[f"{key}_results"] = count
        figures[f"{key}_best_seconds"] = round(best, 4)
        figures[f"{key}_median_seconds"] = round(median, 4)
        figures[f"{key}_us_per_result"] = round(best / count * 1e6, 3)
        figures[f"{key}_results_per_s"] = round(count / best)
        if not down:
            assert not clf.open_outages(), "noise must not open outages"
        else:
            # The first pass is the onset: every down pair's region vote and the records run.
            onset = times[0]
            figures[f"{key}_onset_seconds"] = round(onset, 4)
            figures[f"{key}_onset_us_per_result"] = round(onset / count * 1e6, 3)
        del batches
    opened = {r.probe for r in clf.open_outages() if r.probe}
    assert opened == set(outage), "the outage run must classify exactly its probes"
    # A tick that scans every pair's freshness (each agent's scan falls due once an interval).
    started = time.perf_counter()
    clf.tick(START + 20.0)
    tick_s = time.perf_counter() - started
    started = time.perf_counter()
    scraped = sum(1 for sample in clf.samples() if sample.success)
    samples_s = time.perf_counter() - started
    assert scraped > 0
    figures["tick_full_scan_ms"] = round(tick_s * 1000, 2)
    figures["samples_iteration_ms"] = round(samples_s * 1000, 2)
    del clf
    per_pair = bytes_per_pair(args.agents, args.probes)
    figures["bytes_per_pair"] = round(per_pair, 1)
    print_table(figures, rows)


def print_table(figures: dict[str, float | int],
                rows: list[tuple[str, int, float, float]]) -> None:
    pairs = figures["pairs"]
    print(f"classifier apply: {figures['agents']} agents x {figures['probes']} probes = "
          f"{pairs} pairs, batches of {BATCH}, best of {figures['repeat']} passes "
          "(shared machine: wall clock)")
    print(f"{'run':<28} {'results':>9} {'best s':>8} {'median s':>9} {'us/result':>10} "
          f"{'results/s':>11}")
    for label, count, best, median in rows:
        print(f"{label:<28} {count:>9} {best:>8.3f} {median:>9.3f} "
              f"{best / count * 1e6:>10.3f} {count / best:>11,.0f}")
    print(f"{'outage onset (first pass)':<28} {figures['outage_results']:>9} "
          f"{figures['outage_onset_seconds']:>8.3f} {'':>9} "
          f"{figures['outage_onset_us_per_result']:>10.3f}")
    print(f"{'tick, full freshness scan':<28} {pairs:>9} {figures['tick_full_scan_ms']:>8.1f} ms")
    print(f"{'samples() iteration':<28} {pairs:>9} {figures['samples_iteration_ms']:>8.1f} ms")
    print(f"{'memory per pair':<28} {figures['bytes_per_pair']:>9.0f} bytes "
          "(tracemalloc; target < 2048)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
