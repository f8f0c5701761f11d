"""Child processes for tests: a real `probenet` command, its output in a log file.

    async with ChildProcess("agent", [*prefix, *probenet_command(), "agent", "--config", p],
                            tmp_path / "agent.log") as agent:
        agent.check_alive()                # AssertionError with the log's tail if it exited
        agent.send_signal(signal.SIGHUP)
    # leaving: SIGTERM, then SIGKILL after `stop_grace_s`

Each child runs in a session of its own (a Ctrl-C in the terminal reaches pytest only), and
`PROBENET_DEMO_PARENT` makes probenet's child entry point exit when the test process is not
its parent any more (probenet.lab.fleet.CHILD_MAIN), so no agent outlives its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import TYPE_CHECKING, Self

from probenet.lab.fleet import log_tail

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ChildProcess"]


class ChildProcess:
    """One child process (async context manager): started on enter, stopped on exit."""

    def __init__(self, name: str, argv: list[str], log_path: Path, *,
                 stop_grace_s: float = 10.0) -> None:
        """Nothing starts until the context is entered."""
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.stop_grace_s = stop_grace_s
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, None while it runs."""
        return None if self.process is None else self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the child's output."""
        return log_tail(self.log_path, lines)

    def check_alive(self) -> None:
        """AssertionError, with the tail of its log, when the child has exited."""
        assert self.process is not None, f"{self.name} was not started"
        code = self.process.returncode
        assert code is None, f"{self.name} exited with status {code}:\n{self.log_tail()}"

    def send_signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the child."""
        self.check_alive()
        assert self.process is not None
        self.process.send_signal(sig)

    async def __aenter__(self) -> Self:
        """Start the child."""
        env = dict(os.environ, PROBENET_DEMO_PARENT=str(os.getpid()), PYTHONUNBUFFERED="1")
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
                stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop the child (idempotent)."""
        await self.stop()

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Send `sig`, wait `stop_grace_s`, then SIGKILL; return the exit status."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                async with asyncio.timeout(self.stop_grace_s):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        return process.returncode
