"""The agent's exception tree.

    AgentError                    anything the agent raises on purpose
    ├── ProbeBuildError           a probe cannot be built from its spec (names the probe)
    ├── StreamError               a collector stream failed (the client reconnects)
    │   └── StreamRejectedError        the collector refused us (bad token, wrong region, ...)
    ├── StateError                the state directory or file cannot be used (names it)
    └── LifecycleError            a component was entered twice or used outside its context
                                  (also a probenet.lifecycle.LifecycleError)

Probe failures are not errors: they are outcomes (`agent.probes.base.ProbeFailure`).
"""

from __future__ import annotations

from probenet import lifecycle


class AgentError(Exception):
    """Base of every exception the agent raises on purpose."""


class ProbeBuildError(AgentError):
    """A probe could not be built from its config; `probe` names it."""

    def __init__(self, probe: str, message: str) -> None:
        """Keep the probe name as an attribute; the message names it too."""
        super().__init__(f"probe {probe!r}: {message}")
        self.probe = probe
        self.message = message


class StreamError(AgentError):
    """A stream to a collector failed; `collector` is its address."""

    def __init__(self, collector: str, message: str) -> None:
        """Keep the collector address as an attribute."""
        super().__init__(f"collector {collector}: {message}")
        self.collector = collector
        self.message = message


class StreamRejectedError(StreamError):
    """The collector refused the stream; `code` is the gRPC status code name."""

    def __init__(self, collector: str, code: str, message: str) -> None:
        """`code` is e.g. "UNAUTHENTICATED" or "PERMISSION_DENIED"."""
        super().__init__(collector, f"{code}: {message}")
        self.code = code


class StateError(AgentError):
    """The agent's state (agent/state.py) cannot be used; `path` names the file or folder."""

    def __init__(self, path: str, message: str) -> None:
        """Keep the path as an attribute; the message names it too."""
        super().__init__(f"agent state {path}: {message}")
        self.path = path
        self.message = message


class LifecycleError(AgentError, lifecycle.LifecycleError):
    """A long-lived component was entered twice, or used outside its context.

    Raised by `probenet.lifecycle.EnterOnce`; `component` names the component.
    """
