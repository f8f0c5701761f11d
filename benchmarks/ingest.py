"""Collector ingest throughput and memory, end to end over real gRPC on loopback.

    .venv/bin/python benchmarks/ingest.py [--seconds 10] [--agents 8] [--batch 100]

Three runs, each with the server in its own process pinned to one core and the load in
another process pinned to the other core:

1. bare: a grpc.aio server that only parses each batch and acks it (the ceiling);
2. collector: the real `CollectorService` (ingest + dedup + validation + classification +
   per-kind details kept); results applied per second are read back from the collector's
   own counter, CPU seconds from /proc; the classifier's share is timed inside the process;
   then two /metrics scrapes of its pairs, timed inside the collector (the first decodes
   every pair's details, the second reuses them); then all of it again with the per-kind
   details store switched off (`kind_details=False`);
3. memory: 100 agents x 1,000 probes = 100,000 (probe, agent) pairs sent to a fresh
   collector; RSS delta per pair.

Prints a table, then one JSON object with every figure as the last stdout line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from procs import cpu_seconds, pin, rss_bytes
from wire import HTTP_FACTS, METHOD

from probenet.v1 import probenet_pb2 as pb

REGIONS = ("eu", "us", "ap", "sa")
WINDOW = 4  # batches in flight per stream


# -- servers (child processes) -------------------------------------------------------------


def bare_server(conn: Any, cpu: int) -> None:
    """A grpc.aio server that only receives batches and acks each one (the ceiling)."""
    pin(cpu)
    welcome = pb.CollectorMessage(welcome=pb.Welcome(collector_id="bare")).SerializeToString()
    ack = pb.CollectorMessage(ack=pb.Ack(epoch=1, acked_seq=1)).SerializeToString()

    async def stream(_request_iterator: Any, context: Any) -> None:
        await context.read()
        await context.write(welcome)
        while True:
            data = await context.read()
            if data is grpc.aio.EOF:
                return
            counter[0] += 1
            await context.write(ack)

    counter = [0]

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 4 << 20)])
        handler = grpc.method_handlers_generic_handler(
            "probenet.v1.Ingest", {"Stream": grpc.stream_stream_rpc_method_handler(stream)})
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send({"grpc": f"127.0.0.1:{port}"})
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                break
            conn.send({"batches": counter[0]})
        await server.stop(None)

    asyncio.run(main())


def collector_server(conn: Any, cpu: int, folder: str, details: bool = True) -> None:
    """The real CollectorService, with the classifier's apply() timed."""
    pin(cpu)
    from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

    from probenet.collector.config import parse_config  # noqa: PLC0415
    from probenet.collector.server import CollectorService  # noqa: PLC0415

    config = parse_config(
        "listen: {grpc: '127.0.0.1:0', http: '127.0.0.1:0'}\n"
        f"journal: {{path: '{folder}/journal.db'}}\ncollector_id: bench\n")

    async def main() -> None:
        registry = CollectorRegistry()
        async with CollectorService(config, registry=registry,
                                    kind_details=details) as service:
            classifier = service.classifier
            real_apply = classifier.apply
            apply_seconds = [0.0]
            perf = time.perf_counter

            def timed_apply(agent_id: str, results: Any, now: float) -> int:
                started = perf()
                try:
                    return real_apply(agent_id, results, now)
                finally:
                    apply_seconds[0] += perf() - started

            classifier.apply = timed_apply  # type: ignore[method-assign]
            conn.send({"grpc": service.grpc_address, "http": service.http.url})
            loop = asyncio.get_running_loop()
            while True:
                command = await loop.run_in_executor(None, conn.recv)
                if command == "stop":
                    break
                if command == "scrape":
                    # The /metrics page's own render where the service has one; before it,
                    # /metrics was generate_latest over the registry.
                    page = getattr(service, "page", None)
                    started = perf()
                    exposition = page.render() if page is not None else generate_latest(registry)
                    conn.send({"scrape_s": perf() - started, "series": sum(
                        1 for line in exposition.splitlines() if not line.startswith(b"#"))})
                    continue
                applied = registry.get_sample_value(
                    "probenet_ingest_results_total", {"outcome": "applied"}) or 0.0
                duplicate = registry.get_sample_value(
                    "probenet_ingest_results_total", {"outcome": "duplicate"}) or 0.0
                conn.send({"applied": applied, "duplicate": duplicate,
                           "apply_seconds": apply_seconds[0],
                           "pairs": sum(1 for _ in classifier.samples())})

    asyncio.run(main())


# -- load (child process) ------------------------------------------------------------------


def _templates(agent: int, probes: int, batch: int) -> list[pb.AgentMessage]:
    """Batches that together cover every probe of the agent once (seqs patched per send)."""
    now_ms = int(time.time() * 1000)
    messages = []
    for first in range(0, probes, batch):
        results = []
        for i in range(first, min(first + batch, probes)):
            probe = (agent * 7919 + i) % probes
            failing = i % 100 == 99  # 1 % unconfirmed failures: they change no verdict
            results.append(pb.ProbeResult(
                seq=i + 1, probe=f"probe-{probe:05d}", target=f"https://t{probe}.example/",
                kind="http", service=f"svc-{probe % 50}", success=not failing,
                confirmed=False,
                failed_phase=pb.PHASE_CONNECT if failing else pb.PHASE_UNSPECIFIED,
                reason="connect_timeout" if failing else "", duration_seconds=0.0123,
                status_code=0 if failing else 200, timestamp_ms=now_ms, interval_ms=10_000,
                **({} if failing else HTTP_FACTS)))
        messages.append(pb.AgentMessage(batch=pb.ResultBatch(results=results)))
    return messages


def parse_rate(batch: int, seconds: float = 1.0) -> float:
    """Results per second that AgentMessage.FromString alone parses (this process)."""
    data = _templates(0, batch, batch)[0].SerializeToString()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(100):
            pb.AgentMessage.FromString(data)
        count += 100
    return count * batch / (time.perf_counter() - started)


async def _agent(address: str, agent: int, *, seconds: float, batch: int, probes: int,
                 unique: bool, start: float) -> tuple[int, int]:
    """Stream batches for `seconds`; return (results acked, batches)."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(METHOD)()
        epoch = time.time_ns() + agent
        await call.write(pb.AgentMessage(hello=pb.Hello(
            agent_id=f"bench-{agent}", region=REGIONS[agent % len(REGIONS)], epoch=epoch,
            interval_ms=10_000, probe_count=probes, version="bench")).SerializeToString())
        await asyncio.wait_for(call.read(), 30)
        messages = _templates(agent, probes, batch)
        fixed = messages[0].SerializeToString()
        window = asyncio.Semaphore(WINDOW)
        acked = [0, 0]
        seq = 0

        async def read_acks() -> None:
            last = 0
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    return
                ack = pb.CollectorMessage.FromString(reply).ack
                acked[0] += ack.acked_seq - last if unique else batch
                last = ack.acked_seq
                acked[1] += 1
                window.release()
                if stopped and acked[1] >= sent:
                    all_acked.set()

        all_acked = asyncio.Event()
        reader = asyncio.create_task(read_acks())
        deadline = start + seconds
        sent = 0
        stopped = False
        while time.monotonic() < deadline:
            await window.acquire()
            if unique:
                message = messages[sent % len(messages)]
                for result in message.batch.results:
                    seq += 1
                    result.seq = seq
                data = message.SerializeToString()
            else:
                data = fixed
            await call.write(data)
            sent += 1
        stopped = True
        if acked[1] < sent:
            async with asyncio.timeout(60):
                await all_acked.wait()
        await call.done_writing()
        reader.cancel()
        return acked[0], acked[1]


def load(conn: Any, cpu: int, address: str, *, agents: int, seconds: float, batch: int,
         probes: int, unique: bool) -> None:
    """Drive `agents` concurrent streams; report results acked and wall time."""
    pin(cpu)

    async def main() -> dict[str, float]:
        start = time.monotonic() + 0.5
        tasks = [_agent(address, i, seconds=seconds, batch=batch, probes=probes,
                        unique=unique, start=start) for i in range(agents)]
        conn.send("ready")
        done = await asyncio.gather(*tasks)
        return {"acked": float(sum(a for a, _ in done)), "batches": float(sum(b for _, b in done)),
                "wall": time.monotonic() - start}

    conn.send(asyncio.run(main()))


def run_load(ctx: Any, cpu: int, address: str, **kwargs: Any) -> tuple[Any, Any]:
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=load, args=(child, cpu, address), kwargs=kwargs, daemon=True)
    proc.start()
    assert parent.poll(60), "load process did not start"
    assert parent.recv() == "ready"
    return proc, parent


# -- the runs ------------------------------------------------------------------------------


def bare_run(ctx: Any, cpus: tuple[int, int], args: argparse.Namespace) -> dict[str, float]:
    parent, child = ctx.Pipe()
    server = ctx.Process(target=bare_server, args=(child, cpus[0]), daemon=True)
    server.start()
    address = parent.recv()["grpc"]
    cpu_before = cpu_seconds(server.pid)
    proc, load_conn = run_load(ctx, cpus[1], address, agents=args.agents, seconds=args.seconds,
                               batch=args.batch, probes=args.probes, unique=False)
    result = load_conn.recv()
    proc.join(30)
    cpu = cpu_seconds(server.pid) - cpu_before
    parent.send("stats")
    received = parent.recv()["batches"] * args.batch
    parent.send("stop")
    server.join(30)
    return {"results": received, "wall_s": result["wall"], "cpu_s": cpu,
            "per_s": result["acked"] / result["wall"],
            "per_cpu_s": received / cpu if cpu else 0.0}


def collector_run(ctx: Any, cpus: tuple[int, int], args: argparse.Namespace,
                  folder: str, *, details: bool = True) -> dict[str, float]:
    parent, child = ctx.Pipe()
    server = ctx.Process(target=collector_server, args=(child, cpus[0], folder, details),
                         daemon=True)
    server.start()
    address = parent.recv()["grpc"]
    cpu_before = cpu_seconds(server.pid)
    proc, load_conn = run_load(ctx, cpus[1], address, agents=args.agents, seconds=args.seconds,
                               batch=args.batch, probes=args.probes, unique=True)
    result = load_conn.recv()
    proc.join(30)
    cpu = cpu_seconds(server.pid) - cpu_before
    parent.send("stats")
    stats = parent.recv()
    parent.send("scrape")
    first = parent.recv()
    parent.send("scrape")
    second = parent.recv()
    parent.send("stop")
    server.join(30)
    applied = stats["applied"]
    return {"results": applied, "duplicates": stats["duplicate"], "wall_s": result["wall"],
            "cpu_s": cpu, "per_s": applied / result["wall"],
            "per_cpu_s": applied / cpu if cpu else 0.0,
            "classifier_apply_s": stats["apply_seconds"],
            "classifier_share": stats["apply_seconds"] / cpu if cpu else 0.0,
            "pairs": stats["pairs"], "scrape_series": first["series"],
            "first_scrape_s": first["scrape_s"], "second_scrape_s": second["scrape_s"]}


async def _fill(address: str, agents: int, probes: int, batch: int) -> None:
    sem = asyncio.Semaphore(20)

    async def one(agent: int) -> None:
        async with sem, grpc.aio.insecure_channel(address) as channel:
            call = channel.stream_stream(METHOD)()
            await call.write(pb.AgentMessage(hello=pb.Hello(
                agent_id=f"mem-{agent:03d}", region=REGIONS[agent % len(REGIONS)],
                epoch=1, interval_ms=3_600_000)).SerializeToString())
            await asyncio.wait_for(call.read(), 30)
            seq = 0
            for first in range(0, probes, batch):
                results = []
                for probe in range(first, min(first + batch, probes)):
                    seq += 1
                    results.append(pb.ProbeResult(
                        seq=seq, probe=f"probe-{probe:05d}", target=f"https://t{probe}.example/",
                        kind="http", service=f"svc-{probe % 50}", success=True,
                        duration_seconds=0.01, status_code=200,
                        timestamp_ms=int(time.time() * 1000), interval_ms=3_600_000,
                        **HTTP_FACTS))
                await call.write(pb.AgentMessage(batch=pb.ResultBatch(
                    results=results)).SerializeToString())
                await asyncio.wait_for(call.read(), 30)
            await call.done_writing()

    await asyncio.gather(*(one(i) for i in range(agents)))


def fill(address: str, cpu: int, agents: int, probes: int, batch: int) -> None:
    pin(cpu)
    asyncio.run(_fill(address, agents, probes, batch))


def memory_run(ctx: Any, cpus: tuple[int, int], folder: str,
               args: argparse.Namespace) -> dict[str, float]:
    parent, child = ctx.Pipe()
    server = ctx.Process(target=collector_server, args=(child, cpus[0], folder), daemon=True)
    server.start()
    address = parent.recv()["grpc"]
    agents, probes = 100, args.memory_pairs // 100
    # Warm up every code path (and the agents) with 1 probe each, then measure the rest.
    warm = ctx.Process(target=fill, args=(address, cpus[1], agents, 1, args.batch))
    warm.start()
    warm.join(120)
    base = rss_bytes(server.pid)
    parent.send("stats")
    base_pairs = parent.recv()["pairs"]
    full = ctx.Process(target=fill, args=(address, cpus[1], agents, probes, args.batch))
    full.start()
    full.join(240)
    parent.send("stats")
    pairs = parent.recv()["pairs"]
    grown = rss_bytes(server.pid) - base
    parent.send("stop")
    server.join(30)
    return {"pairs": pairs, "rss_delta_bytes": grown,
            "bytes_per_pair": grown / max(1, pairs - base_pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--probes", type=int, default=1000, help="probes per agent")
    parser.add_argument("--memory-pairs", type=int, default=100_000)
    args = parser.parse_args()
    available = sorted(os.sched_getaffinity(0))
    cpus = (available[0], available[-1])
    ctx = multiprocessing.get_context("spawn")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="probenet-bench-") as folder:
        pin(cpus[0])
        parse_per_s = parse_rate(args.batch)
        os.sched_setaffinity(0, set(available))
        bare = bare_run(ctx, cpus, args)
        Path(folder, "a").mkdir()
        collector = collector_run(ctx, cpus, args, str(Path(folder, "a")))
        Path(folder, "c").mkdir()
        bare_details = collector_run(ctx, cpus, args, str(Path(folder, "c")), details=False)
        Path(folder, "b").mkdir()
        memory = memory_run(ctx, cpus, str(Path(folder, "b")), args)
    figures = {
        "config": {"seconds": args.seconds, "agents": args.agents, "batch": args.batch,
                   "probes_per_agent": args.probes, "server_cpu": cpus[0],
                   "load_cpu": cpus[1], "cpu_count": os.cpu_count()},
        "bare_grpc": bare,
        "parse_only_results_per_s": parse_per_s,
        "collector": collector,
        "collector_without_details": bare_details,
        "memory": memory,
        "ratio_collector_to_bare": collector["per_s"] / bare["per_s"] if bare["per_s"] else 0.0,
        "details_cpu_share": (1 - collector["per_cpu_s"] / bare_details["per_cpu_s"]
                              if bare_details["per_cpu_s"] else 0.0),
        "targets": {"collector_results_per_s": 250_000, "bytes_per_pair": 2048},
        "total_wall_s": time.monotonic() - started,
    }
    rows = [
        ("AgentMessage.FromString only", f"{parse_per_s:,.0f}", "", ""),
        ("bare grpc.aio (receive + ack)", f"{bare['per_s']:,.0f}", f"{bare['per_cpu_s']:,.0f}",
         f"{bare['cpu_s']:.1f}"),
        ("collector end to end", f"{collector['per_s']:,.0f}",
         f"{collector['per_cpu_s']:,.0f}", f"{collector['cpu_s']:.1f}"),
        ("  same, no per-kind details", f"{bare_details['per_s']:,.0f}",
         f"{bare_details['per_cpu_s']:,.0f}", f"{bare_details['cpu_s']:.1f}"),
    ]
    print(f"ingest: {args.agents} streams, batches of {args.batch}, {args.seconds:g} s per run, "
          f"server on cpu {cpus[0]}, load on cpu {cpus[1]}")
    print(f"{'run':32} {'results/s':>12} {'results/cpu-s':>14} {'cpu s':>7}")
    for row in rows:
        print(f"{row[0]:32} {row[1]:>12} {row[2]:>14} {row[3]:>7}")
    print(f"collector / bare: {figures['ratio_collector_to_bare']:.2f}; classifier.apply share "
          f"of collector CPU: {collector['classifier_share']:.0%} "
          f"({collector['classifier_apply_s']:.1f} s); per-kind details cost "
          f"{figures['details_cpu_share']:.0%} of the collector's CPU per result; duplicates: "
          f"{collector['duplicates']:.0f}; pairs: {collector['pairs']:.0f}")
    print(f"memory: {memory['pairs']:,.0f} pairs, RSS +{memory['rss_delta_bytes'] / 2**20:.1f} "
          f"MiB, {memory['bytes_per_pair']:,.0f} bytes per pair (target < 2048)")
    for name, run in (("scrape", collector), ("scrape, no per-kind details", bare_details)):
        print(f"{name}: {run['pairs']:,.0f} pairs, {run['scrape_series']:,.0f} series, first "
              f"{run['first_scrape_s']:.2f} s, second {run['second_scrape_s']:.2f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
