"""The demo's story: its fleet (four regions, seven agents), its probes, and its phases.

Regions and agents, each agent on its own loopback source address:

    eu-central  fra-1 127.0.1.1, fra-2 127.0.1.2   (fra-2's own network breaks in phase 6)
    us-east     iad-1 127.0.2.1, iad-2 127.0.2.2
    ap-south    bom-1 127.0.3.1, bom-2 127.0.3.2   (sees the regional outage of phase 4)
    sa-east     gru-1 127.0.4.1

Every agent runs the same eleven probes (so that the broken agent has enough probes for the
impaired rule, and so that the five probes of the global outage stay below half of any
agent's probes: a healthy agent watching a global outage is never taken for a broken one).

`social-login` is a `flow` probe walking the social service's login journey (home page,
login form with a password from a secret file, feed): in the `login_outage` phase the pages
keep answering 200 from everywhere while every login is refused, the outage that motivated
probenet, and the collector must say "global outage of social-login, at step login".
"""

from __future__ import annotations

from probenet.lab.fleet import AgentSeat, FleetPlan, ProbePlan
from probenet.lab.targets import FaultMode

from .schedule import Fault, Phase, Schedule

AGENTS: tuple[AgentSeat, ...] = (
    AgentSeat("fra-1", "eu-central", "127.0.1.1", "as64501"),
    AgentSeat("fra-2", "eu-central", "127.0.1.2", "as64502"),
    AgentSeat("iad-1", "us-east", "127.0.2.1", "as64511"),
    AgentSeat("iad-2", "us-east", "127.0.2.2", "as64512"),
    AgentSeat("bom-1", "ap-south", "127.0.3.1", "as64521"),
    AgentSeat("bom-2", "ap-south", "127.0.3.2", "as64522"),
    AgentSeat("gru-1", "sa-east", "127.0.4.1", "as64531"),
)

SOCIAL_PROBES = ("social-web", "social-photos", "social-messenger", "social-threads")
SOCIAL_LOGIN = "social-login"
BANK_PROBES = ("bank-web", "bank-api")
REGIONAL_OUTAGE_REGION = "ap-south"
BROKEN_AGENT = "fra-2"

# The status page's map: each region's display name and position (latitude, longitude).
REGION_PLACES: dict[str, dict[str, object]] = {
    "eu-central": {"name": "Frankfurt", "location": [50.1, 8.7]},
    "us-east": {"name": "Virginia", "location": [38.9, -77.4]},
    "ap-south": {"name": "Mumbai", "location": [19.1, 72.9]},
    "sa-east": {"name": "São Paulo", "location": [-23.5, -46.6]},
}

PROBES: tuple[ProbePlan, ...] = (
    *(ProbePlan(name, "http", "social") for name in SOCIAL_PROBES),
    ProbePlan(SOCIAL_LOGIN, "flow", "social"),
    ProbePlan("bank-web", "http", "bank"),
    ProbePlan("bank-api", "tcp", "bank"),
    ProbePlan("news-web", "http", "news"),
    ProbePlan("news-dns", "dns", "news"),
    ProbePlan("mail-smtp", "tcp", "mail"),
    ProbePlan("cdn-dns", "dns", "cdn"),
)


def demo_plan(interval_s: float, http_port: int, grpc_port: int) -> FleetPlan:
    """The demo fleet with the given probe interval and collector ports.

    The probes live in the collector's fleet file: each agent's config holds only its
    identity, its collector and its token, and runs what the collector pushes.
    """
    return FleetPlan(agents=AGENTS, probes=PROBES, interval_s=interval_s,
                     http_port=http_port, grpc_port=grpc_port,
                     collector_settings={"regions": REGION_PLACES}, fleet_file=True)


def demo_phases() -> tuple[Phase, ...]:
    """The story, in order; it loops."""
    every_probe = frozenset(p.name for p in PROBES)
    recovery = Phase("recovery", "recovery: every fault lifted; outages close after 2 good "
                     "results per region")
    return (
        Phase("healthy", "all healthy: every probe answers from every region"),
        Phase("global_outage",
              "global outage: the social service (web, photos, messenger, threads, login) "
              "answers 503 from everywhere",
              (Fault(frozenset({*SOCIAL_PROBES, SOCIAL_LOGIN}), FaultMode.ERROR),)),
        recovery,
        Phase("login_outage",
              "login outage: social's pages still load from everywhere, but every login is "
              "refused (users are logged out and cannot log back in)",
              (Fault(frozenset({SOCIAL_LOGIN}), FaultMode.DENY_LOGIN),)),
        recovery,
        Phase("regional_outage",
              f"regional outage: bank (web stalls, api resets) only from "
              f"{REGIONAL_OUTAGE_REGION}",
              (Fault(frozenset({"bank-web"}), FaultMode.STALL,
                     regions=frozenset({REGIONAL_OUTAGE_REGION})),
               Fault(frozenset({"bank-api"}), FaultMode.RESET,
                     regions=frozenset({REGIONAL_OUTAGE_REGION})))),
        recovery,
        Phase("agent_impaired",
              f"broken agent: {BROKEN_AGENT}'s own network drops everything; it must be "
              "found impaired, with no outage raised on its word",
              (Fault(every_probe, FaultMode.STALL, agents=frozenset({BROKEN_AGENT})),)),
        recovery,
    )


def demo_schedule(interval_s: float) -> Schedule:
    """The demo's phases, each PHASE_INTERVALS probe intervals long."""
    return Schedule.for_interval(demo_phases(), interval_s)
