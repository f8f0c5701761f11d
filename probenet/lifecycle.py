"""How every probenet process and long-lived component starts and stops (agent, collector, lab).

- `StopSignals`: the signal policy of a process that runs until told to stop, as uvicorn's:
  the first SIGINT/SIGTERM only sets an event (the process drains, then cancels); a second
  one exits at once with the process's forced status. Each is logged once.
- `EnterOnce`: the guard each long-lived async context manager holds (scheduler, stream,
  servers, fleet, ...): entering twice raises "<Component> entered twice"; leaving is
  idempotent.
- `abandoned_on`: a stop event that cancels a long start (the demo's and the soak's fleet).
- `LifecycleError`: what the guard raises. Each package's own exception tree has a
  `LifecycleError` that subclasses it, so callers catch the package's error as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Literal, Self

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from types import TracebackType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# `timeout`, shells and supervisors may deliver one stop twice in a row (to the process and
# to its group): a repeat this soon after the first is the same request, not a second one.
DUPLICATE_SIGNAL_S = 0.5


class LifecycleError(Exception):
    """A long-lived component was entered twice, or used outside its context.

    `component` names it (a class name, e.g. "Scheduler"); `problem` says what went wrong.
    """

    def __init__(self, component: str, problem: str = "entered twice") -> None:
        """The message is "<component> <problem>", e.g. "Fleet entered twice"."""
        super().__init__(f"{component} {problem}")
        self.component = component
        self.problem = problem


class EnterOnce:
    """The enter-once, leave-once guard of a long-lived async context manager.

        async def __aenter__(self) -> Self:
            self._lifecycle.enter()        # a second time: "Scheduler entered twice"
            ...

        async def __aexit__(self, *exc_info: object) -> None:
            if not self._lifecycle.leave():
                return                     # never entered, or left already
            ...

    `error` is the package's own subclass of `LifecycleError`.
    """

    __slots__ = ("_error", "_state", "component")

    def __init__(self, component: str, error: type[LifecycleError] = LifecycleError) -> None:
        """`component` names the guarded object in the error message."""
        self.component = component
        self._error = error
        self._state: Literal["new", "running", "left"] = "new"

    @property
    def running(self) -> bool:
        """True between `enter()` and `leave()`."""
        return self._state == "running"

    def enter(self) -> None:
        """Mark the component entered; raise `error` if it was entered before."""
        if self._state != "new":
            raise self._error(self.component)
        self._state = "running"

    def leave(self) -> bool:
        """Mark the component left: True the first time after `enter()`, else False."""
        if self._state != "running":
            return False
        self._state = "left"
        return True

    def check_running(self) -> None:
        """Raise `error` unless the component is entered and not left yet."""
        if self._state != "running":
            raise self._error(self.component, "used outside its context")


class StopSignals:
    """The SIGINT/SIGTERM policy of a process that runs until told to stop.

        with StopSignals(log, forced_status=1) as signals:
            async with Service() as service:
                await signals.stop.wait()
                await service.drain()

    Entered inside the running loop, it installs the handlers there and removes them on
    exit. The first signal logs `stop_message` once and sets `stop`; the process then drains
    and cancels what is left. A second signal (not a repeat of the first within
    `DUPLICATE_SIGNAL_S`) logs once and ends the process at once with `forced_status`
    (`os._exit`: nothing more runs, so a drain that hangs cannot hold the process).
    `handlers` adds other signals, e.g. `{signal.SIGHUP: reload.set}`.

    Signals can be handled only in the main thread; elsewhere nothing is installed (as in
    uvicorn) and `stop` is set only by whoever else holds it.
    """

    def __init__(self, log: logging.Logger, *, stop_message: str = "stop requested",
                 forced_status: int = 1, stop: asyncio.Event | None = None,
                 handlers: Mapping[signal.Signals, Callable[[], object]] | None = None) -> None:
        """`log` is the process's own logger; `stop` may be shared with other stoppers."""
        self.stop = stop if stop is not None else asyncio.Event()
        self.received: signal.Signals | None = None
        self._log = log
        self._stop_message = stop_message
        self._forced_status = forced_status
        self._handlers = dict(handlers or {})
        self._loop: asyncio.AbstractEventLoop | None = None
        self._first_at = 0.0

    def __enter__(self) -> Self:
        """Install the handlers on the running loop."""
        if threading.current_thread() is not threading.main_thread():
            return self
        loop = asyncio.get_running_loop()
        self._loop = loop
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_stop, signum)
        for signum, handler in self._handlers.items():
            loop.add_signal_handler(signum, handler)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """Remove the handlers (the signals' default actions apply again)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        for signum in (*STOP_SIGNALS, *self._handlers):
            loop.remove_signal_handler(signum)

    def _on_stop(self, signum: signal.Signals) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if self.received is None:
            self.received = signum
            self._first_at = now
            self._log.info(self._stop_message, extra={"signal": signum.name})
            self.stop.set()
            return
        if now - self._first_at < DUPLICATE_SIGNAL_S:
            return
        self._log.warning("second signal: exiting at once",
                          extra={"signal": signum.name, "status": self._forced_status})
        _flush_output()
        os._exit(self._forced_status)


def _flush_output() -> None:
    """Write out what the logs and the terminal hold before the process ends abruptly."""
    handlers = [*logging.getLogger().handlers]
    for handler in handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()


@contextlib.contextmanager
def abandoned_on(stop: asyncio.Event) -> Iterator[None]:
    """While inside, `stop` cancels the current task (a start is abandoned, not finished).

    For a start that can take long (a fleet coming up) and must end at once on a stop
    signal: the cancellation unwinds whatever was started so far.
    """
    task = asyncio.current_task()

    async def cancel_on_stop() -> None:
        await stop.wait()
        if task is not None:
            task.cancel()

    watcher = asyncio.ensure_future(cancel_on_stop())
    try:
        yield
    finally:
        watcher.cancel()
