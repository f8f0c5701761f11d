"""The classifier: agents' results in, verdicts and outage transitions out. Pure: no I/O.

INTERFACE STUB (lead): the signatures below are the contract between the classifier and the
rest of the collector (ingest, journal, api, metrics, events). The implementation replaces
the bodies; keep the signatures (add, do not rename).

Rules: ../shared/DESIGN.md, "Classification (the heart)". Time is float unix seconds and is
always passed in (`now`): the classifier never reads a clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from collector.model import (
    AgentView,
    ClassificationParams,
    OutageRecord,
    RegionVerdict,
    TargetView,
    Transition,
)


class ResultLike(Protocol):
    """What the classifier reads of one result: the fields of probenet.v1.ProbeResult.

    The ingest passes the protobuf messages themselves (no copy); tests may pass any object
    with these attributes.
    """

    @property
    def probe(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def service(self) -> str: ...
    @property
    def success(self) -> bool: ...
    @property
    def confirmed(self) -> bool: ...
    @property
    def failed_phase(self) -> int: ...  # index into collector.model.PHASE_NAMES
    @property
    def timeout_phase(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def duration_seconds(self) -> float: ...
    @property
    def status_code(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...
    @property
    def interval_ms(self) -> int: ...


@dataclass(slots=True)
class PairSample:
    """The latest result of one (agent, probe) pair, as the metrics exporter reads it."""

    agent: str
    region: str
    probe: str
    target: str
    kind: str
    success: bool
    duration_seconds: float
    status_code: int
    at: float
    details: Any  # whatever `details_of` returned for the latest result (None if not set)


def new_outage_id() -> str:
    """Default id factory: a random, stable identifier."""
    return uuid.uuid4().hex


class Classifier:
    """Holds every agent's latest verdicts and turns them into region and target verdicts.

    Use: `agent_connected` when a stream says hello, `apply` for each batch, `tick` about
    once a second (staleness, impairment re-checks, flapping decay), `agent_disconnected`
    when a stream ends. After each call, `take_transitions()` returns what changed, in
    order: the collector journals those, then acknowledges and publishes them.
    """

    def __init__(
        self,
        params: ClassificationParams,
        *,
        new_id: Callable[[], str] = new_outage_id,
        details_of: Callable[[ResultLike], Any] | None = None,
    ) -> None:
        """`new_id` makes outage ids; `details_of` extracts kind-specific facts to keep."""
        raise NotImplementedError

    # -- input ---------------------------------------------------------------------------

    def restore(self, open_outages: Iterable[OutageRecord], now: float) -> None:
        """After a restart: adopt the journal's open outages (same ids, regions down).

        Their regions start as down-but-unknown, so each outage stays open until evidence of
        recovery (recover_after up verdicts) arrives, and continues if the fault persists.
        """
        raise NotImplementedError

    def agent_connected(self, agent_id: str, region: str, labels: Mapping[str, str],
                        interval_s: float, now: float) -> None:
        """An agent's stream said hello (or said it again after a reconnect)."""
        raise NotImplementedError

    def agent_disconnected(self, agent_id: str, now: float) -> None:
        """The agent's stream ended: connected=false now; its verdicts count until stale."""
        raise NotImplementedError

    def apply(self, agent_id: str, results: Iterable[ResultLike], now: float) -> int:
        """Apply a batch of one connected agent's results (already deduplicated).

        Returns the number applied. The hot path: most results change nothing but the
        pair's latest sample and must cost a few microseconds.
        """
        raise NotImplementedError

    def tick(self, now: float) -> None:
        """Time passes: staleness, impairment re-checks, flapping decay, degraded state."""
        raise NotImplementedError

    def take_transitions(self) -> list[Transition]:
        """Everything that changed since the last call, in order; clears the list."""
        raise NotImplementedError

    # -- read side (API, metrics, demo) ---------------------------------------------------

    def targets(self) -> list[TargetView]:
        """Every probe's fleet-wide view, sorted by probe name."""
        raise NotImplementedError

    def agents(self) -> list[AgentView]:
        """Every agent ever seen, sorted by id."""
        raise NotImplementedError

    def open_outages(self) -> list[OutageRecord]:
        """Open outage records of every kind."""
        raise NotImplementedError

    def region_verdicts(self, probe: str) -> Mapping[str, RegionVerdict]:
        """One probe's verdict per region (unknown included)."""
        raise NotImplementedError

    def samples(self) -> Iterator[PairSample]:
        """Latest sample of every (agent, probe) pair, for probe_success and friends."""
        raise NotImplementedError

    def isolated_regions(self) -> frozenset[str]:
        """Regions whose every agent (at least 2, distinct networks) is impaired."""
        raise NotImplementedError

    def flapping_probes(self) -> frozenset[str]:
        """Probes currently flapping."""
        raise NotImplementedError

    @property
    def monitoring_degraded(self) -> bool:
        """True while more than half of all agents are stale or impaired."""
        raise NotImplementedError
