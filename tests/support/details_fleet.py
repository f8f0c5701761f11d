"""A real Classifier and LatestDetails fed the way the ingest feeds them, without gRPC."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probenet.collector.classify import Classifier
from probenet.collector.details import LatestDetails
from probenet.collector.model import ClassificationParams

if TYPE_CHECKING:
    from probenet.v1 import probenet_pb2 as pb


class DetailsFleet:
    """Agents' results applied to a classifier, their bytes kept in a details store."""

    def __init__(self) -> None:
        self.classifier = Classifier(ClassificationParams())
        self.details = LatestDetails()
        self.now = 100.0

    def send(self, agent: str, region: str, *messages: pb.ProbeResult) -> None:
        """Apply `messages` to the classifier, then keep their bytes (as the ingest does)."""
        self.now += 1
        self.classifier.agent_connected(agent, region, {}, 10.0, self.now)
        self.classifier.apply(agent, messages, self.now)
        self.details.update(agent, {m.probe: m.SerializeToString() for m in messages})
