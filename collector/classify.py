"""The classifier: agents' results in, region verdicts, target states and outage transitions out.

Pure: no I/O, no asyncio, no clock reads. Time is float unix seconds and is always passed in
(`now`). Rules: DESIGN.md, "Classification (the heart)"; the points DESIGN.md leaves open are
settled as written on each method below. The layers, bottom up:

    (agent, probe) pair   the agent's verdict: up, down (confirmed failure) or none yet;
                          fresh while its last result is newer than stale_after_intervals x
                          the probe's interval
    agent                 stale (silent for stale_after_intervals x its interval), impaired
                          (its own network is broken), or counted
    (probe, region)       majority of the region's fresh, counted agents (`region_vote`), the
                          lone-agent rule (`down_stands_alone`), then recovery hysteresis
    probe                 up / regional_outage / global_outage / unknown, flapping
    records               probe, service, region_isolated and monitoring_degraded outages,
                          built and changed by OutageRecord's builders (collector/model.py)

Hot path: `apply` for a success on a pair that is already up, fresh and not recovering only
stores the sample; everything else goes through the slow path, which evaluates impairment
before region verdicts so that a broken agent is left out before its word can open an outage.

Points settled here (DESIGN.md and the lead's notes leave them open):

- "Other regions see those probes up" counts only up results stamped after the agent's
  first failure of that probe. Up verdicts from before the onset of a real outage are no
  evidence; without this, the first agent to report a real outage of half its probes would
  be taken for broken (the motivating case: four services of one provider down at once).
- Until that evidence arrives, an agent down on enough probes is a *suspect*: its down votes
  count like a lone agent's single confirmed failure (only with another region down too).
  A real outage is corroborated at once; a broken agent opens nothing, in any result order.
- An impaired agent is also released when the other regions no longer see its down probes
  up (the outage reached them). Its carried-over down verdicts must be confirmed again.
- Recovery counts up results from counted agents of the region: a region with two agents
  can recover within one interval. A (weak) down vote in between restarts the count.
- A resolved probe record keeps the regions it last named (`regions_ever` has them all).
- A record's failure is the (phase, reason, step) seen most, one triple: `step` is the failing
  step of a `flow` probe's results (None for other kinds, whatever their results carry), so
  "login fails with a 500" is not mixed up with "the home page times out". A service record
  takes the triple most of its probes' records show. A probe's view (/api/v1/targets, the
  retained MQTT state) shows the step of its open record, and changes with it.
- Maintenance windows (`set_maintenance`): a covered (probe, region) keeps its verdict (for
  recovery and the view after the window) but is no evidence: it shows `maintenance`,
  counts as up towards the probe's state, corroborates no other region, and counts neither
  for nor against its agents' impairment. The rest is on `set_maintenance`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .model import (
    PHASE_NAMES,
    AgentHealth,
    AgentHealthChange,
    AgentView,
    ClassificationParams,
    OutageEvent,
    OutageKind,
    OutageRecord,
    OutageTransition,
    RegionVerdict,
    Scope,
    TargetChange,
    TargetState,
    TargetView,
    Transition,
    widest,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from collections.abc import Set as AbstractSet


class ResultLike(Protocol):
    """What the classifier reads of one result: the fields of probenet.v1.ProbeResult.

    The ingest passes the protobuf messages themselves (no copy); tests may pass any object
    with these attributes.
    """

    @property
    def probe(self) -> str:
        """Probe name: the key of a target across the fleet."""

    @property
    def target(self) -> str:
        """What was probed (URL, host:port, name)."""

    @property
    def kind(self) -> str:
        """http, tcp, dns, icmp, tls, grpc or flow."""

    @property
    def service(self) -> str:
        """Optional grouping of probes; "" for none."""

    @property
    def success(self) -> bool:
        """True when the probe succeeded."""

    @property
    def confirmed(self) -> bool:
        """For a failure: true once the re-probe failed too."""

    @property
    def failed_phase(self) -> int:
        """Index into collector.model.PHASE_NAMES (0 on success)."""

    @property
    def timeout_phase(self) -> int:
        """For a timeout: the phase in progress, same indexes."""

    @property
    def reason(self) -> str:
        """Machine-readable failure reason, "" on success."""

    @property
    def step(self) -> str:
        """For a failed `flow` result: the failing step's name ("" otherwise).

        Read only from failures of kind `flow` (look-alikes of other kinds need not have it).
        """

    @property
    def duration_seconds(self) -> float:
        """Total duration of the probe run."""

    @property
    def status_code(self) -> int:
        """HTTP status code, 0 when none applies."""

    @property
    def timestamp_ms(self) -> int:
        """Agent's clock when the probe started, unix milliseconds."""

    @property
    def interval_ms(self) -> int:
        """The probe's interval in milliseconds (0 if unknown)."""


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


def outage_id(kind: OutageKind, subject: str, started_at: float) -> str:
    """A record's id: 32 lowercase hex chars derived from what it is about and its start.

    `subject` is the probe name (probe records), the service name (service), the region
    (region_isolated) or "" (monitoring_degraded). Both collectors of an HA pair receive every
    result, so they derive the same id for the same outage whenever they derive the same
    start (see `Classifier`): MQTT consumers and API clients deduplicate across the pair on it.
    """
    started_ms = round(started_at * 1000)
    return hashlib.sha256(f"{kind}\x00{subject}\x00{started_ms}".encode()).hexdigest()[:32]


def _subject(record: OutageRecord) -> str:
    """What `outage_id` names a record by, next to its kind."""
    kind = record.kind
    if kind is OutageKind.PROBE:
        return record.probe or ""
    if kind is OutageKind.SERVICE:
        return record.service or ""
    if kind is OutageKind.REGION_ISOLATED:
        return record.region or ""
    return ""


def target_state(verdicts: Iterable[RegionVerdict], params: ClassificationParams) -> TargetState:
    """A probe's state from its regions' verdicts (DESIGN.md's table; unknown regions ignored)."""
    up = down = 0
    for verdict in verdicts:
        if verdict is RegionVerdict.UP:
            up += 1
        elif verdict is RegionVerdict.DOWN:
            down += 1
    reporting = up + down
    if reporting == 0 or reporting < params.min_regions:
        return TargetState.UNKNOWN
    if down == 0:
        return TargetState.UP
    if down / reporting >= params.global_ratio:
        return TargetState.GLOBAL_OUTAGE
    return TargetState.REGIONAL_OUTAGE


def region_vote(up: int, down: int) -> RegionVerdict:
    """A region's verdict for a probe from the verdicts of its fresh, unimpaired agents.

    `up` and `down` count those agents by verdict. Down only on a strict majority of down;
    a tie is up (someone in the region reaches the target); unknown with no such agent.
    """
    if down > up:
        return RegionVerdict.DOWN
    return RegionVerdict.UP if up else RegionVerdict.UNKNOWN


def down_stands_alone(up: int, down: int, strong: int) -> bool:
    """Whether a region's down vote counts without another region seeing the probe down.

    `up` and `down` count the region's firm votes (DESIGN.md's lone-agent rule, widened to
    leave out suspects' votes, down verdicts not yet confirmed again after impairment, and
    down verdicts without an alibi); `strong` counts the firm down votes with
    `regional_confirmations` (2) confirmed failures in a row (a lone agent: at least 2).
    The vote stands alone when a strict majority of the firm votes are strong downs. With
    two agents per region, random loss makes both confirm a failure of the same probe in
    one interval about p^4 of the time (7 records in 48 h of a 5-region fleet at 5 % loss,
    benchmarks/detection.py); and one agent's real failure must not carry the other's
    random loss (one of two agents failing is not the region failing).
    """
    return down > up and 2 * strong > up + down  # down > up: region_vote says down


def phase_name(index: int) -> str | None:
    """The JSON name of a wire phase index; None for "no phase" or an index out of range."""
    if 0 < index < len(PHASE_NAMES):
        return PHASE_NAMES[index]
    return None


# A pair's verdict. Small ints: the hot path compares them.
_NO_VERDICT = 0
_UP = 1
_DOWN = 2

_V_UP = RegionVerdict.UP
_V_DOWN = RegionVerdict.DOWN
_V_UNKNOWN = RegionVerdict.UNKNOWN
_V_MAINTENANCE = RegionVerdict.MAINTENANCE
_NOT_COVERED: frozenset[str] = frozenset()
_OUTAGE_STATES = frozenset({TargetState.REGIONAL_OUTAGE, TargetState.GLOBAL_OUTAGE})
_RECOVERABLE_STATES = frozenset({TargetState.UP, TargetState.MAINTENANCE})

# An agent timestamp further than this from the collector's receipt time is not believed
# (agent clock badly off); the receipt time stands in for it.
_CLOCK_TRUST_S = 60.0

_FailureKey = tuple[str | None, str | None, str | None]  # (phase, reason, step)
_FLOW = "flow"  # the one kind whose failures name a step


def _most_seen(counts: Mapping[_FailureKey, int],
               default: _FailureKey = (None, None, None)) -> _FailureKey:
    """The failure counted most (the first one counted on a tie); `default` when none is."""
    return max(counts, key=counts.__getitem__, default=default)


class _Agent:
    """One agent: identity, liveness and the counts the impairment rule needs."""

    __slots__ = (
        "awaiting_ms",
        "connected",
        "counted",
        "first_result_at",
        "id",
        "idle",
        "impaired",
        "interval_s",
        "labels",
        "last_heard",
        "last_seen",
        "n_down",
        "n_fresh",
        "network",
        "next_check",
        "next_scan",
        "ok_ms",
        "pairs",
        "region",
        "stale",
        "suspect",
        "trouble_ms",
    )

    def __init__(self, agent_id: str, region: str, labels: Mapping[str, str],
                 interval_s: float, now: float) -> None:
        self.id = agent_id
        self.region = region
        self.labels: dict[str, str] = dict(labels)
        # Without a `network` label every agent is its own network.
        self.network = self.labels.get("network") or f"agent:{agent_id}"
        self.interval_s = interval_s
        self.connected = True
        self.stale = False
        self.impaired = False
        # Down on enough probes to be impaired, but no other region has seen those probes up
        # since: a real outage, or a broken agent not yet found out. Its down verdicts need
        # corroboration from another region, like a lone agent's single confirmed failure.
        self.suspect = False
        self.counted = True  # not stale and not impaired: its verdicts count
        self.last_seen: float | None = None  # last result (collector clock)
        self.last_heard = now  # last result, or the first hello: staleness counts from it
        # Connected, told us it runs no probe whose results come here (Hello.probe_count 0: a
        # sharded agent with no probe in this collector's shard), and sent none: nothing to
        # expect, so silence is not staleness while the stream is up.
        self.idle = False
        self.first_result_at: float | None = None
        self.next_scan = now  # next freshness scan of its pairs
        self.next_check = now  # next impairment evidence scan (suspect or impaired)
        self.pairs: dict[str, _Pair] = {}
        self.n_fresh = 0  # pairs with a fresh verdict
        self.n_down = 0  # ... of which down
        # Alibi (see `_has_alibi`): agent clock (ms) of its latest success on any probe, and
        # the earliest confirmed failure still waiting for a success after it (0: none).
        self.ok_ms = 0
        self.awaiting_ms = 0
        # Agent clock (ms) of the result that first made it down on enough probes to be
        # impaired (0: not so now): when its trouble began, on its own word (region_isolated).
        self.trouble_ms = 0

    @property
    def health(self) -> AgentHealth:
        """Stale, impaired, suspect or ok (in that order)."""
        if self.stale:
            return AgentHealth.STALE
        if self.impaired:
            return AgentHealth.IMPAIRED
        return AgentHealth.SUSPECT if self.suspect else AgentHealth.OK

    def set_flags(self, *, stale: bool | None = None, impaired: bool | None = None) -> None:
        """Change staleness or impairment, keeping `counted` in step."""
        if stale is not None:
            self.stale = stale
        if impaired is not None:
            self.impaired = impaired
        self.counted = not self.stale and not self.impaired

    def view(self) -> AgentView:
        """The /api/v1/agents entry."""
        return AgentView(
            id=self.id,
            region=self.region,
            connected=self.connected,
            impaired=self.impaired,
            stale=self.stale,
            last_seen=self.last_seen,
            labels=dict(self.labels),
        )


class _RegionState:
    """One probe in one region: the agents' pairs and the region's verdict with hysteresis."""

    __slots__ = ("down_memory", "name", "pairs", "raw", "up_streak", "verdict", "weak")

    def __init__(self, name: str) -> None:
        self.name = name
        self.pairs: list[_Pair] = []
        self.verdict = _V_UNKNOWN
        self.raw = _V_UNKNOWN  # the majority verdict, before the lone-agent rule
        self.weak = False  # raw down that does not stand alone (needs another region down)
        self.down_memory = False  # last known verdict was down: recovery needs up evaluations
        self.up_streak = 0


def _vote(regions: Iterable[_RegionState], confirmations: int) -> int:
    """Each region's vote (`raw`, and `weak` when down); returns how many regions vote down.

    The voters are the region's fresh, counted agents. Firm votes are the ones the lone-agent
    rule weighs: not a suspect's; a down vote confirmed since the agent last counted (streak
    0: carried over from impairment); and a down vote with an alibi: the agent has had a
    success on another probe since that failure was confirmed (stamped at or after it, on
    the agent's clock), so its own network is not what fails (an agent with no other probe
    needs none). An agent losing its network fails every probe and has no alibi: its
    region's down votes wait for another region to agree, and it is found impaired before
    they open anything. One loop over every region of the probe: this runs on every
    slow-path result.
    """
    voting_down = 0
    for region in regions:
        up = down = firm_up = 0
        firm_downs: list[_Pair] = []
        for pair in region.pairs:
            verdict = pair.verdict
            if not (verdict and pair.fresh):
                continue
            agent = pair.agent_state
            if not agent.counted:
                continue
            if verdict == _DOWN:
                down += 1
                if pair.streak and not agent.suspect and (
                        agent.ok_ms >= pair.confirm_ms or agent.n_fresh < 2):
                    firm_downs.append(pair)
            else:
                up += 1
                if not agent.suspect:
                    firm_up += 1
        raw = region.raw = region_vote(up, down)
        if raw is _V_DOWN:
            voting_down += 1
            strong = _strong_downs(firm_downs, lone=firm_up + len(firm_downs) == 1,
                                   confirmations=confirmations)
            region.weak = not down_stands_alone(firm_up, len(firm_downs), strong)
    return voting_down


def _strong_downs(firm_downs: list[_Pair], *, lone: bool, confirmations: int) -> int:
    """How many firm down votes are strong (`down_stands_alone`).

    Strong: `confirmations` confirmed failures in a row (a lone voter: at least 2). Votes
    whose failures began together with a strong one (within an interval) are strong with it:
    they fail with it, and the region does not wait for their second confirmation. A random
    loss at one agent during another agent's long failure began later: it does not join.
    """
    need = max(confirmations, 2) if lone else confirmations
    strong = [pair for pair in firm_downs if pair.streak >= need]
    if not strong or lone:
        return len(strong)
    since = min(pair.first_fail_at for pair in strong)
    return len(strong) + sum(1 for pair in firm_downs if pair.streak < need
                             and abs(pair.first_fail_at - since) <= _interval_s(pair))


def _interval_s(pair: _Pair) -> float:
    return pair.interval_ms / 1000 if pair.interval_ms > 0 else pair.agent_state.interval_s


def _settle(regions: Iterable[_RegionState], *, corroborated: bool,
            trigger: _RegionState | None, recover_after: int) -> bool:
    """Each region's verdict from its vote: the lone-agent rule, then recovery hysteresis.

    `corroborated`: at least two regions vote down. `trigger`: the region whose counted
    agent just sent an up result (only such evaluations count towards recovery). Returns
    True if any region's verdict changed.
    """
    changed = False
    for region in regions:
        raw = region.raw
        if raw is _V_DOWN and region.weak and not corroborated:
            # Not firm (a lone agent's first failure, suspects), and seen nowhere else.
            # Still a down vote: it breaks a recovery's run of ups.
            region.up_streak = 0
            raw = _V_UP
        if raw is _V_DOWN:
            region.down_memory = True
            region.up_streak = 0
            verdict = _V_DOWN
        elif raw is _V_UP:
            verdict = _V_UP
            if region.down_memory:
                # A down region needs recover_after up evaluations before it counts as up.
                if region is trigger:
                    region.up_streak += 1
                if region.up_streak >= recover_after:
                    region.down_memory = False
                    region.up_streak = 0
                else:
                    verdict = _V_DOWN
        else:
            region.up_streak = 0
            verdict = _V_UNKNOWN
        if verdict is not region.verdict:
            region.verdict = verdict
            changed = True
    return changed


class _ProbeOutage:
    """The open probe record and the failure (phase, reason, step) counts behind them."""

    __slots__ = ("counts", "record", "top")

    def __init__(self, record: OutageRecord, counts: dict[_FailureKey, int]) -> None:
        self.record = record
        self.counts = counts
        self.top: _FailureKey = _most_seen(counts, (record.phase, record.reason, record.step))


class _Probe:
    """One probe across the fleet: its regions, state, flapping history and open outage."""

    __slots__ = (
        "changes",
        "covered",
        "covered_all",
        "flapping",
        "hold_until",
        "kind",
        "last_stable",
        "maintenance_ended_at",
        "name",
        "outage",
        "regions",
        "service",
        "shown_step",
        "state",
        "target",
        "up_since",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.target = ""
        self.kind = ""
        self.service: str | None = None
        self.state = TargetState.UNKNOWN
        self.regions: dict[str, _RegionState] = {}
        self.flapping = False
        self.changes: deque[float] = deque()  # times of state changes among up/outage states
        self.last_stable: TargetState | None = None  # last state other than unknown
        self.outage: _ProbeOutage | None = None
        # While > 0: a regional record waits (until then) for up regions to report (scope).
        self.hold_until = 0.0
        self.up_since = 0.0  # when the probe last turned up (a flapping record ends there)
        self.shown_step: str | None = None  # `step` of the last TargetChange emitted
        # Maintenance (`Classifier.set_maintenance`): covered in every region, or in these.
        self.covered_all = False
        self.covered: frozenset[str] = frozenset()
        # When a window last stopped covering one of its regions: a record opened after it
        # starts no earlier (the failures during the window were maintenance).
        self.maintenance_ended_at = 0.0

    @property
    def step(self) -> str | None:
        """The failing step of the probe's open outage (a flow probe's), else None."""
        outage = self.outage
        return None if outage is None else outage.record.step

    def region(self, name: str) -> _RegionState:
        """The probe's state in region `name`, created on first use."""
        found = self.regions.get(name)
        if found is None:
            found = self.regions[name] = _RegionState(name)
        return found

    @property
    def in_maintenance(self) -> bool:
        """True while a maintenance window covers the probe in some region."""
        return self.covered_all or bool(self.covered)

    def covers(self, region: str) -> bool:
        """Whether a maintenance window covers the probe in `region` now."""
        return self.covered_all or region in self.covered

    def fully_covered(self) -> bool:
        """Covered in every region (with or without agents reporting it)."""
        covered = self.covered
        return self.covered_all or (bool(covered) and all(name in covered
                                                          for name in self.regions))

    def down_regions(self) -> list[str]:
        """Regions whose verdict is down, but those a maintenance window covers."""
        return [region.name for region in self.regions.values()
                if region.verdict is _V_DOWN and not self.covers(region.name)]

    def outage_scope(self) -> Scope:
        """The scope of the probe's outage: global in a global outage, else regional."""
        return Scope.GLOBAL if self.state is TargetState.GLOBAL_OUTAGE else Scope.REGIONAL

    def view(self) -> TargetView:
        """The /api/v1/targets entry."""
        return TargetView(
            probe=self.name,
            target=self.target,
            service=self.service,
            kind=self.kind,
            state=self.state,
            regions={name: (_V_MAINTENANCE if self.covers(name) else self.regions[name].verdict)
                     for name in sorted(self.regions)},
            flapping=self.flapping,
            step=self.step,
        )


class _Pair(PairSample):
    """One (agent, probe) pair: the latest sample (the PairSample fields) and the verdict."""

    __slots__ = (
        "agent_state",
        "confirm_ms",
        "fail_phase",
        "fail_reason",
        "fail_step",
        "first_fail_at",
        "first_fail_ms",
        "fresh",
        "interval_ms",
        "probe_state",
        "region_state",
        "stamp_ms",
        "streak",
        "verdict",
    )

    def __init__(self, agent: _Agent, probe: _Probe, target: str, kind: str, now: float) -> None:
        PairSample.__init__(self, agent.id, agent.region, probe.name, target, kind, False, 0.0,
                            0, now)
        self.agent_state = agent
        self.probe_state = probe
        self.region_state = probe.region(agent.region)
        self.verdict = _NO_VERDICT
        self.fresh = False
        self.streak = 0  # consecutive confirmed failures
        self.interval_ms = 0
        self.stamp_ms = 0  # agent clock of the latest result
        self.first_fail_ms = 0  # agent clock of the current failing streak's first failure
        self.first_fail_at = 0.0  # collector clock of the same
        self.fail_phase = 0  # latest failure's phase index and reason
        self.fail_reason = ""
        self.fail_step = ""  # a flow's failing step (always "" for other kinds)
        self.confirm_ms = 0  # agent clock of the confirmed failure that made the pair down


@dataclass(slots=True)
class _SideRecord:
    """An open service, region_isolated or monitoring_degraded record."""

    record: OutageRecord
    restored: bool = False  # adopted from the journal and not yet confirmed by evidence


class Classifier:
    """Holds every agent's latest verdicts and turns them into region and target verdicts.

    Use: `agent_connected` when a stream says hello, `apply` for each batch, `tick` about
    once a second (staleness, impairment re-checks, flapping decay), `agent_disconnected`
    when a stream ends. After each call, `take_transitions()` returns what changed, in
    order: the collector journals those, then acknowledges and publishes them.

    Outage ids (`outage_id`) are derived from (kind, subject, start), never drawn at random,
    so that the collectors of an HA pair, each fed every result, name an outage alike:

    - probe: started at the earliest failure (agent clock) of the failing streaks behind the
      record when it opens. Deterministic when both collectors open on the same failures;
      not when an agent's clock is off by more than `_CLOCK_TRUST_S` (the receipt time stands
      in), when a maintenance window's end dates it (collector clock), or when one collector
      opens before an earlier failure of another agent has reached it (a lagging stream).
    - service: the earliest start of its probes' open records: deterministic with them.
    - region_isolated: the latest of its agents' trouble onsets, each the agent-clock stamp
      of the result that first made that agent down on enough probes to be impaired (its own
      results decide it, not when other regions' evidence arrived). The collector clock
      stands in when an onset is missing or out of `_CLOCK_TRUST_S`.
    - monitoring_degraded: collector clock. Staleness is silence measured on each
      collector's clock; no result dates it. Ids still agree when both open within the same
      millisecond, which they should not be expected to.

    A new record never reuses the id of the subject's previous one: its start is clamped to
    no earlier than that record's end, then moved on by 1 ms while the id still matches.
    Only the last record per (kind, subject) is remembered.
    """

    def __init__(self, params: ClassificationParams) -> None:
        """Classify with `params`."""
        self._params = params
        # (kind, subject) -> (id, ended_at, start of the id in ms) of the subject's last
        # resolved record; the id's start of each open record (by id) until it resolves.
        self._last_records: dict[tuple[OutageKind, str], tuple[str, float, int]] = {}
        self._id_starts_ms: dict[str, int] = {}
        self._agents: dict[str, _Agent] = {}
        self._agents_by_region: dict[str, list[_Agent]] = {}
        self._probes: dict[str, _Probe] = {}
        self._service_probes: dict[str, set[str]] = {}
        self._services: dict[str, _SideRecord] = {}
        self._isolated: dict[str, _SideRecord] = {}
        self._degraded: _SideRecord | None = None
        self._suspects: set[str] = set()  # ids of agents with .suspect set
        self._flap_watch: set[str] = set()  # probes with state changes inside the flap window
        self._held: set[str] = set()  # probes whose new regional record waits (`_hold_scope`)
        self._transitions: list[Transition] = []
        self._health_changes: list[AgentHealthChange] = []
        self._restored_at: float | None = None
        # Maintenance: what the open windows cover, by probe and by service name (None:
        # every region), and the probes covered somewhere now.
        self._maintenance_probes: dict[str, frozenset[str] | None] = {}
        self._maintenance_services: dict[str, frozenset[str] | None] = {}
        self._covered_probes: set[str] = set()

    # -- input ---------------------------------------------------------------------------

    def restore(self, open_outages: Iterable[OutageRecord], now: float) -> None:
        """After a restart: adopt the journal's open outages (same ids, regions down).

        Their regions start as down-but-unknown, so each outage stays open until evidence of
        recovery (recover_after up verdicts) arrives, and continues if the fault persists.
        Service records follow their probes; region_isolated and monitoring_degraded records
        resolve once agents have reported for a full staleness window without the condition.
        A second open record for the same probe, service or region (a journal written by a
        bug) is resolved at once in favour of the earliest.
        """
        self._restored_at = now
        ordered = sorted((r for r in open_outages if r.active),
                         key=lambda r: (r.started_at, r.detected_at, r.id))
        services: list[OutageRecord] = []
        for record in ordered:
            if not self._adopt(record):
                self._emit_outage(OutageEvent.RESOLVED, record.ended(now), now)
            elif record.kind is OutageKind.SERVICE:
                services.append(record)
        for record in services:
            assert record.service is not None
            known = self._service_probes.setdefault(record.service, set())
            known.update(record.probes)
            for name in record.probes:
                self._probe(name).service = record.service
            self._reconcile_service(record.service, now)

    def _adopt(self, record: OutageRecord) -> bool:
        """Take one open record from the journal; False for a duplicate or a malformed one."""
        kind = record.kind
        if kind is OutageKind.PROBE and record.probe is not None:
            probe = self._probe(record.probe)
            if probe.outage is not None:
                return False
            if record.service:
                probe.service = record.service
                self._service_probes.setdefault(record.service, set()).add(probe.name)
            for name in record.regions:
                probe.region(name).down_memory = True
            probe.outage = _ProbeOutage(record, {(record.phase, record.reason, record.step): 1})
            return True
        side = _SideRecord(record, restored=True)
        if kind is OutageKind.SERVICE and record.service:
            return self._services.setdefault(record.service, side) is side
        if kind is OutageKind.REGION_ISOLATED and record.region:
            return self._isolated.setdefault(record.region, side) is side
        if kind is OutageKind.MONITORING_DEGRADED and self._degraded is None:
            self._degraded = side
            return True
        return False  # a duplicate, or names nothing it could be about

    def set_maintenance(self, probes: Mapping[str, frozenset[str] | None], now: float, *,
                        services: Mapping[str, frozenset[str] | None] | None = None) -> None:
        """What the maintenance windows open at `now` cover: probe (or service) -> regions.

        None covers every region, an empty set none; a probe missing from both maps is not
        covered. Call it on every tick (windows open and close by the clock) and when the
        windows change. A probe of a covered service is covered, also one first seen later.

        While a window covers a (probe, region), that region's results are recorded and its
        verdict kept as usual, but it is no evidence for an outage: it shows `maintenance`,
        counts as not down, and no record opens on it (so no service record either). A
        probe covered in every region that reports it is in state `maintenance`; partly
        covered, its state comes from the other regions. A record already open when its
        window starts stays open (it was no maintenance) and can only resolve, once no
        region sees the probe down any more; regions it did not name are not added while
        covered. When a window ends on a probe still failing, a record opens as usual,
        started no earlier than the window's end.
        """
        new_probes = {name: cover for name, cover in probes.items() if cover != _NOT_COVERED}
        new_services = {name: cover for name, cover in (services or {}).items()
                        if cover != _NOT_COVERED}
        old_probes, old_services = self._maintenance_probes, self._maintenance_services
        if new_probes == old_probes and new_services == old_services:
            return
        affected = {name for name in old_probes.keys() | new_probes.keys()
                    if old_probes.get(name, _NOT_COVERED) != new_probes.get(name, _NOT_COVERED)}
        for service in old_services.keys() | new_services.keys():
            if old_services.get(service, _NOT_COVERED) != new_services.get(service,
                                                                           _NOT_COVERED):
                affected.update(self._service_probes.get(service, ()))
        self._maintenance_probes, self._maintenance_services = new_probes, new_services
        for name in sorted(affected):
            probe = self._probes.get(name)
            if probe is not None and self._apply_coverage(probe, now):
                self._evaluate(probe, now, covered_changed=True)

    def _apply_coverage(self, probe: _Probe, now: float) -> bool:
        """Set the probe's coverage from the maintenance maps; True when it changed."""
        covered_all = False
        covered = _NOT_COVERED
        service = probe.service
        for cover in (self._maintenance_probes.get(probe.name, _NOT_COVERED),
                      self._maintenance_services.get(service, _NOT_COVERED) if service
                      else _NOT_COVERED):
            if cover is None:
                covered_all, covered = True, _NOT_COVERED
                break
            covered = covered | cover
        if covered_all == probe.covered_all and covered == probe.covered:
            return False
        lost_all = probe.covered_all and not covered_all
        if lost_all or not (covered_all or probe.covered <= covered):
            probe.maintenance_ended_at = now  # some region left its window
        probe.covered_all, probe.covered = covered_all, covered
        if probe.in_maintenance:
            self._covered_probes.add(probe.name)
        else:
            self._covered_probes.discard(probe.name)
        return True

    def agent_connected(self, agent_id: str, region: str, labels: Mapping[str, str],
                        interval_s: float, now: float, *, expects_results: bool = True) -> None:
        """An agent's stream said hello (or said it again after a reconnect).

        A reconnect does not clear staleness (results do). An agent that comes back in
        another region takes its pairs along. `interval_s` <= 0 is taken as 1 s.
        `expects_results` False (the Hello counts no probe for this collector): while its
        stream is up and it has sent no result here, the agent is idle, never stale.
        """
        interval_s = interval_s if interval_s > 0 else 1.0
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = self._agents[agent_id] = _Agent(agent_id, region, labels, interval_s, now)
            agent.idle = not expects_results
            self._agents_by_region.setdefault(region, []).append(agent)
            self._reconcile_degraded(now)
            self._reconcile_isolation(region, now)
            return
        agent.connected = True
        agent.idle = not expects_results
        agent.interval_s = interval_s
        agent.labels = dict(labels)
        agent.network = agent.labels.get("network") or f"agent:{agent_id}"
        if agent.region != region:
            self._move_agent(agent, region, now)
        else:
            self._reconcile_isolation(region, now)

    def agent_disconnected(self, agent_id: str, now: float) -> None:  # noqa: ARG002 - contract
        """The agent's stream ended: connected=false now; its verdicts count until stale."""
        agent = self._agents.get(agent_id)
        if agent is not None:
            agent.connected = False

    # One function: the hot loop costs less inline than split into calls per result.
    def apply(self, agent_id: str, results: Iterable[ResultLike], now: float) -> int:  # noqa: C901
        """Apply a batch of one connected agent's results (already deduplicated).

        Returns the number applied. The hot path: most results change nothing but the
        pair's latest sample and must cost a few microseconds. Raises ValueError for an
        agent that never said hello (the ingest calls `agent_connected` first).
        """
        agent = self._agents.get(agent_id)
        if agent is None:
            raise ValueError(f"apply: agent {agent_id!r} never said hello")
        if agent.stale:
            results = list(results)
            if results:
                self._revive(agent, now)
        pairs = agent.pairs
        up = _UP
        applied = 0
        now_ms = int(now * 1000)
        for result in results:
            pair = pairs.get(result.probe)
            if pair is None:
                pair = self._new_pair(agent, result, now)
            pair.at = now
            pair.duration_seconds = result.duration_seconds
            pair.status_code = result.status_code
            pair.interval_ms = result.interval_ms
            pair.stamp_ms = result.timestamp_ms
            applied += 1
            if result.success:
                pair.success = True
                stamp = pair.stamp_ms or now_ms
                if stamp > agent.ok_ms:
                    agent.ok_ms = stamp
                    if agent.awaiting_ms and stamp >= agent.awaiting_ms:
                        self._alibi(agent, now)
                if (pair.verdict == up and pair.fresh and not pair.region_state.down_memory
                        and pair.probe_state.hold_until == 0.0):
                    # Nothing but the sample changed; a pending failure whose re-probe
                    # passed ends its streak here (no vote read it: nothing to evaluate).
                    pair.first_fail_ms = 0
                    continue
                self._on_success(pair, result, now)
            else:
                pair.success = False
                self._on_failure(pair, result, now)
        if applied:
            agent.last_seen = agent.last_heard = now
            if agent.first_result_at is None:
                agent.first_result_at = now
        return applied

    def tick(self, now: float) -> None:
        """Time passes: staleness, impairment re-checks, flapping decay, degraded state."""
        stale_after = self._params.stale_after_intervals
        for agent in list(self._agents.values()):
            if agent.idle and agent.connected and not agent.pairs:
                agent.last_heard = now
                continue
            if not agent.stale and now - agent.last_heard >= stale_after * agent.interval_s:
                self._mark_stale(agent, now)
        for agent in list(self._agents.values()):
            if not agent.stale and now >= agent.next_scan:
                agent.next_scan = now + agent.interval_s
                self._expire_pairs(agent, now)
        for agent in sorted(self._agents.values(), key=lambda a: a.id):
            # Evidence scans cost O(probes x agents): once per agent interval is enough.
            if (agent.suspect or agent.impaired) and not agent.stale and now >= agent.next_check:
                agent.next_check = now + agent.interval_s
                self._check_impairment(agent, now, thorough=True)
        self._release_holds(now)
        for name in sorted(self._flap_watch):
            self._decay_flapping(self._probes[name], now)
        for region in sorted(self._isolated):
            self._reconcile_isolation(region, now)
        self._reconcile_degraded(now)

    def take_transitions(self) -> list[Transition]:
        """Everything that changed since the last call, in order; clears the list."""
        taken = self._transitions
        self._transitions = []
        return taken

    def take_health_changes(self) -> list[AgentHealthChange]:
        """Agents' health changes since the last call, in order (for the log); clears them."""
        taken = self._health_changes
        self._health_changes = []
        return taken

    # -- read side (API, metrics, demo) ---------------------------------------------------

    def targets(self) -> list[TargetView]:
        """Every probe's fleet-wide view, sorted by probe name."""
        return [self._probes[name].view() for name in sorted(self._probes)]

    def target(self, probe: str) -> TargetView | None:
        """One probe's fleet-wide view, or None for a probe never seen."""
        found = self._probes.get(probe)
        return None if found is None else found.view()

    def agents(self) -> list[AgentView]:
        """Every agent ever seen, sorted by id."""
        return [self._agents[agent_id].view() for agent_id in sorted(self._agents)]

    def agent_probes(self, agent_id: str) -> AbstractSet[str]:
        """The probes `agent_id` has a pair of here (empty for an agent never seen).

        A live view, for the ingest's per-agent probe cap: read it at once, do not keep it
        across calls that apply results. Pairs are kept for good (an expired pair only stops
        being fresh), so an agent's count only grows until the collector restarts.
        """
        agent = self._agents.get(agent_id)
        return agent.pairs.keys() if agent is not None else frozenset()

    def open_outages(self) -> list[OutageRecord]:
        """Open outage records of every kind, oldest detection first."""
        records = [p.outage.record for p in self._probes.values() if p.outage is not None]
        records.extend(side.record for side in self._services.values())
        records.extend(side.record for side in self._isolated.values())
        if self._degraded is not None:
            records.append(self._degraded.record)
        records.sort(key=lambda r: (r.detected_at, r.id))
        return records

    def region_verdicts(self, probe: str) -> Mapping[str, RegionVerdict]:
        """One probe's verdict per region (unknown included); empty for a probe never seen."""
        found = self._probes.get(probe)
        if found is None:
            return {}
        return {name: found.regions[name].verdict for name in sorted(found.regions)}

    def samples(self) -> Iterator[PairSample]:
        """Latest sample of every (agent, probe) pair, for probe_success and friends.

        The samples are live: read them while iterating, do not keep or change them.
        """
        for agent in self._agents.values():
            yield from agent.pairs.values()

    def maintenance_probes(self) -> frozenset[str]:
        """Probes a maintenance window covers in every region (probenet_maintenance_active)."""
        return frozenset(name for name in self._covered_probes
                         if self._probes[name].fully_covered())

    def isolated_regions(self) -> frozenset[str]:
        """Regions whose every agent (at least 2, distinct networks) is impaired."""
        return frozenset(self._isolated)

    def flapping_probes(self) -> frozenset[str]:
        """Probes currently flapping."""
        return frozenset(name for name, probe in self._probes.items() if probe.flapping)

    @property
    def monitoring_degraded(self) -> bool:
        """True while more than half of all agents are stale or impaired."""
        return self._degraded is not None

    # -- pairs -----------------------------------------------------------------------------

    def _probe(self, name: str) -> _Probe:
        found = self._probes.get(name)
        if found is None:
            found = self._probes[name] = _Probe(name)
            if self._maintenance_probes:
                self._apply_coverage(found, 0.0)
        return found

    def _new_pair(self, agent: _Agent, result: ResultLike, now: float) -> _Pair:
        probe = self._probe(result.probe)
        target, kind = result.target, result.kind
        pair = _Pair(agent, probe, target, kind, now)
        agent.pairs[probe.name] = pair
        pair.region_state.pairs.append(pair)
        self._note_identity(probe, pair, result, now)
        return pair

    def _note_identity(self, probe: _Probe, pair: _Pair, result: ResultLike, now: float) -> None:
        """Keep the probe's target/kind/service current (read on the slow path only)."""
        target, kind, service = result.target, result.kind, result.service or None
        changed = False
        if target != probe.target or kind != probe.kind:
            probe.target, probe.kind = target, kind
            changed = True
        # A probe in outage keeps its service: the service record is built on it.
        if service != probe.service and (service is not None or probe.outage is None):
            if probe.service is not None:
                self._service_probes.get(probe.service, set()).discard(probe.name)
            probe.service = service
            if service is not None:
                self._service_probes.setdefault(service, set()).add(probe.name)
            if self._maintenance_probes or self._maintenance_services or probe.in_maintenance:
                self._apply_coverage(probe, now)
            changed = True
        # Share the probe's strings when equal: one copy per probe, not per pair.
        pair.target = probe.target if target == probe.target else target
        pair.kind = probe.kind if kind == probe.kind else kind
        if changed:
            self._emit_view(probe, now)

    def _on_success(self, pair: _Pair, result: ResultLike, now: float) -> None:
        """Slow path of a success: the verdict becomes (or stays) up."""
        self._note_identity(pair.probe_state, pair, result, now)
        agent = pair.agent_state
        counts_changed = self._set_pair(pair, _UP, fresh=True)
        pair.streak = 0
        pair.first_fail_ms = 0
        if counts_changed:
            self._check_impairment(agent, now, skip=pair.probe_state)
        self._evaluate(pair.probe_state, now,
                       trigger=pair.region_state if agent.counted else None)

    def _on_failure(self, pair: _Pair, result: ResultLike, now: float) -> None:
        """A failure: pending (unconfirmed) or down (confirmed); counted for an open outage."""
        probe = pair.probe_state
        phase, reason = result.failed_phase, result.reason
        step = result.step if result.kind == _FLOW else ""
        pair.fail_phase, pair.fail_reason, pair.fail_step = phase, reason, step
        if pair.first_fail_ms == 0:
            stamp = result.timestamp_ms
            pair.first_fail_ms = stamp if stamp > 0 else -1
            pair.first_fail_at = now
        if result.target != probe.target or result.kind != probe.kind:
            self._note_identity(probe, pair, result, now)
        outage = probe.outage
        if (outage is not None and pair.region_state.verdict is _V_DOWN
                and pair.agent_state.counted and not probe.covers(pair.region)):
            self._count_failure(probe, outage, (phase_name(phase), reason or None, step or None),
                                now)
        agent = pair.agent_state
        if result.confirmed:
            old_verdict = pair.verdict
            counts_changed = self._set_pair(pair, _DOWN, fresh=True)
            pair.streak += 1
            # The alibi must postdate the latest confirmation: an agent whose network breaks
            # during a streak (begun by a random loss) has none for its later failures.
            pair.confirm_ms = result.timestamp_ms or int(now * 1000)
            if pair.confirm_ms > agent.ok_ms and (
                    not agent.awaiting_ms or pair.confirm_ms < agent.awaiting_ms):
                agent.awaiting_ms = pair.confirm_ms
            # Streak 1 and 2 change what the vote weighs (firm; the lone-agent rule).
            if not (counts_changed or old_verdict != _DOWN or pair.streak <= 2):
                return  # a down verdict confirmed again: nothing to re-evaluate
        else:
            counts_changed = self._set_pair(pair, pair.verdict, fresh=True)
            if not counts_changed:
                return  # pending: the verdict stands
        if counts_changed:
            self._check_impairment(agent, now, skip=probe)
        self._evaluate(probe, now)

    def _set_pair(self, pair: _Pair, verdict: int, *, fresh: bool) -> bool:
        """Set a pair's verdict and freshness; keep the agent's counts. True if they changed."""
        was_counted = pair.fresh and pair.verdict != _NO_VERDICT
        was_down = pair.fresh and pair.verdict == _DOWN
        pair.verdict = verdict
        pair.fresh = fresh
        counted = fresh and verdict != _NO_VERDICT
        down = fresh and verdict == _DOWN
        if counted == was_counted and down == was_down:
            return False
        agent = pair.agent_state
        agent.n_fresh += int(counted) - int(was_counted)
        agent.n_down += int(down) - int(was_down)
        return True

    def _expire_pairs(self, agent: _Agent, now: float) -> None:
        """Pairs whose last result is older than stale_after_intervals x the probe interval."""
        stale_after = self._params.stale_after_intervals
        expired: list[_Probe] = []
        for pair in agent.pairs.values():
            if not pair.fresh:
                continue
            interval_s = pair.interval_ms / 1000 if pair.interval_ms > 0 else agent.interval_s
            if now - pair.at >= stale_after * interval_s:
                self._set_pair(pair, pair.verdict, fresh=False)
                expired.append(pair.probe_state)
        if expired:
            self._check_impairment(agent, now)
            for probe in expired:
                self._evaluate(probe, now)

    # -- agents ----------------------------------------------------------------------------

    def _check_impairment(self, agent: _Agent, now: float, skip: _Probe | None = None, *,
                          thorough: bool = False) -> None:
        """The impairment rule; on a change, re-evaluate the agent's probes (but `skip`).

        Down on at least impaired_ratio of its fresh verdicts and impaired_min_probes of them
        makes an agent a suspect; it is impaired once other regions have seen at least
        impaired_min_probes of those probes up *after* its failures began (an up verdict
        from before the onset of a real outage is no evidence). It recovers when fewer than
        impaired_ratio of its probes are down, or when the other regions no longer see
        impaired_min_probes of its down probes up (they went down too: a real outage).

        On the results path (not `thorough`) only the counts are checked, plus one evidence
        scan when an agent first qualifies; `tick` re-scans suspects and impaired agents.
        """
        params = self._params
        if agent.stale:
            return
        fresh, down = agent.n_fresh, agent.n_down
        self._note_trouble(agent, fresh, down)
        if agent.impaired:
            # An agent with no fresh verdict keeps its flag until it says otherwise.
            if fresh and (down < params.impaired_ratio * fresh or (
                    thorough and self._seen_up(agent, after_failure=False)
                    < params.impaired_min_probes)):
                self._set_impaired(agent, impaired=False, now=now, skip=skip)
            return
        if down < params.impaired_min_probes or down < params.impaired_ratio * fresh:
            if agent.suspect:
                self._set_suspect(agent, suspect=False, now=now, skip=skip)
            return
        if agent.suspect and not thorough:
            return
        if self._seen_up(agent, after_failure=True) >= params.impaired_min_probes:
            self._set_impaired(agent, impaired=True, now=now, skip=skip)
        elif not agent.suspect:
            self._set_suspect(agent, suspect=True, now=now, skip=skip)

    def _note_trouble(self, agent: _Agent, fresh: int, down: int) -> None:
        """Keep `trouble_ms`: set when the counts first qualify, cleared once they do not.

        Only the agent's own results move its counts, so every collector of an HA pair dates
        the onset alike. An impaired agent keeps it while it stays impaired.
        """
        params = self._params
        if down >= params.impaired_min_probes and down >= params.impaired_ratio * fresh:
            if not agent.trouble_ms:
                # The latest stamp the agent sent so far: the result that crossed the line.
                agent.trouble_ms = max((p.stamp_ms for p in agent.pairs.values()), default=0)
        elif not agent.impaired or down < params.impaired_ratio * fresh:
            agent.trouble_ms = 0

    def _seen_up(self, agent: _Agent, *, after_failure: bool) -> int:
        """How many of the agent's down probes another region sees up (up to the threshold).

        `after_failure`: count only up results newer than the agent's first failure there.
        """
        enough = self._params.impaired_min_probes
        seen = 0
        for pair in agent.pairs.values():
            # A probe down under maintenance in the agent's region is no evidence against it.
            if (pair.fresh and pair.verdict == _DOWN and not pair.probe_state.covers(pair.region)
                    and self._up_elsewhere(pair, after_failure)):
                seen += 1
                if seen >= enough:
                    break
        return seen

    @staticmethod
    def _up_elsewhere(pair: _Pair, after_failure: bool) -> bool:
        home = pair.region_state
        for region in pair.probe_state.regions.values():
            if region is home or region.verdict is not _V_UP:
                continue
            if not after_failure or Classifier._heard_since(region, pair):
                return True
        return False

    def _alibi(self, agent: _Agent, now: float) -> None:
        """A success after confirmed failures: the agent's own network works after all.

        Its down verdicts confirmed before that success become firm (see `_vote`): their
        probes are evaluated again. The others keep waiting.
        """
        ok_ms = agent.ok_ms
        waiting = 0
        firm: list[_Probe] = []
        for pair in agent.pairs.values():
            if pair.verdict != _DOWN or not pair.fresh or not pair.streak:
                continue
            if pair.confirm_ms > ok_ms:
                waiting = pair.confirm_ms if not waiting else min(waiting, pair.confirm_ms)
            elif pair.confirm_ms >= agent.awaiting_ms:
                firm.append(pair.probe_state)
        agent.awaiting_ms = waiting
        for probe in firm:
            self._evaluate(probe, now)

    def _note_health(self, agent: _Agent, previous: AgentHealth, now: float) -> None:
        health = agent.health
        if health is not previous:
            self._health_changes.append(AgentHealthChange(
                agent.id, agent.region, health, previous, down=agent.n_down,
                fresh=agent.n_fresh, seen_up=self._seen_up(agent, after_failure=False),
                at=now))

    def _set_suspect(self, agent: _Agent, *, suspect: bool, now: float,
                     skip: _Probe | None) -> None:
        previous = agent.health
        agent.suspect = suspect
        if suspect:
            self._suspects.add(agent.id)
        else:
            self._suspects.discard(agent.id)
        self._note_health(agent, previous, now)
        for pair in list(agent.pairs.values()):
            if pair.probe_state is not skip and pair.fresh and pair.verdict == _DOWN:
                self._evaluate(pair.probe_state, now)

    def _set_impaired(self, agent: _Agent, *, impaired: bool, now: float,
                      skip: _Probe | None) -> None:
        if not impaired:
            # Down verdicts from the impaired time must be confirmed again before they count
            # as firm: an agent whose network heals probe by probe opens nothing on the way.
            for pair in agent.pairs.values():
                if pair.verdict == _DOWN:
                    pair.streak = 0
        previous = agent.health
        agent.set_flags(impaired=impaired)
        agent.suspect = False
        self._suspects.discard(agent.id)
        self._note_health(agent, previous, now)
        self._agent_changed(agent, now, skip=skip)

    def _mark_stale(self, agent: _Agent, now: float) -> None:
        previous = agent.health
        agent.set_flags(stale=True)
        agent.suspect = False
        self._suspects.discard(agent.id)
        self._note_health(agent, previous, now)
        self._agent_changed(agent, now)

    def _revive(self, agent: _Agent, now: float) -> None:
        """Results from a stale agent: it counts again (with its still-fresh verdicts)."""
        previous = agent.health
        agent.set_flags(stale=False)
        agent.next_scan = now + agent.interval_s
        stale_after = self._params.stale_after_intervals
        for pair in agent.pairs.values():
            interval_s = pair.interval_ms / 1000 if pair.interval_ms > 0 else agent.interval_s
            if pair.fresh and now - pair.at >= stale_after * interval_s:
                self._set_pair(pair, pair.verdict, fresh=False)
        was_impaired = agent.impaired
        self._note_health(agent, previous, now)
        self._check_impairment(agent, now)  # on a flip, this re-evaluates everything itself
        if not was_impaired and not agent.impaired:
            self._agent_changed(agent, now)

    def _agent_changed(self, agent: _Agent, now: float, skip: _Probe | None = None) -> None:
        """Staleness or impairment changed: re-derive what depends on it.

        Degraded first (it gates new outages), then the region's isolation, then every probe
        the agent reports on.
        """
        self._reconcile_degraded(now)
        self._reconcile_isolation(agent.region, now)
        for pair in list(agent.pairs.values()):
            if pair.probe_state is not skip and pair.fresh and pair.verdict != _NO_VERDICT:
                self._evaluate(pair.probe_state, now)

    def _move_agent(self, agent: _Agent, region: str, now: float) -> None:
        old_region = agent.region
        self._agents_by_region[old_region].remove(agent)
        self._agents_by_region.setdefault(region, []).append(agent)
        agent.region = region
        for pair in agent.pairs.values():
            pair.region_state.pairs.remove(pair)
            pair.region_state = pair.probe_state.region(region)
            pair.region_state.pairs.append(pair)
            pair.region = region
        self._reconcile_isolation(old_region, now)
        self._reconcile_isolation(region, now)
        for pair in list(agent.pairs.values()):
            self._evaluate(pair.probe_state, now)

    # -- regions and probes ----------------------------------------------------------------

    def _evaluate(self, probe: _Probe, now: float, trigger: _RegionState | None = None, *,
                  covered_changed: bool = False) -> None:
        """Region verdicts, then the probe's state, then its outage record.

        `trigger` is the region whose counted agent just sent an up result: only such an
        evaluation counts towards a down region's recovery. `covered_changed`: maintenance
        coverage changed (the view changes even when no verdict does).
        """
        params = self._params
        regions = probe.regions.values()
        # "Another region sees the probe down too": two regions vote down, firm or not.
        voting_down = _vote(regions, params.regional_confirmations)
        if voting_down >= 2 and probe.in_maintenance:
            # A covered region's down vote corroborates nothing (maintenance fails it).
            voting_down = sum(1 for r in regions
                              if r.raw is _V_DOWN and not probe.covers(r.name))
        corroborated = voting_down >= 2
        changed = _settle(regions, corroborated=corroborated, trigger=trigger,
                          recover_after=params.recover_after)
        changed = changed or covered_changed
        if probe.covered_all or probe.covered:
            state = self._covered_state(probe)
        else:
            state = target_state((r.verdict for r in regions), params)
        if state is not probe.state:
            probe.state = state
            changed = True
            if state is TargetState.UP:
                probe.up_since = now
            self._note_state_change(probe, state, now)
        if changed:
            self._emit_view(probe, now)
        self._reconcile_outage(probe, now, changed=changed)

    def _covered_state(self, probe: _Probe) -> TargetState:
        """A partly or wholly covered probe's state: covered regions with a verdict count as up.

        Every region that reports the probe covered (or none reports it): maintenance.
        """
        regions = probe.regions
        if all(probe.covers(name) for name in regions):
            return TargetState.MAINTENANCE
        return target_state(
            (_V_UP if verdict is not _V_UNKNOWN and probe.covers(name) else verdict
             for name, verdict in ((r.name, r.verdict) for r in regions.values())),
            self._params)

    def _recovered(self, probe: _Probe) -> bool:
        """An open record may resolve: the probe is up, and no covered region sees it down."""
        if not probe.in_maintenance:
            return probe.state is TargetState.UP
        verdicts = [region.verdict for region in probe.regions.values()]
        return (probe.state in _RECOVERABLE_STATES and _V_DOWN not in verdicts
                and _V_UP in verdicts)

    def _record_regions(self, probe: _Probe, record: OutageRecord) -> list[str]:
        """The regions an open record names now: down, and uncovered or named already."""
        if not probe.in_maintenance:
            return probe.down_regions()
        named = record.regions
        return [region.name for region in probe.regions.values()
                if region.verdict is _V_DOWN and (not probe.covers(region.name)
                                                  or region.name in named)]

    def _note_state_change(self, probe: _Probe, state: TargetState, now: float) -> None:
        """Flapping: count changes between up and an outage (either scope) inside the window."""
        if state is TargetState.UNKNOWN or state is TargetState.MAINTENANCE:
            return
        previous, probe.last_stable = probe.last_stable, state
        # Only up <-> outage counts: one outage passing through regional and global is one
        # outage, not four changes.
        if previous is None or (previous is TargetState.UP) == (state is TargetState.UP):
            return
        params = self._params
        changes = probe.changes
        changes.append(now)
        while changes and changes[0] <= now - params.flap_window_s:
            changes.popleft()
        self._flap_watch.add(probe.name)
        if not probe.flapping and len(changes) > params.flap_max_changes:
            probe.flapping = True  # the caller emits the TargetChange carrying the flag

    def _decay_flapping(self, probe: _Probe, now: float) -> None:
        """Flapping ends when the window holds few changes, or none came for a sixth of it.

        The quiet rule (5 minutes by default) keeps a record held open by flapping from
        lingering for the whole window after the probe settled.
        """
        params = self._params
        changes = probe.changes
        while changes and changes[0] <= now - params.flap_window_s:
            changes.popleft()
        quiet = not changes or now - changes[-1] >= params.flap_window_s / 6
        if probe.flapping and (quiet or len(changes) <= params.flap_max_changes // 2):
            probe.flapping = False
            self._emit_view(probe, now)
            self._reconcile_outage(probe, now, changed=True)
        if not changes and not probe.flapping:
            self._flap_watch.discard(probe.name)

    # -- probe outages -----------------------------------------------------------------------

    def _reconcile_outage(self, probe: _Probe, now: float, *, changed: bool) -> None:
        """Open, update or resolve the probe's record to match its state.

        Unknown leaves an open record alone (no evidence either way); up resolves it unless
        the probe is flapping; no new record opens while monitoring is degraded. Under
        maintenance (`set_maintenance`), an open record resolves only once no region sees
        the probe down.
        """
        state = probe.state
        outage = probe.outage
        if probe.hold_until and (state is not TargetState.REGIONAL_OUTAGE or outage is not None):
            self._end_hold(probe)
        if state in _OUTAGE_STATES:
            if outage is None:
                if self._degraded is None and not self._hold_scope(probe, now):
                    self._open_probe_outage(probe, now)
            elif changed:
                self._update_probe_outage(probe, outage, now)
        elif outage is not None and not probe.flapping and self._recovered(probe):
            probe.outage = None
            # A record held open by flapping ends when the probe last turned up (the uptime
            # it reports must not count the quiet minutes the flapping took to die down).
            ended = probe.up_since if outage.record.flapping and probe.up_since else now
            record = outage.record.with_flapping(False).ended(ended)
            self._emit_outage(OutageEvent.RESOLVED, record, now)
            self._show_step(probe, now)
            if record.service:
                self._reconcile_service(record.service, now)
        elif outage is not None and changed:
            self._update_probe_outage(probe, outage, now)

    def _hold_scope(self, probe: _Probe, now: float) -> bool:
        """Whether a new regional record should wait: the right scope first.

        A global outage reaches the regions one result at a time, so its first verdict is
        regional. The record waits while a region that is up has not sent a success stamped
        after the failure began (its next result is due: up, or the outage's reach), for at
        most `scope_hold_intervals` probe intervals from the first regional verdict. A
        regional outage is opened as soon as every up region has vouched, usually within the
        same interval; a global one is opened global.
        """
        hold_intervals = self._params.scope_hold_intervals
        if hold_intervals <= 0 or probe.state is not TargetState.REGIONAL_OUTAGE:
            return False
        failing = list(self._failing_pairs(probe))
        if not failing:
            return False
        if not probe.hold_until:
            interval_ms = max(p.interval_ms or round(p.agent_state.interval_s * 1000)
                              for p in failing)
            probe.hold_until = now + hold_intervals * interval_ms / 1000
            self._held.add(probe.name)
        if now >= probe.hold_until:
            self._end_hold(probe)
            return False
        # The latest streak start: a random loss just before the onset must not date it.
        onset = max(failing, key=lambda p: (p.first_fail_at, p.first_fail_ms))
        for region in probe.regions.values():
            if region.verdict is _V_UP and not self._heard_since(region, onset):
                return True
        self._end_hold(probe)
        return False

    def _release_holds(self, now: float) -> None:
        """Held regional records whose hold ran out open now (if still regional)."""
        for name in sorted(self._held):
            probe = self._probes[name]
            if now >= probe.hold_until:
                self._evaluate(probe, now)

    def _end_hold(self, probe: _Probe) -> None:
        probe.hold_until = 0.0
        self._held.discard(probe.name)

    @staticmethod
    def _heard_since(region: _RegionState, onset: _Pair) -> bool:
        """A counted agent of `region` sent a success stamped after `onset`'s first failure."""
        for pair in region.pairs:
            if not (pair.success and pair.fresh and pair.verdict == _UP
                    and pair.agent_state.counted):
                continue
            # Agent clocks when both are sane (NTP-close), else the receipt times.
            if onset.first_fail_ms > 0 and pair.stamp_ms > 0:
                if pair.stamp_ms > onset.first_fail_ms:
                    return True
            elif pair.at > onset.first_fail_at:
                return True
        return False

    def _failing_pairs(self, probe: _Probe) -> Iterator[_Pair]:
        """Counted agents in a failing streak, in the probe's down regions."""
        for region in probe.regions.values():
            if region.verdict is _V_DOWN and not probe.covers(region.name):
                for pair in region.pairs:
                    if pair.first_fail_ms and pair.fresh and pair.agent_state.counted:
                        yield pair

    def _first_failure_s(self, pair: _Pair) -> float:
        """When the pair's failing streak began: agent clock unless that clock is off."""
        if pair.first_fail_ms > 0:
            agent_s = pair.first_fail_ms / 1000
            interval_s = (pair.interval_ms / 1000 if pair.interval_ms > 0
                          else pair.agent_state.interval_s)
            trust = max(_CLOCK_TRUST_S, self._params.stale_after_intervals * interval_s)
            if abs(agent_s - pair.first_fail_at) <= trust:
                return agent_s
        return pair.first_fail_at

    def _open_probe_outage(self, probe: _Probe, now: float) -> None:
        """A record for the probe's outage, started at the earliest failure behind it."""
        counts: dict[_FailureKey, int] = {}
        # Not capped at `now`: an agent clock a little ahead must not make the start (and so
        # the id) depend on this collector's clock; the record shows it capped at detection.
        started: float | None = None
        for pair in self._failing_pairs(probe):
            key = (phase_name(pair.fail_phase), pair.fail_reason or None, pair.fail_step or None)
            counts[key] = counts.get(key, 0) + 1
            first = self._first_failure_s(pair)
            started = first if started is None else min(started, first)
        phase, reason, step = _most_seen(counts)
        # Failures during a maintenance window that just ended were maintenance.
        started = max(now if started is None else started,
                      min(probe.maintenance_ended_at, now))
        record_id, started = self._identify(OutageKind.PROBE, probe.name, started)
        record = OutageRecord.probe_outage(
            record_id, probe.name, service=probe.service, scope=probe.outage_scope(),
            regions=probe.down_regions(), phase=phase, reason=reason, step=step,
            started_at=started, detected_at=now)
        probe.outage = _ProbeOutage(record, counts)
        self._emit_outage(OutageEvent.OPENED, record, now)
        self._show_step(probe, now)
        if probe.service:
            self._reconcile_service(probe.service, now)

    def _update_probe_outage(self, probe: _Probe, outage: _ProbeOutage, now: float) -> None:
        """The open record follows the probe: scope, regions down now, failure, flapping.

        Up (the record held open while the probe flaps): no region is down now. Unknown: no
        evidence either way, the record keeps what it last showed.
        """
        old = outage.record
        scope = old.scope
        if probe.state in _OUTAGE_STATES:
            scope = probe.outage_scope()
            record = (old.with_scope(scope).with_regions(self._record_regions(probe, old))
                      .with_failure(*outage.top))
        elif probe.state is TargetState.UP:
            record = old.with_regions(self._record_regions(probe, old))
        else:
            record = old
        record = record.with_flapping(probe.flapping)
        if record == old:
            return
        outage.record = record
        event = OutageEvent.SCOPE_CHANGED if scope is not old.scope else OutageEvent.UPDATED
        self._emit_outage(event, record, now)
        self._show_step(probe, now)
        if record.service:
            self._reconcile_service(record.service, now)

    def _count_failure(self, probe: _Probe, outage: _ProbeOutage, key: _FailureKey,
                       now: float) -> None:
        counts = outage.counts
        count = counts[key] = counts.get(key, 0) + 1
        if key != outage.top and count > counts.get(outage.top, 0):
            outage.top = key
            self._update_probe_outage(probe, outage, now)

    # -- side records: service, region_isolated, monitoring_degraded ----------------------

    def _reconcile_service(self, service: str, now: float) -> None:
        """Open, extend, update or resolve the service record from its probes' records."""
        names = self._service_probes.get(service, set())
        in_outage = sorted(n for n in names if self._probe(n).outage is not None)
        side = self._services.get(service)
        if side is None and len(in_outage) < self._params.service_min_probes:
            return
        members = sorted(set(in_outage).union(side.record.probes if side else ()))
        open_records = [outage.record for n in members
                        if (outage := self._probe(n).outage) is not None]
        if not open_records:
            assert side is not None
            del self._services[service]
            self._emit_outage(OutageEvent.RESOLVED, side.record.ended(now), now)
            return
        # The service record sums up its probes' records: the widest scope, every region
        # down, the failure most of them show.
        scope = widest(*(r.scope for r in open_records))
        regions = {name for r in open_records for name in r.regions}
        failures: dict[_FailureKey, int] = {}
        for r in open_records:
            key = (r.phase, r.reason, r.step)
            failures[key] = failures.get(key, 0) + 1
        phase, reason, step = _most_seen(failures)
        if side is None:
            record_id, started = self._identify(OutageKind.SERVICE, service,
                                                min(r.started_at for r in open_records))
            record = OutageRecord.service_outage(
                record_id, service, probes=members, scope=scope, regions=regions,
                regions_ever={name for r in open_records for name in r.regions_ever},
                phase=phase, reason=reason, step=step, started_at=started, detected_at=now)
            self._services[service] = _SideRecord(record)
            self._emit_outage(OutageEvent.OPENED, record, now)
            return
        old = side.record
        record = (old.with_probes(members).with_scope(scope).with_regions(regions)
                  .with_failure(phase, reason, step))
        if record != old:
            side.record = record
            event = OutageEvent.SCOPE_CHANGED if scope is not old.scope else OutageEvent.UPDATED
            self._emit_outage(event, record, now)

    def _isolation_holds(self, region: str) -> bool:
        """Every agent of the region impaired, at least 2 of them, on at least 2 networks.

        Agents that are stale and not impaired, or have not reported yet, are left aside.
        """
        members = [a for a in self._agents_by_region.get(region, ())
                   if a.impaired or (not a.stale and a.first_result_at is not None)]
        return (len(members) >= 2 and all(a.impaired for a in members)
                and len({a.network for a in members}) >= 2)

    def _settled(self, agent: _Agent, now: float) -> bool:
        """The agent has reported for a full staleness window since the restart."""
        started = agent.first_result_at
        window = self._params.stale_after_intervals * agent.interval_s
        return started is not None and not agent.stale and now - started >= window

    def _isolation_start(self, region: str, now: float) -> float:
        """When the region became isolated, as its agents' own results date it.

        The latest trouble onset of its impaired agents (each an agent-clock stamp, see
        `_Agent.trouble_ms`); `now` when one is missing or further than the clock trust.
        """
        members = [a for a in self._agents_by_region.get(region, ()) if a.impaired]
        onsets = [a.trouble_ms for a in members]
        if not onsets or not all(onsets):
            return now
        started = max(onsets) / 1000
        trust = max(_CLOCK_TRUST_S,
                    self._params.stale_after_intervals * max(a.interval_s for a in members))
        return started if abs(started - now) <= trust else now

    def _identify(self, kind: OutageKind, subject: str, started: float) -> tuple[str, float]:
        """A new record's id and start (see the class docstring): never the last one's id.

        The start is clamped to no earlier than the end of the subject's last record (an
        outage cannot begin before the previous one of the same subject ended), then moved
        on by 1 ms while it would still give that record's id. The id's start also moves
        past the last id's start (when that is later than its end: an agent clock ahead), so
        a subject's ids start later and later and none is ever taken twice in a run.
        """
        last = self._last_records.get((kind, subject))
        if last is not None:
            _, last_ended, last_started_ms = last
            started = max(started, last_ended)
            if round(started * 1000) <= last_started_ms:
                started = (last_started_ms + 1) / 1000
        record_id = outage_id(kind, subject, started)
        self._id_starts_ms[record_id] = round(started * 1000)
        return record_id, started

    def _reconcile_isolation(self, region: str, now: float) -> None:
        side = self._isolated.get(region)
        if self._isolation_holds(region):
            if side is None:
                record_id, started = self._identify(OutageKind.REGION_ISOLATED, region,
                                                    self._isolation_start(region, now))
                record = OutageRecord.region_isolated(record_id, region, at=now,
                                                      started_at=started)
                self._isolated[region] = _SideRecord(record)
                self._emit_outage(OutageEvent.OPENED, record, now)
            else:
                side.restored = False
            return
        if side is None:
            return
        if side.restored and not any(
                not a.impaired and self._settled(a, now)
                for a in self._agents_by_region.get(region, ())):
            return  # adopted after a restart: wait for an agent of the region to vouch
        del self._isolated[region]
        self._emit_outage(OutageEvent.RESOLVED, side.record.ended(now), now)

    def _reconcile_degraded(self, now: float) -> None:
        agents = self._agents.values()
        troubled = [a for a in agents if a.stale or a.impaired]
        holds = bool(agents) and len(troubled) > self._params.degraded_ratio * len(agents)
        side = self._degraded
        regions = tuple(sorted({a.region for a in troubled}))
        if holds:
            if side is None:
                # Collector clock: staleness is silence, which no result dates.
                record_id, _ = self._identify(OutageKind.MONITORING_DEGRADED, "", now)
                record = OutageRecord.monitoring_degraded(record_id, regions, at=now)
                self._degraded = _SideRecord(record)
                self._emit_outage(OutageEvent.OPENED, record, now)
                return
            side.restored = False
            old = side.record
            record = old.with_regions(regions)
            if record != old:
                side.record = record
                self._emit_outage(OutageEvent.UPDATED, record, now)
            return
        if side is None:
            return
        if side.restored:
            # Adopted after a restart: wait until agents have had a staleness window to show.
            if not agents or self._restored_at is None:
                return
            window = self._params.stale_after_intervals * max(a.interval_s for a in agents)
            if now - self._restored_at < window:
                return
        self._degraded = None
        self._emit_outage(OutageEvent.RESOLVED, side.record.ended(now), now)
        # Outages that were held back open now if their evidence still holds.
        for name in sorted(self._probes):
            self._reconcile_outage(self._probes[name], now, changed=False)

    def _emit_outage(self, event: OutageEvent, record: OutageRecord, now: float) -> None:
        if event is OutageEvent.RESOLVED and record.ended_at is not None:
            started_ms = self._id_starts_ms.pop(record.id, round(record.started_at * 1000))
            self._last_records[(record.kind, _subject(record))] = (
                record.id, record.ended_at, started_ms)
        self._transitions.append(OutageTransition(event, record, now))

    def _emit_view(self, probe: _Probe, now: float) -> None:
        """A TargetChange carrying the probe's view now (the retained MQTT state)."""
        view = probe.view()
        probe.shown_step = view.step
        self._transitions.append(TargetChange(view, now))

    def _show_step(self, probe: _Probe, now: float) -> None:
        """A TargetChange when the step of the probe's open outage is not the one last shown.

        The view's `step` follows the outage record, which opens, changes and resolves after
        the view's own TargetChange: only flow probes ever differ (others' step is None).
        """
        if probe.step != probe.shown_step:
            self._emit_view(probe, now)
