"""`probenet collector` as a child process on fixed loopback ports (restart and kill tests)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from support.collector_client import collector_yaml, http_get
from support.system import ROOT, free_port

if TYPE_CHECKING:
    from pathlib import Path


class CollectorProcess:
    """`probenet collector --config F` as a child process on fixed loopback ports."""

    def __init__(self, tmp_path: Path, extra: str = "") -> None:
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.config = tmp_path / "collector.yaml"
        self.config.write_text(collector_yaml(
            str(tmp_path / "journal.db"), grpc_listen=f"127.0.0.1:{self.grpc_port}",
            http_listen=f"127.0.0.1:{self.http_port}", extra=extra))
        self.log = tmp_path / "collector.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from probenet.cli import main; main()",
                 "collector", "--config", str(self.config)],
                cwd=ROOT, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                status, _, _ = await http_get(self.url + "/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError("collector not ready in 60 s:\n" + self.log.read_text())

    async def wait(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
