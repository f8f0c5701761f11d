"""The agent's shard of a probe is Prometheus' `hashmod` of its name, checked on a real one.

A real Prometheus (Debian binary, loopback) scrapes one job whose static targets (all on a
closed loopback port, so every scrape fails but `up` is still recorded) carry the label
`probe`; a `hashmod` relabel rule writes `shard`. Each `up` series' shard must equal
`probenet.sharding.shard_of(probe, 3)`: so the sharding can be reproduced in a Prometheus
config (DESIGN.md "Scale beyond one machine").
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from probenet.sharding import shard_of
from support.processes import ChildProcess
from support.system import free_port, need_binary
from support.targets import closed_port

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

SHARDS = 3
PROBES = [f"probe-{i}" for i in range(30)] + [
    "facebook-web", "instagram", "whatsapp", "threads", "meta-edge", "social-login",
    "api.example.com", "café-web", "dns_root", "x"]


def prometheus_config(path: Path, target: str) -> Path:
    path.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "500ms"},
        "scrape_configs": [{
            "job_name": "shards",
            "static_configs": [{"targets": [target], "labels": {"probe": name}}
                               for name in PROBES],
            "relabel_configs": [{"source_labels": ["probe"], "modulus": SHARDS,
                                 "target_label": "shard", "action": "hashmod"}],
        }],
    }, allow_unicode=True), encoding="utf-8")
    return path


def query(url: str, expr: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/api/v1/query", data=urllib.parse.urlencode({"query": expr}).encode())
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict[str, Any] = json.load(response)
    return answer


async def up_series(url: str, wanted: int, deadline_s: float) -> list[dict[str, str]]:
    """The `up` series' labels once `wanted` of them exist (bounded by `deadline_s`)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    series: list[dict[str, str]] = []
    while loop.time() < end:
        try:
            answer = await asyncio.to_thread(query, url, 'up{job="shards"}')
        except OSError:  # not listening yet
            answer = {}
        if answer.get("status") == "success":
            series = [r["metric"] for r in answer["data"]["result"]]
            if len(series) >= wanted:
                return series
        await asyncio.sleep(0.25)
    return series


async def test_prometheus_hashmod_of_the_probe_label_is_shard_of(tmp_path):
    assert len(set(PROBES)) == 40
    binary = need_binary("prometheus", "prometheus")
    port = free_port()
    config = prometheus_config(tmp_path / "prometheus.yml", f"127.0.0.1:{closed_port()}")
    async with ChildProcess("prometheus", [
            binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            tmp_path / "prometheus.log", stop_grace_s=5.0) as prometheus:
        series = await up_series(f"http://127.0.0.1:{port}", len(PROBES), 15.0)
        prometheus.check_alive()
    assert len(series) == len(PROBES), series
    shards = {s["probe"]: int(s["shard"]) for s in series}
    assert set(shards) == set(PROBES)
    assert shards == {name: shard_of(name, SHARDS) for name in PROBES}
    assert set(shards.values()) == set(range(SHARDS))  # every shard is exercised
