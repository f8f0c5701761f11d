"""The demo tells an outage's path summary once per sentence, and only once traces exist."""

from __future__ import annotations

from probenet.demo.report import FleetObserver
from probenet.lab.snapshot import OutageEntry

OUTAGE = OutageEntry.model_validate({
    "id": "o-1", "kind": "probe", "probe": "web", "scope": "regional", "peak_scope": "regional",
    "regions": ["ap-south"], "started_at": "2027-01-15T08:00:00Z",
    "detected_at": "2027-01-15T08:00:02Z"})
TEXT = "path from ap-south stops after 198.18.3.1; eu-central passes it"


def detail(text: str | None, *, regions: bool = True) -> dict[str, object]:
    return {"paths": {"regions": {"ap-south": {}} if regions else {},
                      "summary": {"text": text}}}


def test_the_summary_is_told_once_per_sentence() -> None:
    observer = FleetObserver()
    assert observer.paths(OUTAGE, {"paths": None}) is None
    assert observer.paths(OUTAGE, detail("no trace from a failing region", regions=False)) is None
    event = observer.paths(OUTAGE, detail(TEXT))
    assert event is not None
    assert event.event == "outage_paths"
    assert event.message == f"outage probe web: {TEXT}"
    assert event.fields["paths"] == TEXT
    assert observer.paths(OUTAGE, detail(TEXT)) is None
    assert observer.paths(OUTAGE, detail(TEXT + "!")) is not None
