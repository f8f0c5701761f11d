"""`probenet demo` as a user runs it: one full cycle in --no-ui mode, and the live table in a
real terminal (tmux), both as child processes of the test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from probenet.demo.scenario import (
    AGENTS,
    BANK_PROBES,
    BROKEN_AGENT,
    REGIONAL_OUTAGE_REGION,
    SOCIAL_LOGIN,
    SOCIAL_PROBES,
    demo_phases,
    demo_schedule,
)
from support.system import ROOT, free_port, need_binary

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-c", "from probenet.cli import main; main()", "demo"]
ALL_REGIONS = sorted({a.region for a in AGENTS})


def demo_env() -> dict[str, str]:
    paths = [str(ROOT), str(ROOT / "proto"), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


@pytest.mark.timeout(300)
def test_demo_plays_one_cycle_and_classifies_each_fault():
    interval_s = 0.5
    cycle_s = demo_schedule(interval_s).cycle_seconds
    port = free_port()
    result = subprocess.run(
        [*DEMO, "--no-ui", "--interval", "500ms", "--duration", f"{cycle_s + 1:g}s",
         "--port", str(port)],
        capture_output=True, text=True, timeout=240, env=demo_env(), cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stdout = result.stdout
    assert f"http://127.0.0.1:{port}/status" in stdout
    assert f"http://127.0.0.1:{port}/metrics" in stdout
    assert f"http://127.0.0.1:{port}/api/v1/targets" in stdout
    phases = demo_phases()
    for index, phase in enumerate(phases, start=1):
        assert f"phase {index}/{len(phases)}: {phase.title}" in result.stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["phases_played"][:len(phases)] == [p.name for p in phases]

    outages = summary["outages"]
    by_probe = {o["probe"]: o for o in outages if o["kind"] == "probe"}
    # The global outage: each social probe, global, from every region, failing at one phase.
    for probe in SOCIAL_PROBES:
        record = by_probe[probe]
        assert record["peak_scope"] == "global", record
        assert sorted(record["regions_ever"]) == ALL_REGIONS, record
        assert record["ended_at"] is not None, record
    assert len({by_probe[p]["phase"] for p in SOCIAL_PROBES}) == 1
    social = [o for o in outages if o["kind"] == "service" and o["service"] == "social"]
    assert len(social) == 1
    assert social[0]["peak_scope"] == "global"
    assert set(social[0]["probes"]) == {*SOCIAL_PROBES, SOCIAL_LOGIN}
    # The login outage (the seed's): pages up, every login refused. The flow probe's own
    # record says global, from every region, failing at step `login`; in the global outage
    # before it, its record failed at `home` (the whole service answered 503).
    login = sorted((o for o in outages if o["kind"] == "probe" and o["probe"] == SOCIAL_LOGIN),
                   key=lambda o: o["started_at"])
    assert [o["step"] for o in login] == ["home", "login"], login
    assert login[1]["peak_scope"] == "global", login
    assert sorted(login[1]["regions_ever"]) == ALL_REGIONS, login
    assert login[1]["phase"] == "validation", login
    assert all(o["step"] is None for o in outages if o["probe"] in SOCIAL_PROBES)
    # The log line of the login outage (structured logs: stderr under --no-ui).
    opened = [line for line in result.stderr.splitlines()
              if "outage opened: probe social-login, global" in line and "at step login" in line]
    assert opened, result.stderr[-3000:]
    assert "social's pages still up (" in opened[0], opened
    # The regional outage: bank, from ap-south only.
    for probe in BANK_PROBES:
        record = by_probe[probe]
        assert record["peak_scope"] == "regional", record
        assert record["regions_ever"] == [REGIONAL_OUTAGE_REGION], record
    # The broken agent: impaired, and nothing else was.
    assert summary["impaired_agents"] == [{"id": BROKEN_AGENT, "region": "eu-central"}]
    # No other outage: only the social and bank probes, and their service records.
    expected = {*SOCIAL_PROBES, SOCIAL_LOGIN, *BANK_PROBES}
    unexpected = [o for o in outages
                  if not (o["kind"] == "probe" and o["probe"] in expected)
                  and not (o["kind"] == "service" and o["service"] in {"social", "bank"})]
    assert unexpected == []
    # One record per probe, and two for the login flow (global outage, login outage).
    assert len([o for o in outages if o["kind"] == "probe"]) == len(expected) + 1
    assert "agents impaired: fra-2 (eu-central)" in stdout


def tmux(socket_name: str, *args: str) -> str:
    binary = shutil.which("tmux") or "tmux"
    # The tmux server copies this environment into the pane: pytest's COLUMNS/LINES would
    # make rich lay the table out for the wrong size instead of the pane's.
    env = {k: v for k, v in os.environ.items() if k not in {"COLUMNS", "LINES"}}
    done = subprocess.run([binary, "-L", socket_name, *args], capture_output=True, text=True,
                          timeout=10, check=False, env=env)
    return done.stdout


@pytest.mark.timeout(180)
def test_demo_live_table_in_a_terminal():
    need_binary("tmux", "tmux")
    socket_name = f"probenet-e2e-{uuid.uuid4().hex[:8]}"
    port = free_port()
    interval_s = 0.3
    schedule = demo_schedule(interval_s)
    # Long enough to reach the broken-agent phase (the eighth) and see it impaired.
    names = [p.name for p in schedule.phases]
    duration_s = schedule.phase_seconds * (names.index("agent_impaired") + 1)
    command = " ".join([
        *(f"'{part}'" for part in DEMO), "--interval", "300ms", "--duration",
        f"{duration_s:g}s", "--port", str(port)])
    env_args = [arg for key, value in demo_env().items() if key in {"PYTHONPATH", "PATH"}
                for arg in ("-e", f"{key}={value}")]
    tmux(socket_name, "new-session", "-d", "-x", "200", "-y", "70", "-s", "demo",
         *env_args, "-c", str(ROOT), f"{command}; echo DEMO-EXIT=$?; sleep 60")
    screens: list[str] = []
    try:
        deadline = time.monotonic() + duration_s + 90
        while time.monotonic() < deadline:
            screen = tmux(socket_name, "capture-pane", "-p", "-t", "demo")
            screens.append(screen)
            if "DEMO-EXIT=" in screen:
                break
            time.sleep(0.3)
    finally:
        tmux(socket_name, "kill-server")
    seen = "\n".join(screens)
    assert "DEMO-EXIT=0" in seen, screens[-1] if screens else "no screen captured"
    assert "targets: probe x region" in seen
    for region in ALL_REGIONS:
        assert region in seen
    # The states the story must have shown in the tables (rows, not the header's phase
    # title, which names the phase and the broken agent too).
    assert any(all(state_of(s, p) == "global_outage" for p in SOCIAL_PROBES) for s in screens), \
        "the table never showed the social probes in global_outage"
    assert any("✖ down" in row for s in screens for row in rows(s, "social-web"))
    assert any(state_of(s, "bank-web") == "regional_outage" for s in screens)
    assert any(row.split("│")[4].strip() == "impaired"
               for s in screens for row in rows(s, BROKEN_AGENT)), \
        "the agents table never showed the broken agent impaired"
    assert "open outages" in seen
    assert any(f"phase 2/{len(names)}" in s for s in screens)
    assert any(state_of(s, SOCIAL_LOGIN) == "global_outage at login" for s in screens), \
        "the table never showed the login flow failing at step login"
    assert f"http://127.0.0.1:{port}/metrics" in seen
    assert f"status page http://127.0.0.1:{port}/status" in seen


def rows(screen: str, first_cell: str) -> list[str]:
    """Table rows of a captured screen whose first cell is `first_cell`."""
    return [line for line in screen.splitlines()
            if line.startswith("│") and line.split("│")[1].strip() == first_cell]


def state_of(screen: str, probe: str) -> str | None:
    """The `state` cell (last column) of `probe`'s row in the targets table."""
    found = [row for row in rows(screen, probe) if row.count("│") >= 8]
    return found[0].split("│")[-2].strip() if found else None


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found.update(int(p) for p in text.split())
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def start_demo(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "demo.out"
    with out.open("w") as stdout, (tmp_path / "demo.err").open("w") as stderr:
        process = subprocess.Popen(
            [*DEMO, "--no-ui", "--interval", "500ms", "--port", str(free_port()), *extra],
            stdout=stdout, stderr=stderr, env=demo_env(), cwd=ROOT)
    deadline = time.monotonic() + 90
    while "fleet up:" not in out.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the demo did not start: {out.read_text()}"
                        f"{(tmp_path / 'demo.err').read_text()[-3000:]}")
        time.sleep(0.1)
    return process, out


@pytest.mark.timeout(180)
def test_demo_ctrl_c_stops_every_child(tmp_path):
    process, out = start_demo(tmp_path)
    try:
        children = children_of(process.pid)
        assert len(children) == len(AGENTS) + 1  # the collector and every agent
        assert all("probenet" in cmdline(pid) for pid in children)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert not [pid for pid in children if "probenet" in cmdline(pid)]
    assert "summary after" in out.read_text()


@pytest.mark.timeout(180)
def test_demo_reports_a_dead_child_and_stops_the_rest(tmp_path):
    process, out = start_demo(tmp_path)
    try:
        children = children_of(process.pid)
        collector = [pid for pid in children if " collector " in cmdline(pid)]
        assert len(collector) == 1
        os.kill(collector[0], signal.SIGKILL)
        assert process.wait(timeout=60) == 1
    finally:
        if process.poll() is None:
            process.kill()
    text = out.read_text()
    assert "probenet demo: collector: exited with status -9" in text
    assert "last lines of collector's log" in text
    assert "gRPC listening" in text  # the log tail itself
    assert not [pid for pid in children if "probenet" in cmdline(pid)]


def test_demo_refuses_a_busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([*DEMO, "--no-ui", "--port", str(port)], capture_output=True,
                                text=True, timeout=60, env=demo_env(), cwd=ROOT, check=False)
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use; pick another with --port" in result.stdout


def test_demo_refuses_bad_options():
    result = subprocess.run([*DEMO, "--interval", "10ms"], capture_output=True, text=True,
                            timeout=60, env=demo_env(), cwd=ROOT, check=False)
    assert result.returncode == 2
    assert "--interval must be between 0.2s and 60s (got 0.01s)" in result.stderr
    result = subprocess.run([*DEMO, "--duration", "soon"], capture_output=True, text=True,
                            timeout=60, env=demo_env(), cwd=ROOT, check=False)
    assert result.returncode == 2
    assert "invalid duration 'soon'" in result.stderr


@pytest.mark.timeout(180)
def test_demo_killed_hard_leaves_no_child_behind(tmp_path):
    process, _ = start_demo(tmp_path)
    children = children_of(process.pid)
    assert len(children) == len(AGENTS) + 1
    process.kill()
    process.wait(timeout=30)
    # The kernel sends each child SIGTERM when the demo dies (PR_SET_PDEATHSIG).
    deadline = time.monotonic() + 60
    while [pid for pid in children if "probenet" in cmdline(pid)]:
        assert time.monotonic() < deadline, "children outlived the demo"
        time.sleep(0.2)
