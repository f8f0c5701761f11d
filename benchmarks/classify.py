"""Benchmark of the classifier's hot path: Classifier.apply on real ProbeResult messages.

    .venv/bin/python benchmarks/classify.py [--agents 100] [--probes 1000] [--results 1000000]

Builds a fleet of agents (10 regions) x probes = pairs, warms every pair up (one success
each), then times `apply` on batches of 100 real `probenet.v1.ProbeResult` messages per
agent in steady state (all successes: the fast path), then the same with 1% unconfirmed
failures (the noise every fleet has), and measures bytes per (agent, probe) pair with
tracemalloc. Prints a table, then as the last line one JSON object with every figure.
Timings are wall-clock on a shared machine: read them as an order of magnitude.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

from collector.classify import Classifier  # noqa: E402
from collector.model import ClassificationParams  # noqa: E402
from probenet.v1 import probenet_pb2 as pb  # noqa: E402

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


def make_batches(agent_ids: list[str], probe_names: list[str], total: int,
                 failure_rate: float, seed: int) -> list[tuple[str, list[pb.ProbeResult]]]:
    """Batches of BATCH results, agent after agent, cycling through each agent's probes."""
    rng = random.Random(seed)
    batches: list[tuple[str, list[pb.ProbeResult]]] = []
    cursor = dict.fromkeys(agent_ids, 0)
    made = 0
    while made < total:
        for agent_id in agent_ids:
            results = []
            for _ in range(BATCH):
                name = probe_names[cursor[agent_id] % len(probe_names)]
                cursor[agent_id] += 1
                failed = rng.random() < failure_rate
                results.append(pb.ProbeResult(
                    probe=name, target=f"https://{name}.example/", kind="http",
                    success=not failed, confirmed=False,
                    failed_phase=pb.PHASE_CONNECT if failed else pb.PHASE_UNSPECIFIED,
                    reason="connect_refused" if failed else "",
                    duration_seconds=0.05, status_code=0 if failed else 200,
                    timestamp_ms=int(START * 1000), interval_ms=30_000))
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


def time_apply(clf: Classifier, batches: list[tuple[str, list[pb.ProbeResult]]]) -> float:
    gc.collect()
    apply = clf.apply
    now = START + 1.0
    started = time.perf_counter()
    for agent_id, results in batches:
        apply(agent_id, results, now)
    return time.perf_counter() - started


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
    args = parser.parse_args()
    pairs = args.agents * args.probes

    clf, agent_ids, probe_names = build_fleet(args.agents, args.probes)
    warm_up(clf, agent_ids, probe_names)
    rows = []
    figures: dict[str, float | int] = {"agents": args.agents, "probes": args.probes,
                                       "pairs": pairs, "results": args.results}
    for label, rate in (("steady (all up)", 0.0), ("1% unconfirmed failures", 0.01)):
        batches = make_batches(agent_ids, probe_names, args.results, rate, seed=7)
        seconds = time_apply(clf, batches)
        per_result_us = seconds / args.results * 1e6
        rows.append((label, args.results, seconds, per_result_us, args.results / seconds))
        key = "steady" if rate == 0 else "noisy"
        figures[f"{key}_seconds"] = round(seconds, 4)
        figures[f"{key}_us_per_result"] = round(per_result_us, 3)
        figures[f"{key}_results_per_s"] = round(args.results / seconds)
        del batches
    assert not clf.open_outages(), "the benchmark fleet must not open outages"
    del clf
    per_pair = bytes_per_pair(args.agents, args.probes)
    figures["bytes_per_pair"] = round(per_pair, 1)

    print(f"classifier apply: {args.agents} agents x {args.probes} probes = {pairs} pairs, "
          f"batches of {BATCH}")
    print(f"{'run':<26} {'results':>10} {'seconds':>9} {'us/result':>10} {'results/s':>12}")
    for label, count, seconds, per_result_us, rate in rows:
        print(f"{label:<26} {count:>10} {seconds:>9.3f} {per_result_us:>10.3f} {rate:>12,.0f}")
    print(f"{'memory per pair':<26} {per_pair:>10.0f} bytes (tracemalloc, target < 2048)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
