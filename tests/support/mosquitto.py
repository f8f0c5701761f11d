"""A real Mosquitto broker for tests: started from its Debian binary on a free loopback port.

    from .mosquitto import collect_messages, start_broker, subscribed
    # the `mosquitto_broker` fixture is registered by tests/conftest.py

    @pytest.fixture
    def broker(mosquitto_broker):                   # or start_broker(tmp_path / "m", ...)
        return mosquitto_broker

    async def test_x(broker):
        url = broker.url                            # mqtt://127.0.0.1:PORT
        async with subscribed(broker, "t/#") as sub:
            ...
            got = await collect_messages(sub, count=3, timeout_s=20)
        await broker.stop_async()                   # the code under test keeps running
        await broker.start_async()                  # same port again, a fresh broker

Each broker writes its generated config, its log and (with `persistent=True`) its database
in its own directory; the log tail is part of every start failure. Readiness is a real MQTT
CONNECT answered by a CONNACK. `need_binary` skips on a laptop without mosquitto and fails
when CI=true. Restarting reuses the port; should another process take it in between, the
start fails with the broker's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiomqtt
import pytest

from .system import free_port, need_binary

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

# A minimal MQTT 3.1.1 CONNECT (client id "ready-check", clean session, keepalive 10 s).
# Any CONNACK answers readiness (a broker requiring a password answers "not authorised"):
# proof that the broker speaks MQTT, not only that its port is open.
_CONNECT = bytes.fromhex("101700044d5154540402000a000b72656164792d636865636b")
_CONNACK_HEADER = bytes.fromhex("2002")


def _mqtt_handshake(host: str, port: int, timeout_s: float) -> bool:
    """True when a broker at host:port answers an MQTT CONNECT with a CONNACK."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(_CONNECT)
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    return False
                reply += chunk
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")  # DISCONNECT
            return reply.startswith(_CONNACK_HEADER)
    except OSError:
        return False


@dataclass(frozen=True)
class BrokerTls:
    """A second, TLS listener: the broker's certificate chain and key, and optionally a CA
    whose client certificates it requires.
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass
class MosquittoBroker:
    """One Mosquitto process on 127.0.0.1:`port` (plain MQTT), restartable on the same port.

    `persistent` keeps retained messages and persistent sessions across a restart (saved on a
    clean stop); `password_file` (made by `write_password_file`) turns anonymous access off;
    `tls` adds a TLS listener on `tls_port`; `extra_config` is appended to mosquitto.conf.
    """

    binary: str
    workdir: Path
    port: int = 0
    host: str = "127.0.0.1"
    persistent: bool = False
    password_file: Path | None = None
    tls: BrokerTls | None = None
    tls_port: int = 0
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0

    @property
    def url(self) -> str:
        """`mqtt://host:port` of the plain listener."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        """`mqtts://host:tls_port` of the TLS listener."""
        return f"mqtts://{self.host}:{self.tls_port}"

    @property
    def config_path(self) -> Path:
        """The generated configuration file."""
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        """The broker's log file (written line by line, unlike its buffered stdout)."""
        return self.workdir / "mosquitto.log"

    @property
    def output_path(self) -> Path:
        """The broker's stdout and stderr (errors before the log file is open)."""
        return self.workdir / "mosquitto.out"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the broker's log, for failure messages."""
        text = ""
        for path in (self.output_path, self.log_path):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(no log)"

    def _write_config(self) -> None:
        user = pwd.getpwuid(os.geteuid()).pw_name
        lines = [
            # Started as root, mosquitto would switch to the `mosquitto` user and lose
            # access to files in tmp_path; stay who we are.
            f"user {user}",
            "per_listener_settings false",
            f"persistence {'true' if self.persistent else 'false'}",
            f"persistence_location {self.workdir}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"allow_anonymous {'false' if self.password_file else 'true'}",
        ]
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        lines.append(f"listener {self.port} {self.host}")
        if self.tls is not None:
            lines += [f"listener {self.tls_port} {self.host}",
                      f"certfile {self.tls.cert_file}", f"keyfile {self.tls.key_file}"]
            if self.tls.client_ca_file is not None:
                lines += [f"cafile {self.tls.client_ca_file}", "require_certificate true"]
        lines += [self.extra_config, ""]
        self.config_path.write_text("\n".join(lines))

    def _ready(self) -> bool:
        return _mqtt_handshake(self.host, self.port, timeout_s=2.0)

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the broker and wait until it accepts MQTT connections.

        The first start picks a free port (retrying if another process takes it first);
        later starts reuse that port so clients can reconnect to the same address.
        """
        if self.running:
            raise RuntimeError("mosquitto is already running")
        pick_port = self.starts == 0 and self.port == 0
        attempts = 3 if pick_port else 1
        for attempt in range(1, attempts + 1):
            if pick_port:
                self.port = free_port(self.host)
                if self.tls is not None:
                    self.tls_port = free_port(self.host)
            self._write_config()
            with self.output_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [self.binary, "-c", str(self.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                if self._ready():
                    self.starts += 1
                    return
                time.sleep(0.05)
            failed_early = self.process.poll() is not None
            self._kill()
            if not failed_early or attempt == attempts:
                break
        raise RuntimeError(
            f"mosquitto did not become ready on {self.host}:{self.port} within {timeout_s}s;"
            f" log:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after `timeout_s`); idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    async def start_async(self, timeout_s: float = 20.0) -> None:
        """`start` without blocking the event loop (the code under test keeps running)."""
        await asyncio.to_thread(self.start, timeout_s)

    async def stop_async(self, timeout_s: float = 10.0) -> None:
        """`stop` without blocking the event loop."""
        await asyncio.to_thread(self.stop, timeout_s)


def start_broker(workdir: Path, *, persistent: bool = False, password_file: Path | None = None,
                 tls: BrokerTls | None = None, extra_config: str = "") -> MosquittoBroker:
    """A started broker in `workdir` (skips on a laptop without mosquitto, fails in CI)."""
    binary = need_binary("mosquitto", "mosquitto")
    workdir.mkdir(parents=True, exist_ok=True)
    broker = MosquittoBroker(binary=binary, workdir=workdir, persistent=persistent,
                             password_file=password_file, tls=tls, extra_config=extra_config)
    broker.start()
    return broker


def write_password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file for `users` (name -> password), via mosquitto_passwd."""
    binary = need_binary("mosquitto_passwd", "mosquitto")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    for user, password in users.items():
        subprocess.run([binary, "-b", str(path), user, password], check=True,
                       capture_output=True, timeout=30)
    return path


@pytest.fixture(name="mosquitto_broker")
def mosquitto_broker_fixture(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running anonymous broker on a free loopback port, stopped after the test."""
    broker = start_broker(tmp_path / "mosquitto")
    try:
        yield broker
    finally:
        broker.stop()


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as a subscriber saw it."""

    topic: str
    payload: bytes
    retain: bool
    qos: int


@contextlib.asynccontextmanager
async def subscribed(
    broker: MosquittoBroker, topic_filter: str, *, qos: int = 1,
    identifier: str | None = None, clean_session: bool | None = None,
    username: str | None = None, password: str | None = None, timeout_s: float = 10.0,
) -> AsyncIterator[aiomqtt.Client]:
    """A separate aiomqtt client on `broker`, subscribed to `topic_filter` (SUBACK received).

    With `identifier` and `clean_session=False` the broker keeps the subscription and queues
    QoS 1 messages while the client is away (across a restart of a `persistent` broker).
    """
    client = aiomqtt.Client(broker.host, broker.port, identifier=identifier,
                            clean_session=clean_session, username=username,
                            password=password, timeout=timeout_s)
    async with client:
        await client.subscribe(topic_filter, qos=qos, timeout=timeout_s)
        yield client


async def collect_messages(
    client: aiomqtt.Client, *, count: int | None = None,
    until: Callable[[list[ReceivedMessage]], bool] | None = None,
    timeout_s: float = 20.0, quiet_s: float | None = None,
) -> list[ReceivedMessage]:
    """Messages arriving on `client`, until `count` arrived, `until(received)` holds,
    nothing arrived for `quiet_s`, or `timeout_s` passed (then whatever arrived is returned;
    the caller's assertions say what was missing).
    """
    received: list[ReceivedMessage] = []
    deadline = time.monotonic() + timeout_s

    def done() -> bool:
        if count is not None and len(received) >= count:
            return True
        return until is not None and until(received)

    iterator = client.messages.__aiter__()
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        wait_s = remaining if quiet_s is None else min(remaining, quiet_s)
        try:
            async with asyncio.timeout(wait_s):
                message = await iterator.__anext__()
        except TimeoutError:
            if quiet_s is not None:
                break
            continue
        payload = message.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = str(payload).encode() if payload is not None else b""
        received.append(ReceivedMessage(
            topic=message.topic.value, payload=bytes(payload),
            retain=bool(message.retain), qos=int(message.qos),
        ))
    return received
