"""The scheduler: spread, intervals, deadlines, confirmation re-probes, concurrency, reload."""

from __future__ import annotations

import asyncio
import itertools
import random

from prometheus_client import CollectorRegistry

from probenet.agent.config import ProbeSpec, parse_config
from probenet.agent.metrics import ProbeCounters
from probenet.agent.probes.base import PhaseTracker, ProbeFailure, ProbeOutcome
from probenet.agent.scheduler import Scheduler
from support.targets import TcpTarget, closed_port


def specs(count: int, *, interval: str = "1s", timeout: str = "500ms", kind: str = "tcp",
          target: str = "127.0.0.1:9", extra: str = "") -> list[ProbeSpec]:
    probes = "\n".join(
        f"  - {{name: p{i}, kind: {kind}, target: '{target}', interval: {interval}, "
        f"timeout: {timeout}{extra}}}" for i in range(count))
    return parse_config(f"""
agent: {{id: a, region: r}}
collectors: [{{address: "127.0.0.1:1"}}]
probes:
{probes}
""").probes


class ScriptedProbe:
    """A probe whose runs follow a script: True = success, False = failure, float = sleep."""

    def __init__(self, script=(True,), *, gate: dict | None = None) -> None:
        self.script = list(script)
        self.calls = 0
        self.gate = gate

    async def run(self, tracker: PhaseTracker):
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if self.gate is not None:
            self.gate["now"] += 1
            self.gate["max"] = max(self.gate["max"], self.gate["now"])
        try:
            tracker.enter("connect", "connect")
            if isinstance(step, float):
                await asyncio.sleep(step)
                return [ProbeOutcome(success=True, duration_seconds=tracker.finish())]
            if not step:
                raise ProbeFailure("connect", "connect_refused", "scripted failure")
            return [ProbeOutcome(success=True, duration_seconds=tracker.finish())]
        finally:
            if self.gate is not None:
                self.gate["now"] -= 1


async def test_first_runs_are_spread_evenly_over_the_interval():
    probes = specs(200, interval="10s", timeout="1s")
    scheduler = Scheduler(probes, sink=lambda _r: None, build=lambda _s: ScriptedProbe(),
                          rng=random.Random(7))
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with scheduler:
        offsets = sorted((e.due - start) / 10.0 for e in scheduler.probes.values())
    # one probe per stratum [i/n, (i+1)/n): even, yet jittered
    assert all(i / 200 - 0.001 <= offset < (i + 1) / 200 + 0.001
               for i, offset in enumerate(offsets))
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert len({round(g, 6) for g in gaps}) > 100  # not a rigid grid


async def test_probes_fire_on_their_interval_and_results_reach_the_sink():
    results = []
    scheduler = Scheduler(specs(3, interval="200ms", timeout="100ms"), sink=results.append,
                          build=lambda _s: ScriptedProbe(), record_firings=True)
    async with scheduler:
        await asyncio.sleep(1.25)
    runs = [e.runs for e in scheduler.probes.values()]
    assert all(4 <= r <= 7 for r in runs), runs
    assert len(results) == sum(runs)
    assert {r.probe for r in results} == {"p0", "p1", "p2"}
    assert all(r.success and r.interval_ms == 200 and r.timestamp_ms > 0 for r in results)
    for entry in scheduler.probes.values():  # no drift: firings stay an interval apart
        gaps = [b - a for a, b in zip(entry.fired_at, entry.fired_at[1:], strict=False)]
        assert all(0.1 < g < 0.4 for g in gaps), gaps


async def test_a_failure_is_confirmed_by_one_reprobe():
    results = []
    spec = specs(1, interval="10s", timeout="1s", extra=", confirm_delay: 50ms")
    probe = ScriptedProbe([False, False, True])
    scheduler = Scheduler(spec, sink=results.append, build=lambda _s: probe)
    async with scheduler:
        await scheduler.run_now("p0")
        await scheduler.run_now("p0")
    # first run: failure (unconfirmed), re-probe: failure (confirmed); then a success
    assert [(r.success, r.confirmed, r.reason) for r in results] == [
        (False, False, "connect_refused"), (False, True, "connect_refused"), (True, False, "")]
    assert probe.calls == 3


async def test_a_failure_that_recovers_on_reprobe_is_not_confirmed():
    results = []
    scheduler = Scheduler(specs(1, extra=", confirm_delay: 10ms"), sink=results.append,
                          build=lambda _s: ScriptedProbe([False, True]))
    async with scheduler:
        await scheduler.run_now("p0")
    assert [(r.success, r.confirmed) for r in results] == [(False, False), (True, False)]


async def test_confirmation_can_be_turned_off():
    results = []
    scheduler = Scheduler(specs(1), sink=results.append, confirm_failures=False,
                          build=lambda _s: ScriptedProbe([False]))
    async with scheduler:
        await scheduler.run_now("p0")
    assert [(r.success, r.confirmed) for r in results] == [(False, False)]


async def test_hard_deadline_reports_timeout_and_phase():
    results = []
    scheduler = Scheduler(specs(1, timeout="100ms"), sink=results.append,
                          confirm_failures=False, build=lambda _s: ScriptedProbe([30.0]))
    async with scheduler:
        await scheduler.run_now("p0")
    [result] = results
    assert (result.success, result.reason) == (False, "connect_timeout")
    assert result.failed_phase == 7  # PHASE_TIMEOUT
    assert result.timeout_phase == 2  # PHASE_CONNECT


async def test_concurrency_is_bounded():
    gate = {"now": 0, "max": 0}
    scheduler = Scheduler(specs(20, interval="300ms", timeout="200ms"), sink=lambda _r: None,
                          max_concurrent=3, build=lambda _s: ScriptedProbe([0.1], gate=gate))
    async with scheduler:
        await asyncio.sleep(0.8)
    assert gate["max"] == 3
    assert sum(e.runs for e in scheduler.probes.values()) >= 9


async def test_a_slow_probe_does_not_delay_the_others():
    slow = specs(1, interval="2s", timeout="1900ms")
    fast = specs(3, interval="100ms", timeout="50ms")
    fast = [s.model_copy(update={"name": f"fast{i}"}) for i, s in enumerate(fast)]
    scheduler = Scheduler([*slow, *fast], sink=lambda _r: None,
                          build=lambda spec: ScriptedProbe([1.5] if spec.name == "p0" else [True]))
    async with scheduler:
        await asyncio.sleep(1.0)
    fast_runs = [scheduler.probes[f"fast{i}"].runs for i in range(3)]
    assert all(r >= 6 for r in fast_runs), fast_runs


async def test_a_probe_never_overlaps_itself_and_skips_are_counted():
    registry = CollectorRegistry()
    counters = ProbeCounters(registry)
    # fails, then waits 250ms to confirm: longer than its 100ms interval
    spec = specs(1, interval="100ms", timeout="50ms", extra=", confirm_delay: 250ms")
    probe = ScriptedProbe([False])
    scheduler = Scheduler(spec, sink=lambda _r: None, counters=counters,
                          build=lambda _s: probe)
    async with scheduler:
        await asyncio.sleep(0.7)
    entry = scheduler.probes["p0"]
    assert entry.skipped >= 2
    assert registry.get_sample_value("probenet_agent_probe_runs_skipped_total",
                                     {"kind": "tcp"}) == entry.skipped
    assert registry.get_sample_value("probenet_agent_probe_failures_total", {
        "kind": "tcp", "phase": "connect", "reason": "connect_refused"}) == probe.calls


async def test_reload_keeps_unchanged_probes_on_their_schedule():
    old = specs(3, interval="10s", timeout="1s")
    scheduler = Scheduler(old, sink=lambda _r: None, build=lambda _s: ScriptedProbe())
    async with scheduler:
        before = {name: (e, e.due, e.handle) for name, e in scheduler.probes.items()}
        changed = old[1].model_copy(update={"interval": 5.0})
        added = old[0].model_copy(update={"name": "p9"})
        counts = scheduler.update([old[0], changed, added])
        after = scheduler.probes
        assert counts == {"kept": 1, "changed": 1, "added": 1, "removed": 1}
        assert after["p0"] is before["p0"][0]
        assert (after["p0"].due, after["p0"].handle) == before["p0"][1:]
        assert after["p1"] is not before["p1"][0]
        assert after["p1"].spec.interval == 5.0
        assert before["p1"][0].removed
        assert before["p2"][0].removed
        assert before["p2"][2].cancelled()
        assert set(after) == {"p0", "p1", "p9"}


async def test_real_tcp_probes_through_the_scheduler():
    results = []
    async with TcpTarget("accept") as tcp:
        up = specs(1, interval="200ms", timeout="150ms", target=tcp.address)
        down = specs(1, interval="200ms", timeout="150ms", target=f"127.0.0.1:{closed_port()}",
                     extra=", confirm_delay: 20ms")
        down = [down[0].model_copy(update={"name": "down"})]
        async with Scheduler([*up, *down], sink=results.append, source_address="127.0.0.2"):
            await asyncio.sleep(0.7)
    ups = [r for r in results if r.probe == "p0"]
    downs = [r for r in results if r.probe == "down"]
    assert ups
    assert all(r.success for r in ups)
    assert "127.0.0.2" in tcp.peers
    assert {r.confirmed for r in downs} == {False, True}
    assert all(r.reason == "connect_refused" for r in downs)


async def test_entering_twice_is_an_error_and_leaving_is_idempotent():
    from probenet.agent.errors import LifecycleError  # noqa: PLC0415

    scheduler = Scheduler(specs(1), sink=lambda _r: None, build=lambda _s: ScriptedProbe())
    async with scheduler:
        try:
            await scheduler.__aenter__()
        except LifecycleError:
            pass
        else:
            raise AssertionError("entered twice")
    await scheduler.__aexit__(None, None, None)
    assert all(e.handle is None for e in scheduler.probes.values())


async def test_reload_rebuilds_a_flow_whose_secret_file_was_rotated(tmp_path):
    """Same config, new password in the secret file: the reload takes the new value."""
    secret = tmp_path / "password"
    secret.write_text("first\n")
    flow = parse_config(f"""
agent: {{id: a, region: r}}
collectors: [{{address: "127.0.0.1:1"}}]
probes:
  - name: login
    kind: flow
    target: http://127.0.0.1:9/
    interval: 10s
    flow:
      secrets: {{password: {{file: "{secret}"}}}}
      steps: [{{name: login, request: {{url: /login, method: POST, body: "${{password}}"}}}}]
""").probes
    scheduler = Scheduler(flow, sink=lambda _r: None)
    async with scheduler:
        first = scheduler.probes["login"]
        assert scheduler.update(flow) == {"kept": 1, "changed": 0, "added": 0, "removed": 0}
        assert scheduler.probes["login"] is first
        secret.write_text("second\n")
        assert scheduler.update(flow) == {"kept": 0, "changed": 1, "added": 0, "removed": 0}
        rebuilt = scheduler.probes["login"].probe
        assert rebuilt is not first.probe
        assert rebuilt.values["password"] == "second"  # type: ignore[attr-defined]
