"""The collector's HTTP side seen from outside: a /healthz poller and a /metrics scraper.

- `poll_process`: `GET /healthz` every 10 ms on one kept-alive connection, the time each
  answer took (a stall of the collector's event loop, seen from outside);
- `scrape_process`: `GET /metrics` (plain, gzip, OpenMetrics, or as Prometheus asks), timed
  to the last byte, bytes counted as they arrive, series counted on the decoded page.
"""

from __future__ import annotations

import http.client
import time
import zlib
from array import array
from typing import Any
from urllib.parse import urlsplit

from procs import DEADLINE_S, expect, percentile, pin

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
POLL_PERIOD_S = 0.01
MAX_SCRAPES = 30  # per command, whatever the page's speed


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                      timeout=DEADLINE_S * 4)


def poll_process(conn: Any, cpu: int, url: str, period_s: float, max_seconds: float) -> None:
    """`GET /healthz` every `period_s` on one kept-alive connection until "stop".

    Sends {"at": [...], "seconds": [...], "failure": ""}: when each request started and
    how long its answer took (and why polling stopped early, if it did). A request that
    overruns its slot delays the next (no pile-up).
    """
    pin(cpu)
    http_conn = _connection(url)
    started_at, took = array("d"), array("d")
    failure = ""
    deadline = time.monotonic() + max_seconds
    next_at = time.monotonic()
    while not conn.poll(0) and time.monotonic() < deadline:
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        begin = time.monotonic()
        try:
            http_conn.request("GET", "/healthz")
            http_conn.getresponse().read()
        except (OSError, http.client.HTTPException) as exc:
            failure = f"GET /healthz: {exc!r}"
            break
        started_at.append(begin)
        took.append(time.monotonic() - begin)
        next_at = max(next_at + period_s, time.monotonic())
    http_conn.close()
    conn.send({"at": started_at.tolist(), "seconds": took.tolist(), "failure": failure})


def longest_answer(polls: dict[str, Any], start: float, end: float) -> dict[str, float]:
    """The longest /healthz answer among the requests started in [start, end)."""
    times = [s for at, s in zip(polls["at"], polls["seconds"], strict=True)
             if start <= at < end]
    return {"polls": float(len(times)), "max_s": max(times, default=0.0),
            "p99_s": percentile(times, 0.99)}


def count_series(body: bytes) -> int:
    """Sample lines of an exposition (lines neither empty nor comments)."""
    lines = body.count(b"\n") + (0 if body.endswith(b"\n") or not body else 1)
    comments = body.count(b"\n#") + (1 if body.startswith(b"#") else 0)
    empty = body.count(b"\n\n")
    return lines - comments - empty


SCRAPE_KINDS = {
    "plain": {},
    "gzip": {"Accept-Encoding": "gzip"},
    "openmetrics": {"Accept": OPENMETRICS},
    # What Prometheus itself sends (scrape_protocols' defaults, then gzip).
    "prometheus": {"Accept": "application/openmetrics-text;version=1.0.0;q=0.5,"
                             "application/openmetrics-text;version=0.0.1;q=0.4,"
                             "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                   "Accept-Encoding": "gzip"},
}


def scrape(url: str, kind: str) -> dict[str, Any]:
    """One `GET /metrics` of `kind` (SCRAPE_KINDS), timed to its last byte.

    Bytes are counted as they arrive (compressed, when the collector compressed); the
    series are counted on the decoded page.
    """
    http_conn = _connection(url)
    try:
        begin = time.monotonic()
        http_conn.request("GET", "/metrics", headers=SCRAPE_KINDS[kind])
        response = http_conn.getresponse()
        first_byte = time.monotonic() - begin
        chunks = []
        while chunk := response.read(1 << 20):
            chunks.append(chunk)
        end = time.monotonic()
    finally:
        http_conn.close()
    if response.status != 200:
        raise RuntimeError(f"benchmark: GET {url}/metrics ({kind}): HTTP {response.status}")
    wire_bytes = b"".join(chunks)
    encoding = response.getheader("Content-Encoding", "") or ""
    body = zlib.decompress(wire_bytes, 16 + zlib.MAX_WBITS) if encoding == "gzip" else wire_bytes
    return {"kind": kind, "start": begin, "end": end, "seconds": end - begin,
            "first_byte_s": first_byte, "wire_bytes": len(wire_bytes),
            "page_bytes": len(body), "series": count_series(body), "encoding": encoding,
            "content_type": response.getheader("Content-Type", "") or ""}


def scrape_process(conn: Any, cpu: int, url: str) -> None:
    """Scrapes on command; each command answers with the list of scrapes it made.

    Commands: {"kinds": [...], "until": t, "period_s": p, "max_count": n}: scrape the kinds
    in turn, one every `period_s` (0: back to back), while before `until` and until each
    kind was scraped at least once, at most `max_count` scrapes; "stop" ends the process.
    """
    pin(cpu)
    while (command := conn.recv()) != "stop":
        done: list[dict[str, Any]] = []
        kinds, until = command["kinds"], command["until"]
        next_at = time.monotonic()
        while len(done) < command["max_count"]:
            now = time.monotonic()
            every_kind = set(kinds) <= {s["kind"] for s in done}
            if now >= until and every_kind:
                break
            if now < next_at:
                time.sleep(min(next_at, until) - now if every_kind else next_at - now)
                continue
            next_at = now + command["period_s"]
            kind = kinds[len(done) % len(kinds)]
            try:
                done.append(scrape(url, kind))
            except (OSError, RuntimeError, http.client.HTTPException) as exc:
                done.append({"kind": kind, "start": now, "end": time.monotonic(),
                             "error": repr(exc)})
        conn.send(done)


class HttpWatch:
    """A poller and a scraper process on one collector (both pinned to `cpu`).

    The poller runs from construction to `stop`; scrapes run on command, either waited for
    (`scrapes`) or started and collected later (`begin_scrapes`, `end_scrapes`).
    """

    def __init__(self, ctx: Any, cpu: int, url: str, max_seconds: float) -> None:
        """Start both processes; the poller stops by itself after `max_seconds`."""
        self.poll_conn, child = ctx.Pipe()
        self.poller = ctx.Process(target=poll_process, daemon=True,
                                  args=(child, cpu, url, POLL_PERIOD_S, max_seconds))
        self.scrape_conn, child = ctx.Pipe()
        self.scraper = ctx.Process(target=scrape_process, daemon=True, args=(child, cpu, url))
        self.poller.start()
        self.scraper.start()
        self._scrape_timeout_s = 0.0

    def begin_scrapes(self, kinds: tuple[str, ...], seconds: float, *, period_s: float = 0.0,
                      max_count: int = MAX_SCRAPES) -> None:
        """Scrape the kinds in turn for `seconds` (each kind at least once), in the background."""
        self.scrape_conn.send({"kinds": list(kinds), "until": time.monotonic() + seconds,
                               "period_s": period_s, "max_count": max_count})
        self._scrape_timeout_s = seconds + max_count * DEADLINE_S * 4

    def end_scrapes(self, *, poll_s: float | None = None) -> list[dict[str, Any]] | None:
        """The scrapes of the last `begin_scrapes` (RuntimeError if one failed).

        With `poll_s`: None when they are not done within that time (ask again later).
        """
        if poll_s is not None and not self.scrape_conn.poll(poll_s):
            return None
        done: list[dict[str, Any]] = expect(self.scrape_conn, "scrapes", self._scrape_timeout_s,
                                            self.scraper)
        failed = [s for s in done if "error" in s]
        if failed:
            raise RuntimeError(f"benchmark: scrape failed: {failed[0]}")
        return done

    def scrapes(self, kinds: tuple[str, ...], seconds: float, *, period_s: float = 0.0,
                max_count: int = MAX_SCRAPES) -> list[dict[str, Any]]:
        """`begin_scrapes`, then wait for them."""
        self.begin_scrapes(kinds, seconds, period_s=period_s, max_count=max_count)
        done = self.end_scrapes()
        assert done is not None
        return done

    def stop(self) -> dict[str, Any]:
        """Stop both; the poller's samples."""
        self.scrape_conn.send("stop")
        self.poll_conn.send("stop")
        polls: dict[str, Any] = expect(self.poll_conn, "healthz samples", DEADLINE_S * 4,
                                       self.poller)
        self.poller.join(DEADLINE_S)
        self.scraper.join(DEADLINE_S)
        return polls
