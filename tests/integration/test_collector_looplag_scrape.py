"""The event-loop lag metrics of a running collector, read back from a real /metrics scrape."""

from __future__ import annotations

import asyncio
import time

from probenet.collector.config import parse_config
from probenet.collector.server import CollectorService
from support.collector_client import ManualClock, collector_yaml, http_get, metric_value

DEADLINE_S = 30.0


async def scrape(service: CollectorService) -> str:
    status, _, text = await http_get(service.http.url + "/metrics")
    assert status == 200
    return text


async def test_the_lag_histogram_is_on_the_metrics_page_and_sees_a_stall(tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    async with CollectorService(config, clock=ManualClock()) as service:
        deadline = time.monotonic() + DEADLINE_S
        while not metric_value(await scrape(service), "probenet_event_loop_lag_seconds_count"):
            assert time.monotonic() < deadline, "no lag observed"
            await asyncio.sleep(0.05)
        time.sleep(0.6)  # hold the collector's loop, as a huge render would
        await asyncio.sleep(0.3)  # the monitor wakes up late, then once more
        text = await scrape(service)
    count = metric_value(text, "probenet_event_loop_lag_seconds_count")
    under_half_s = metric_value(text, "probenet_event_loop_lag_seconds_bucket", le="0.5")
    assert count is not None
    assert under_half_s is not None
    assert under_half_s < count
    assert metric_value(text, "probenet_event_loop_lag_seconds_bucket", le="10.0") == count
    lag_max = metric_value(text, "probenet_event_loop_lag_max_seconds")
    assert lag_max is not None
    assert lag_max >= 0.5
