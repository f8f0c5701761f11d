"""Agent probe throughput and CPU cost, side by side with blackbox_exporter, and idle memory.

    .venv/bin/python benchmarks/agent_probes.py [--seconds 8] [--probes 2000]

Everything runs on loopback. CPU 1 hosts the targets (a plain HTTP/1.1 server answering
200 "ok" and closing, and a TCP server that accepts and closes), the real collector
(`probenet collector` in its own process) and the load driver for blackbox_exporter.
CPU 0 hosts the system under test, one at a time:

1. `probenet agent` (a real agent process, config written to a temp dir) with `--probes`
   probes of one kind (http, tcp, and a three-step `flow` journey whose cost is quoted per
   step next to single http probes) at an interval short enough to saturate one core, every result
   streamed to the collector. Probes completed come from the agent's own
   `probenet_agent_probe_runs_total`, CPU seconds of the agent process from /proc.
   The same run again with `buffer: {disk: false}` (memory only) measures what the disk
   spool (agent/state.py) costs per probe.
2. prometheus-blackbox-exporter (`GOMAXPROCS=1`), driven through `/probe` with a bounded
   number of concurrent requests (`--concurrency`) for the same target and kind; probes
   completed are the driver's successful `/probe` answers, CPU seconds those of the
   exporter process.

3. Path traces (agent/trace.py): a process pinned to CPU 0 runs the trace engine against
   127.0.0.1 (UDP, 3 probes per hop, reached at hop 1), `--trace-concurrency` traces at
   once, for `--seconds`; the figure is traces per CPU-second of that process, quoted next
   to the agent's http probes per CPU-second of the same run (`ratio_trace_http`).

`--only trace` runs just the agent's http row and the trace row.

Every probe opens a fresh connection (the agent always does; blackbox_exporter builds a new
HTTP client per probe). The figure to compare is probes per CPU-second of the process under
test; the ratio agent/blackbox is printed per kind. Then an agent with 10,000 probe
definitions is started idle (5 minute interval) and its RSS read after it settled.

Prints a table; the last stdout line is one JSON object holding every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SUT_CPU, LOAD_CPU = 0, 1
BLACKBOX = shutil.which("prometheus-blackbox-exporter") or "/usr/bin/prometheus-blackbox-exporter"
HAS_BLACKBOX = Path(BLACKBOX).exists()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def tail(log: Path) -> str:
    """The end of a log file (for error messages)."""
    return log.read_text(errors="replace")[-2000:]


def write_text(path: Path, text: str) -> None:
    """Write a small config file (synchronous on purpose: done before measuring)."""
    path.write_text(text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def probenet(*args: str) -> list[str]:
    return [sys.executable, "-c", "from probenet.cli import main; main()", *args]


def spawn(cmd: list[str], cpu: int, log: Path, env: dict[str, str] | None = None,
          ) -> subprocess.Popen[bytes]:
    """Start `cmd` pinned to `cpu` (taskset), output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(["taskset", "-c", str(cpu), *cmd], stdout=out, stderr=out,
                                cwd=ROOT, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- targets (a child process on the load CPU) -----------------------------------------------

TARGET_CODE = r"""
import asyncio, os, sys
os.sched_setaffinity(0, {%d})
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\nok")
class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.transport.write(RESPONSE)
            self.transport.close()
class Tcp(asyncio.Protocol):
    def connection_made(self, transport):
        transport.close()
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_server(Http, "127.0.0.1", %d, backlog=8192)
    await loop.create_server(Tcp, "127.0.0.1", %d, backlog=8192)
    print("ready", flush=True)
    await asyncio.sleep(%d)
asyncio.run(main())
"""


# -- the agent under test ----------------------------------------------------------------------

# A three-step journey against the plain target (every path answers 200 "ok"): a GET, a
# form POST carrying a variable and a secret (so substitution and redaction are paid for),
# a GET checking the body. Each run is FLOW_STEPS requests on fresh connections.
FLOW_STEPS = 3
FLOW_OPTIONS = (
    "{variables: {user: bench}, secrets: {password: {env: BENCH_FLOW_PASSWORD}}, steps: ["
    "{name: home, expect: {status: ['200']}}, "
    "{name: login, request: {method: POST, url: login, form: {user: '${user}', "
    "password: '${password}'}}, expect: {status: ['2xx']}}, "
    "{name: feed, request: {url: feed}, expect: {status: ['200'], body_regex: ok}}]}")


def agent_yaml(kind: str, target: str, probes: int, *, interval: str, collector: str,
               metrics_port: int, disk: bool = True) -> str:
    if kind == "flow":
        lines = [(f"  - {{name: flow-0, kind: flow, target: '{target}', flow: &flow "
                 f"{FLOW_OPTIONS}}}")]
        lines += [f"  - {{name: flow-{i}, kind: flow, target: '{target}', flow: *flow}}"
                  for i in range(1, probes)]
    else:
        lines = [f"  - {{name: {kind}-{i}, kind: {kind}, target: '{target}'}}"
                 for i in range(probes)]
    return "\n".join([
        "agent: {id: bench-1, region: bench}",
        f"collectors: [{{address: '{collector}'}}]",
        f"defaults: {{interval: {interval}, timeout: 900ms}}",
        "scheduler: {max_concurrent: 256, confirm_failures: false}",
        "stream: {max_batch_results: 1000, linger: 50ms}",
        f"buffer: {{max_results: 1000000, disk: {'true' if disk else 'false'}}}",
        f"metrics: {{listen: '127.0.0.1:{metrics_port}'}}",
        "probes:", *lines, ""])


async def scrape(port: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
    body = (await reader.read()).decode()
    writer.close()
    values: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("probenet_agent_probe_runs_total"):
            result = "success" if 'result="success"' in line else "failure"
            values[result] = values.get(result, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("probenet_agent_results_sent_total"):
            values["sent"] = float(line.rsplit(" ", 1)[1])
    return values


async def wait_metrics(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited:\n{tail(log)}")
        with contextlib.suppress(OSError):
            await scrape(port)
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("agent metrics did not come up")


async def measure_agent(kind: str, target: str, args: argparse.Namespace, *, collector: str,
                        folder: Path, uvloop: bool, disk: bool = True) -> dict[str, float]:
    port = free_port()
    config = folder / f"agent-{kind}.yaml"
    rate = {"http": args.http_rate, "tcp": args.tcp_rate,
            "flow": args.http_rate // FLOW_STEPS}[kind]
    write_text(config, agent_yaml(kind, target, rate, interval="1s", collector=collector,
                                 metrics_port=port, disk=disk))
    log = folder / f"agent-{kind}.log"
    env = dict(os.environ, BENCH_FLOW_PASSWORD="bench-secret")
    if not uvloop:
        env["PROBENET_NO_UVLOOP"] = "1"
    proc = spawn(probenet("agent", "--config", str(config), "--log-level", "warning"),
                 SUT_CPU, log, env)
    try:
        await wait_metrics(port, proc, log)
        await asyncio.sleep(args.warmup)
        before, cpu0, t0 = await scrape(port), cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(args.seconds)
        after, cpu1, t1 = await scrape(port), cpu_seconds(proc.pid), time.monotonic()
    finally:
        stop(proc)
    done = after.get("success", 0) - before.get("success", 0)
    failed = after.get("failure", 0) - before.get("failure", 0)
    cpu = cpu1 - cpu0
    return {"offered_per_s": rate, "probes_per_s": done / (t1 - t0),
            "cpu_s_per_1000": 1000 * cpu / max(done, 1),
            "probes_per_cpu_s": done / max(cpu, 1e-9), "cpu_share": cpu / (t1 - t0),
            "failures": failed, "streamed": after.get("sent", 0) - before.get("sent", 0)}


# -- blackbox_exporter under test ----------------------------------------------------------------

BLACKBOX_MODULES = """modules:
  http_2xx:
    prober: http
    timeout: 2s
    http: {preferred_ip_protocol: ip4, ip_protocol_fallback: false}
  tcp_connect:
    prober: tcp
    timeout: 2s
    tcp: {preferred_ip_protocol: ip4, ip_protocol_fallback: false}
"""

DRIVER_CODE = r"""
import asyncio, json, os, sys, time
import aiohttp
os.sched_setaffinity(0, {%d})
URL, CONCURRENCY, SECONDS = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
async def worker(session, stop_at, counts):
    while time.monotonic() < stop_at:
        try:
            async with session.get(URL) as response:
                body = await response.read()
        except (OSError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            counts["errors"] += 1
            counts["last_error"] = repr(exc)
            await asyncio.sleep(0.01)
            continue
        counts["ok" if b"probe_success 1" in body else "failed"] += 1
async def main():
    counts = {"ok": 0, "failed": 0, "errors": 0}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic()
        await asyncio.gather(*(worker(session, start + SECONDS, counts)
                               for _ in range(CONCURRENCY)))
    counts["seconds"] = time.monotonic() - start
    print(json.dumps(counts))
asyncio.run(main())
"""


async def measure_blackbox(kind: str, target: str, args: argparse.Namespace,
                           folder: Path) -> dict[str, float]:
    modules = folder / "blackbox.yml"
    write_text(modules, BLACKBOX_MODULES)
    port = free_port()
    log = folder / "blackbox.log"
    env = {**os.environ, "GOMAXPROCS": "1"}
    proc = spawn([BLACKBOX, f"--config.file={modules}",
                  f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                 SUT_CPU, log, env)
    module = "http_2xx" if kind == "http" else "tcp_connect"
    url = f"http://127.0.0.1:{port}/probe?module={module}&target={target}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"blackbox_exporter did not start:\n{tail(log)}")
            await asyncio.sleep(0.1)
        driver = [sys.executable, "-c", DRIVER_CODE % LOAD_CPU]

        async def drive(seconds: float) -> dict[str, Any]:
            done = await asyncio.to_thread(
                subprocess.run, [*driver, url, str(args.concurrency), str(seconds)],
                capture_output=True, text=True, timeout=120, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"blackbox driver failed: {done.stderr[-2000:]}")
            result: dict[str, Any] = json.loads(done.stdout)
            return result

        await drive(args.warmup)
        cpu0 = cpu_seconds(proc.pid)
        counts = await drive(args.seconds)
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        stop(proc)
    ok = counts["ok"]
    return {"probes_per_s": ok / counts["seconds"], "cpu_s_per_1000": 1000 * cpu / max(ok, 1),
            "probes_per_cpu_s": ok / max(cpu, 1e-9),
            "failures": counts["failed"] + counts["errors"]}


# -- idle memory ----------------------------------------------------------------------

TRACE_CODE = r"""
import asyncio, json, os, sys, time
os.sched_setaffinity(0, {%d})
from probenet.agent.trace import trace

async def main(seconds, concurrency):
    counts = {"traces": 0, "reached": 0}
    stop_at = time.monotonic() + seconds

    async def worker():
        while time.monotonic() < stop_at:
            result = await trace("127.0.0.1", hop_timeout_s=1.0)
            counts["traces"] += 1
            counts["reached"] += result.reached

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts

asyncio.run(main(0.5, 4))  # warm-up
cpu0, wall0 = time.process_time(), time.monotonic()
counts = asyncio.run(main(%f, %d))
counts["cpu_s"] = time.process_time() - cpu0
counts["wall_s"] = time.monotonic() - wall0
print(json.dumps(counts))
"""


def measure_trace(args: argparse.Namespace) -> dict[str, float]:
    """Traces per CPU-second of the trace engine, against 127.0.0.1."""
    out = subprocess.run(
        [sys.executable, "-c", TRACE_CODE % (SUT_CPU, args.seconds, args.trace_concurrency)],
        cwd=ROOT, capture_output=True, check=True, text=True, timeout=args.seconds + 60)
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    cpu = max(counts["cpu_s"], 1e-9)
    return {"traces": counts["traces"], "reached": counts["reached"],
            "traces_per_s": counts["traces"] / counts["wall_s"],
            "traces_per_cpu_s": counts["traces"] / cpu,
            "cpu_s_per_1000": 1000 * cpu / max(counts["traces"], 1)}


async def measure_idle_rss(collector: str, folder: Path, count: int) -> dict[str, float]:
    port = free_port()
    config = folder / "agent-idle.yaml"
    lines = [f"  - {{name: idle-{i}, kind: {'http' if i % 2 else 'tcp'}, target: "
             f"'{'http://127.0.0.1:9/x' if i % 2 else '127.0.0.1:9'}'}}"
             for i in range(count)]
    write_text(config, "\n".join([
        "agent: {id: bench-idle, region: bench}",
        f"collectors: [{{address: '{collector}'}}]",
        "defaults: {interval: 5m, timeout: 2s}",
        f"metrics: {{listen: '127.0.0.1:{port}'}}", "probes:", *lines, ""]))
    log = folder / "agent-idle.log"
    proc = spawn(probenet("agent", "--config", str(config), "--log-level", "warning"),
                 SUT_CPU, log)
    try:
        await wait_metrics(port, proc, log)
        await asyncio.sleep(5)
        rss = rss_bytes(proc.pid)
        cpu0 = cpu_seconds(proc.pid)
        await asyncio.sleep(5)
        idle_cpu = (cpu_seconds(proc.pid) - cpu0) / 5
    finally:
        stop(proc)
    return {"probes": count, "rss_mb": rss / 2**20, "idle_cpu_share": idle_cpu}


# -- main -----------------------------------------------------------------------------

async def main(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"seconds": args.seconds, "concurrency": args.concurrency}
    try:
        import uvloop  # noqa: F401, PLC0415
        has_uvloop = True
    except ImportError:
        has_uvloop = False
    figures["uvloop_installed"] = has_uvloop
    with tempfile.TemporaryDirectory(prefix="probenet-bench-") as tmp:
        folder = Path(tmp)
        http_port, tcp_port = free_port(), free_port()
        targets = subprocess.Popen(  # noqa: ASYNC220 - started once, before any measurement
            [sys.executable, "-c", TARGET_CODE % (LOAD_CPU, http_port, tcp_port, 600)],
            stdout=subprocess.PIPE)
        grpc_port, api_port = free_port(), free_port()
        collector_config = folder / "collector.yaml"
        write_text(collector_config,
            f"listen: {{grpc: '127.0.0.1:{grpc_port}', http: '127.0.0.1:{api_port}'}}\n"
            f"journal: {{path: '{folder / 'journal.db'}'}}\ncollector_id: bench\n")
        collector = spawn(probenet("collector", "--config", str(collector_config),
                                   "--log-level", "warning"), LOAD_CPU,
                          folder / "collector.log")
        try:
            assert targets.stdout is not None
            targets.stdout.readline()
            http_target = f"http://127.0.0.1:{http_port}/"
            tcp_target = f"127.0.0.1:{tcp_port}"
            await asyncio.sleep(1.0)
            loops = [False, True] if has_uvloop else [False]
            if args.only == "trace":
                figures["agent_http"] = await measure_agent(
                    "http", http_target, args, collector=f"127.0.0.1:{grpc_port}",
                    folder=folder, uvloop=False)
                figures["trace"] = measure_trace(args)
                return _ratios(figures)
            for kind, target in (("http", http_target), ("tcp", tcp_target)):
                for use_uvloop in loops:
                    name = f"agent_{kind}" + ("_uvloop" if use_uvloop else "")
                    figures[name] = await measure_agent(
                        kind, target, args, collector=f"127.0.0.1:{grpc_port}", folder=folder,
                        uvloop=use_uvloop)
                # The disk spool's cost: the same run with the buffer in memory only.
                figures[f"agent_{kind}_memory_only"] = await measure_agent(
                    kind, target, args, collector=f"127.0.0.1:{grpc_port}", folder=folder,
                    uvloop=False, disk=False)
                if HAS_BLACKBOX:
                    figures[f"blackbox_{kind}"] = await measure_blackbox(kind, target, args,
                                                                         folder)
            # A journey's cost per step, next to single http probes on the same target.
            figures["agent_flow"] = await measure_agent(
                "flow", http_target, args, collector=f"127.0.0.1:{grpc_port}", folder=folder,
                uvloop=False)
            figures["idle"] = await measure_idle_rss(f"127.0.0.1:{grpc_port}", folder,
                                                     args.idle_probes)
            figures["trace"] = measure_trace(args)
        finally:
            stop(collector)
            targets.kill()
            targets.wait()
    return _ratios(figures)


def _ratios(figures: dict[str, Any]) -> dict[str, Any]:
    trace_row, http_row = figures.get("trace"), figures.get("agent_http")
    if trace_row and http_row and http_row["probes_per_cpu_s"] > 0:
        figures["ratio_trace_http"] = trace_row["traces_per_cpu_s"] / http_row["probes_per_cpu_s"]
    flow, http = figures.get("agent_flow"), figures.get("agent_http")
    if flow and http and http["probes_per_cpu_s"] > 0:
        flow["steps_per_cpu_s"] = flow["probes_per_cpu_s"] * FLOW_STEPS
        figures["ratio_flow_step_http"] = flow["steps_per_cpu_s"] / http["probes_per_cpu_s"]
    for kind in ("http", "tcp"):
        black = figures.get(f"blackbox_{kind}")
        for suffix in ("", "_uvloop"):
            agent = figures.get(f"agent_{kind}{suffix}")
            if black and agent and black["probes_per_cpu_s"] > 0:
                figures[f"ratio_{kind}{suffix}"] = (agent["probes_per_cpu_s"] /
                                                    black["probes_per_cpu_s"])
    return figures


def print_trace(figures: dict[str, Any]) -> None:
    trace_row = figures.get("trace")
    if trace_row:
        print(f"{'trace':<22} {trace_row['traces_per_s']:>10.0f} "
              f"{trace_row['cpu_s_per_1000']:>11.3f} {trace_row['traces_per_cpu_s']:>13.0f} "
              f"{trace_row['traces'] - trace_row['reached']:>9.0f}   (traces to 127.0.0.1)")
    if "ratio_trace_http" in figures:
        print(f"{'trace/http':<22} traces per CPU-second / http probes per CPU-second = "
              f"{figures['ratio_trace_http']:.2f}")


def print_table(figures: dict[str, Any]) -> None:
    print(f"{'run':<22} {'probes/s':>10} {'CPU s/1000':>11} {'probes/CPU-s':>13} "
          f"{'failures':>9}")
    for name in ("agent_http", "agent_http_uvloop", "agent_http_memory_only", "blackbox_http",
                 "agent_tcp", "agent_tcp_uvloop", "agent_tcp_memory_only", "blackbox_tcp"):
        row = figures.get(name)
        if row:
            print(f"{name:<22} {row['probes_per_s']:>10.0f} {row['cpu_s_per_1000']:>11.3f} "
                  f"{row['probes_per_cpu_s']:>13.0f} {row['failures']:>9.0f}")
    for kind in ("http", "tcp"):
        disk, memory = figures.get(f"agent_{kind}"), figures.get(f"agent_{kind}_memory_only")
        if disk and memory and memory["probes_per_cpu_s"] > 0:
            print(f"{'disk_' + kind:<22} probes per CPU-second with the disk spool / memory "
                  f"only = {disk['probes_per_cpu_s'] / memory['probes_per_cpu_s']:.2f}")
    flow = figures.get("agent_flow")
    if flow:
        print(f"{'agent_flow':<22} {flow['probes_per_s']:>10.0f} {flow['cpu_s_per_1000']:>11.3f} "
              f"{flow['probes_per_cpu_s']:>13.0f} {flow['failures']:>9.0f}   "
              f"({FLOW_STEPS} steps per run)")
    if "ratio_flow_step_http" in figures:
        print(f"{'flow_step':<22} flow steps per CPU-second = "
              f"{figures['agent_flow']['steps_per_cpu_s']:.0f}, / http probes per "
              f"CPU-second = {figures['ratio_flow_step_http']:.2f}")
    for key in ("ratio_http", "ratio_http_uvloop", "ratio_tcp", "ratio_tcp_uvloop"):
        if key in figures:
            print(f"{key:<22} agent/blackbox probes per CPU-second = {figures[key]:.2f}")
    print_trace(figures)
    idle = figures.get("idle")
    if idle is None:
        return
    print(f"idle agent with {idle['probes']} probes: RSS {idle['rss_mb']:.1f} MB, "
          f"CPU {100 * idle['idle_cpu_share']:.1f}% of a core")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per run")
    parser.add_argument("--http-rate", type=int, default=2500,
                        help="http probes per second offered to the agent (1s interval)")
    parser.add_argument("--tcp-rate", type=int, default=4500,
                        help="tcp probes per second offered to the agent (1s interval)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="concurrent /probe requests to blackbox_exporter")
    parser.add_argument("--idle-probes", type=int, default=10_000)
    parser.add_argument("--trace-concurrency", type=int, default=16,
                        help="path traces at once in the trace row")
    parser.add_argument("--only", choices=["all", "trace"], default="all",
                        help="trace: only the agent's http row and the trace row")
    result = asyncio.run(main(parser.parse_args()))
    print(json.dumps(result, indent=1), file=sys.stderr)
    print_table(result)
    print(json.dumps(result, sort_keys=True))
