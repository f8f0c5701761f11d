"""The lab's exception tree.

LabError                  anything the lab cannot get past (a bad plan, a child that died)
├── FleetError            a child process (collector or agent) failed to start or died
├── ApiError              the collector's HTTP API could not be reached or answered badly
├── TargetsError          the fault-injecting targets could not be set up
└── LifecycleError        a fleet, client or targets entered twice or used outside its
                          context (also a probenet.lifecycle.LifecycleError)
"""

from __future__ import annotations

from probenet import lifecycle


class LabError(Exception):
    """Base of every error the lab raises on purpose."""


class FleetError(LabError):
    """A child process failed to start, did not become ready, or exited unexpectedly.

    `name` is the child (`collector` or an agent id); `log_tail` holds the last lines it
    wrote, so the cause is shown rather than lost in a temp directory.
    """

    def __init__(self, name: str, message: str, log_tail: str = "") -> None:
        """Name the child and keep the end of its log."""
        super().__init__(f"{name}: {message}")
        self.name = name
        self.log_tail = log_tail


class ApiError(LabError):
    """The collector's HTTP API failed or returned something outside its contract.

    `path` is the API path asked for (e.g. `/api/v1/targets`).
    """

    def __init__(self, path: str, message: str) -> None:
        """Name the path that failed."""
        super().__init__(f"{path}: {message}")
        self.path = path


class TargetsError(LabError):
    """The fault-injecting targets could not bind or were used wrongly."""


class LifecycleError(LabError, lifecycle.LifecycleError):
    """A fleet, client or set of targets was entered twice, or used outside its context.

    Raised by `probenet.lifecycle.EnterOnce`; `component` names the component.
    """
