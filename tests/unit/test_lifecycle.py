"""probenet.lifecycle and probenet.httpserve: real signals, real processes, real sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from probenet import lifecycle
from probenet.agent import errors as agent_errors
from probenet.agent.metrics import MetricsServer
from probenet.agent.scheduler import Scheduler
from probenet.collector import errors as collector_errors
from probenet.httpserve import serve_app
from probenet.lab import errors as lab_errors
from probenet.lab.client import CollectorApi
from probenet.lab.targets import FaultyTargets
from probenet.lifecycle import DUPLICATE_SIGNAL_S, EnterOnce, LifecycleError, StopSignals
from support.system import ROOT

# -- EnterOnce and the error every package shares ------------------------------------------


def test_entering_twice_names_the_component_and_leaving_is_idempotent():
    guard = EnterOnce("Widget")
    assert guard.leave() is False  # never entered: nothing to undo
    guard.enter()
    assert guard.running
    guard.check_running()
    with pytest.raises(LifecycleError, match=r"^Widget entered twice$") as caught:
        guard.enter()
    assert caught.value.component == "Widget"
    assert guard.leave() is True
    assert guard.leave() is False
    with pytest.raises(LifecycleError, match=r"^Widget used outside its context$"):
        guard.check_running()
    with pytest.raises(LifecycleError, match="entered twice"):
        guard.enter()  # a left component is not entered again either


@pytest.mark.parametrize(("package_error", "package_base"), [
    (agent_errors.LifecycleError, agent_errors.AgentError),
    (collector_errors.LifecycleError, collector_errors.CollectorError),
    (lab_errors.LifecycleError, lab_errors.LabError),
])
def test_each_package_raises_its_own_lifecycle_error(package_error, package_base):
    guard = EnterOnce("Widget", package_error)
    guard.enter()
    with pytest.raises(package_error) as caught:
        guard.enter()
    assert isinstance(caught.value, package_base)
    assert isinstance(caught.value, lifecycle.LifecycleError)
    assert str(caught.value) == "Widget entered twice"


def _components():
    registry = CollectorRegistry()
    return [
        ("MetricsServer", agent_errors.LifecycleError,
         lambda: MetricsServer("127.0.0.1:0", registry)),
        ("Scheduler", agent_errors.LifecycleError, lambda: Scheduler([], sink=lambda _r: None)),
        ("CollectorApi", lab_errors.LifecycleError,
         lambda: CollectorApi("http://127.0.0.1:9")),
        ("FaultyTargets", lab_errors.LifecycleError,
         lambda: FaultyTargets(lambda _probe, _peer: None)),
    ]


@pytest.mark.parametrize(("name", "error", "build"), _components(),
                         ids=[c[0] for c in _components()])
async def test_real_components_refuse_a_second_enter_and_leave_once(name, error, build):
    component = build()
    async with component:
        with pytest.raises(error, match=f"^{name} entered twice$"):
            await component.__aenter__()
    await component.__aexit__(None, None, None)  # again: nothing happens
    with pytest.raises(error, match=f"^{name} entered twice$"):
        await component.__aenter__()


# -- StopSignals in this process -----------------------------------------------------------


async def test_first_signal_sets_stop_once_and_the_handlers_go_on_exit(caplog):
    log = logging.getLogger("test.lifecycle")
    reloads = []
    with caplog.at_level(logging.INFO, logger="test.lifecycle"), \
            StopSignals(log, handlers={signal.SIGHUP: lambda: reloads.append(1)}) as signals:
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # else the kill ends us
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(5):
            await signals.stop.wait()
        assert signals.received is signal.SIGTERM
        # the same stop delivered again at once (to the process and its group) counts once
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(0.1)
    assert reloads == [1]
    stops = [r for r in caplog.records if r.name == "test.lifecycle"]
    assert [(r.levelname, r.getMessage(), r.signal) for r in stops] == [
        ("INFO", "stop requested", "SIGTERM")]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


async def test_a_shared_stop_event_is_the_one_set():
    stop = asyncio.Event()
    with StopSignals(logging.getLogger("test.lifecycle"), stop=stop) as signals:
        assert signals.stop is stop
        os.kill(os.getpid(), signal.SIGINT)
        async with asyncio.timeout(5):
            await stop.wait()
    assert signals.received is signal.SIGINT


# -- StopSignals in a real process ---------------------------------------------------------

# Drains for `drain_s` after the first signal, then exits 0; the forced status is 3.
_SERVE = textwrap.dedent("""\
    import asyncio, logging, sys
    from probenet.lifecycle import StopSignals

    async def main(drain_s):
        log = logging.getLogger("child")
        with StopSignals(log, stop_message="draining", forced_status=3) as signals:
            print("ready", flush=True)
            await signals.stop.wait()
            print("drain started", flush=True)
            await asyncio.sleep(drain_s)
        print("drained", flush=True)
        return 0

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(message)s %(signal)s")
    sys.exit(asyncio.run(main(float(sys.argv[1]))))
""")


class Child:
    """The policy in a real child process, its output read line by line."""

    def __init__(self, drain_s: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(drain_s)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.expect("ready")

    def expect(self, line: str) -> None:
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == line

    def finish(self, timeout_s: float) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout_s)
        return self.proc.returncode, out, err


@pytest.fixture
def children():
    started: list[Child] = []

    def start(drain_s: float) -> Child:
        child = Child(drain_s)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait(10)


def test_a_second_signal_ends_a_hanging_drain_at_once_with_the_forced_status(children):
    child = children(60.0)
    child.proc.send_signal(signal.SIGTERM)
    child.expect("drain started")
    time.sleep(DUPLICATE_SIGNAL_S + 0.2)
    sent = time.monotonic()
    child.proc.send_signal(signal.SIGINT)
    code, out, err = child.finish(10)
    assert code == 3, err
    assert time.monotonic() - sent < 5
    assert "drained" not in out
    assert err.splitlines() == ["INFO draining SIGTERM",
                                "WARNING second signal: exiting at once SIGINT"]


def test_one_signal_drains_and_a_repeat_within_the_window_counts_once(children):
    child = children(1.0)
    child.proc.send_signal(signal.SIGINT)
    child.proc.send_signal(signal.SIGINT)  # e.g. to the process and to its group
    code, out, err = child.finish(10)
    assert code == 0, err
    assert out.splitlines() == ["drain started", "drained"]
    assert err.splitlines() == ["INFO draining SIGINT"]


# -- serve_app: a site on a socket we bound --------------------------------------------------


def _hello_app() -> web.Application:
    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
async def test_serve_app_binds_port_0_and_says_which_port(host):
    if host == "::1" and not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    site = await serve_app(_hello_app(), host, 0)
    try:
        assert site.port > 0
        literal = f"[{site.host}]" if ":" in site.host else site.host
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://{literal}:{site.port}/") as response:
            assert await response.text() == "hello"
    finally:
        await site.runner.cleanup()
    with pytest.raises(OSError), socket.create_connection((site.host, site.port), timeout=2):
        pass  # stopped: nothing listens there any more


async def test_serve_app_on_a_busy_port_raises_oserror_and_leaves_nothing_open():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            await serve_app(_hello_app(), "127.0.0.1", port)
