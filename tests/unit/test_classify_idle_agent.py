"""A sharded agent with no probe in this collector's shard (Hello.probe_count 0) is idle, not
stale, while its stream is up; once it disconnects, or sends results and then falls silent,
staleness applies as to any agent."""

from __future__ import annotations

from probenet.collector.classify import Classifier
from probenet.collector.model import ClassificationParams, OutageKind
from support.classifier_fleet import START, Result

INTERVAL_S = 10.0


def stale(clf: Classifier) -> dict[str, bool]:
    return {view.id: view.stale for view in clf.agents()}


def connect_pair(*, expects_results: bool) -> Classifier:
    clf = Classifier(ClassificationParams())
    clf.agent_connected("eu-1", "eu", {}, INTERVAL_S, START, expects_results=expects_results)
    clf.agent_connected("us-1", "us", {}, INTERVAL_S, START, expects_results=expects_results)
    return clf


def test_an_idle_agent_stays_fresh_while_connected() -> None:
    clf = connect_pair(expects_results=False)
    for step in range(1, 20):
        clf.tick(START + step * INTERVAL_S)
    assert stale(clf) == {"eu-1": False, "us-1": False}
    assert not [r for r in clf.open_outages() if r.kind is OutageKind.MONITORING_DEGRADED]


def test_an_agent_that_expects_results_goes_stale_when_silent() -> None:
    clf = connect_pair(expects_results=True)
    for step in range(1, 20):
        clf.tick(START + step * INTERVAL_S)
    assert stale(clf) == {"eu-1": True, "us-1": True}
    assert [r.kind for r in clf.open_outages()] == [OutageKind.MONITORING_DEGRADED]


def test_an_idle_agent_goes_stale_once_disconnected() -> None:
    clf = connect_pair(expects_results=False)
    clf.tick(START + INTERVAL_S)
    clf.agent_disconnected("eu-1", START + INTERVAL_S)
    for step in range(2, 20):
        clf.tick(START + step * INTERVAL_S)
    assert stale(clf) == {"eu-1": True, "us-1": False}


def test_an_idle_agent_that_sent_results_goes_stale_when_silent() -> None:
    clf = connect_pair(expects_results=False)
    clf.apply("eu-1", [Result("web")], START + 1)
    for step in range(1, 20):
        clf.tick(START + step * INTERVAL_S)
    assert stale(clf) == {"eu-1": True, "us-1": False}
