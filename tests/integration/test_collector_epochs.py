"""Epoch and seq rules that cannot be poisoned, over the real gRPC ingest: implausible epochs
and seq jumps are refused and counted, a token holder cannot displace a live agent, an
older epoch gets back in after the agent has been away, and `probenet reset-agent`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from probenet.collector.config import load_config, parse_config
from probenet.collector.server import CollectorService
from support.collector_client import (
    ManualClock,
    StreamEndedError,
    TestAgent,
    applied,
    collector_yaml,
    rejections,
)

S = grpc.StatusCode
ROOT = Path(__file__).resolve().parents[2]
U64_MAX = 2**64 - 1
TOKEN = "s3cret-fra"


def config_text(tmp_path, limits: str = "") -> str:
    """A collector with a registry (fra-1 needs a token) and the given `limits`."""
    (tmp_path / "fra-1.token").write_text(TOKEN + "\n")
    extra = (f"agents:\n  - {{id: fra-1, region: eu, token_file: {tmp_path / 'fra-1.token'}}}\n"
             f"limits: {{{limits}}}\n")
    return collector_yaml(str(tmp_path / "journal.db"), extra=extra)


def service_for(tmp_path, limits: str = "") -> CollectorService:
    return CollectorService(parse_config(config_text(tmp_path, limits)), clock=ManualClock())


def agent(service: CollectorService, **kwargs) -> TestAgent:
    return TestAgent(service.grpc_address, "fra-1", "eu", token=TOKEN, **kwargs)


async def refused(service: CollectorService, **kwargs) -> StreamEndedError:
    with pytest.raises(StreamEndedError) as ended:
        async with agent(service, **kwargs):
            pass
    return ended.value


async def enter_when_allowed(service: CollectorService, *, epoch: int,
                             refusal: grpc.StatusCode) -> TestAgent:
    """Say Hello with `epoch` until the collector lets it in; any refusal must be `refusal`."""
    async with asyncio.timeout(10):
        while True:
            try:
                return await agent(service, epoch=epoch).__aenter__()
            except StreamEndedError as exc:
                if exc.code is not refusal:
                    raise
            await asyncio.sleep(0.05)


def stored_watermarks(service: CollectorService) -> dict[str, tuple[int, int]]:
    service.flush_watermarks()
    return service.journal.watermarks()


# -- epochs ----------------------------------------------------------------------------------


async def test_an_epoch_from_the_future_is_refused_stored_nowhere_and_the_agent_keeps_working(
        tmp_path):
    async with service_for(tmp_path) as service:
        for epoch in (U64_MAX - 1, time.time_ns() + 600 * 10**9):  # skew allowance: 5 min
            ended = await refused(service, epoch=epoch)
            assert ended.code is S.INVALID_ARGUMENT
            assert "limits.max_epoch_skew" in (ended.details or "")
        assert rejections(service, "bad_epoch") == 2
        assert "fra-1" not in stored_watermarks(service)

        # The real agent, whose clock runs a minute ahead (within the allowance), gets in.
        epoch = time.time_ns() + 60 * 10**9
        async with agent(service, epoch=epoch) as real:
            assert real.welcome.acked_seq == 0
            assert (await real.send(real.results(["web", "api"]))).acked_seq == 2
        assert stored_watermarks(service)["fra-1"] == (epoch, 2)


async def test_an_older_epoch_is_refused_while_the_agent_streams_and_accepted_once_it_is_away(
        tmp_path):
    # A token holder streamed a newer epoch; the real agent's (its clock is behind) is older.
    async with service_for(tmp_path, "epoch_rollback_after: 300ms") as service:
        newer = time.time_ns()
        older = newer - 3600 * 10**9
        async with agent(service, epoch=newer) as intruder:
            await intruder.send([intruder.result("web")])
            ended = await refused(service, epoch=older)
            assert ended.code is S.FAILED_PRECONDITION
            assert rejections(service, "stale_epoch") == 1

        # Once no stream of the agent has been live for epoch_rollback_after, the older epoch
        # is taken as a restart after a clock step: the watermark restarts at it.
        real = await enter_when_allowed(service, epoch=older, refusal=S.FAILED_PRECONDITION)
        try:
            assert real.welcome.acked_seq == 0
            assert (await real.send(real.results(["web", "api"]))).acked_seq == 2
        finally:
            await real.close()
        assert stored_watermarks(service)["fra-1"] == (older, 2)


# -- sequence numbers ------------------------------------------------------------------------


async def test_a_seq_jump_is_rejected_and_counted_and_later_seqs_are_applied(tmp_path):
    async with service_for(tmp_path) as service, agent(service) as real:
        assert (await real.send([real.result("web")])).acked_seq == 1
        # 2^64-1 (and 2^63) cannot have been numbered since the epoch began: dropped,
        # acknowledged, and the watermark stays where it was.
        ack = await real.send([real.result("web", seq=U64_MAX)])
        assert ack.acked_seq == 1
        assert rejections(service, "seq_jump") == 1
        ack = await real.send([real.result("web", seq=2), real.result("api", seq=2**63),
                               real.result("api", seq=3)])
        assert ack.acked_seq == 3
        assert rejections(service, "seq_jump") == 2
        real.next_seq = 4
        assert (await real.send(real.results(["web", "api"]))).acked_seq == 5
        assert applied(service) == 5
        assert stored_watermarks(service)["fra-1"][1] == 5


async def test_the_seq_bound_follows_the_time_since_the_epoch(tmp_path):
    # 10 results/s and no skew allowance: an agent that started 100 s ago has numbered at
    # most ~1,000 results.
    limits = "max_agent_results_per_second: 10, max_epoch_skew: 0s"
    epoch = time.time_ns() - 100 * 10**9
    async with service_for(tmp_path, limits) as service, agent(service, epoch=epoch) as real:
        assert (await real.send([real.result("web", seq=900)])).acked_seq == 900
        assert (await real.send([real.result("web", seq=5000)])).acked_seq == 900
        assert rejections(service, "seq_jump") == 1


# -- one live stream per agent ---------------------------------------------------------------


async def test_a_token_holder_with_another_epoch_cannot_displace_the_live_agent(tmp_path):
    async with service_for(tmp_path) as service, agent(service) as real:
        await real.send([real.result("web")])
        ended = await refused(service, epoch=real.epoch + 1)
        assert ended.code is S.ALREADY_EXISTS
        assert "limits.stream_takeover_after" in (ended.details or "")
        assert rejections(service, "agent_already_connected") == 1
        # The live stream is untouched, and its watermark too.
        assert (await real.send([real.result("web")])).acked_seq == 2
        assert stored_watermarks(service)["fra-1"] == (real.epoch, 2)


async def test_a_silent_live_stream_is_taken_over_by_a_new_epoch(tmp_path):
    # The agent restarted (a new epoch) while its old connection is half-open: the dead
    # stream sends nothing, so after stream_takeover_after the new one replaces it.
    async with service_for(tmp_path, "stream_takeover_after: 300ms") as service, \
            agent(service) as old:
        await old.send([old.result("web")])

        new = await enter_when_allowed(service, epoch=old.epoch + 1, refusal=S.ALREADY_EXISTS)
        try:
            code, details = await old.status()
            assert code is S.ABORTED
            assert "replaced" in details
            assert (await new.send([new.result("web")])).acked_seq == 1
        finally:
            await new.close()


async def test_with_mtls_the_certificate_holder_replaces_the_live_stream_at_once(tmp_path):
    # The certificate binds the agent id: a new run of the agent (another epoch) need not
    # wait for its half-open old stream, and a holder of the wrong certificate gets nowhere.
    from support.certs import TestCA  # noqa: PLC0415 - only this test needs cryptography

    ca = TestCA(tmp_path / "pki")
    server = ca.issue("localhost", "127.0.0.1")
    config = parse_config(collector_yaml(str(tmp_path / "journal.db"), extra=(
        f"tls: {{cert_file: {server.cert_file}, key_file: {server.key_file}, "
        f"client_ca_file: {ca.ca_file}}}\n"
        "agents: [{id: fra-1, region: eu}, {id: iad-1, region: us}]\n")))

    def creds(name: str) -> grpc.ChannelCredentials:
        cert = ca.issue(name, client=True)
        return grpc.ssl_channel_credentials(root_certificates=ca.ca_pem,
                                            private_key=cert.key_pem,
                                            certificate_chain=cert.cert_pem)

    async with CollectorService(config, clock=ManualClock()) as service:
        address = f"localhost:{service.grpc_port}"
        async with TestAgent(address, "fra-1", "eu", credentials=creds("fra-1")) as old:
            await old.send([old.result("web")])
            with pytest.raises(StreamEndedError) as ended:
                async with TestAgent(address, "fra-1", "eu", epoch=old.epoch + 1,
                                     credentials=creds("iad-1")):
                    pass
            assert ended.value.code is S.PERMISSION_DENIED
            async with TestAgent(address, "fra-1", "eu", epoch=old.epoch + 1,
                                 credentials=creds("fra-1")) as new:
                code, details = await old.status()
                assert code is S.ABORTED
                assert "replaced" in details
                assert (await new.send([new.result("web")])).acked_seq == 1
        assert rejections(service, "agent_already_connected") == 0


# -- the operator's reset --------------------------------------------------------------------


def reset_agent(config_path: Path, agent_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from probenet.cli import main; main()", "reset-agent",
         "--config", str(config_path), agent_id],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


async def test_reset_agent_lets_a_locked_out_agent_back_and_waits_for_the_collector_to_stop(
        tmp_path):
    path = tmp_path / "collector.yaml"
    path.write_text(config_text(tmp_path))
    newer = time.time_ns()
    older = newer - 3600 * 10**9
    async with CollectorService(load_config(path), clock=ManualClock()) as service:
        async with agent(service, epoch=newer) as intruder:
            await intruder.send(intruder.results(["web", "api", "db"]))
        assert (await refused(service, epoch=older)).code is S.FAILED_PRECONDITION
        # The collector holds the journal (and the watermark in memory): refused.
        done = await asyncio.to_thread(reset_agent, path, "fra-1")
        assert done.returncode == 1, done
        assert "in use by a running collector" in done.stderr

    done = await asyncio.to_thread(reset_agent, path, "fra-1")
    assert done.returncode == 0, done
    assert done.stdout.strip() == (f"fra-1: watermark (epoch {newer}, seq 3) removed from "
                                   f"{tmp_path / 'journal.db'}; its next stream starts afresh")
    done = await asyncio.to_thread(reset_agent, path, "fra-1")
    assert done.returncode == 0, done
    assert "nothing to reset" in done.stdout

    # Restarted, the collector lets the older epoch in at once (no rollback wait).
    async with CollectorService(load_config(path), clock=ManualClock()) as service, \
            agent(service, epoch=older) as real:
        assert real.welcome.acked_seq == 0
        assert (await real.send([real.result("web")])).acked_seq == 1


def test_reset_agent_without_a_journal_exits_1(tmp_path):
    path = tmp_path / "collector.yaml"
    path.write_text(config_text(tmp_path))
    done = reset_agent(path, "fra-1")
    assert done.returncode == 1
    assert done.stderr.strip() == (f"{tmp_path / 'journal.db'}: no journal here "
                                   "(journal.path): nothing to reset")
