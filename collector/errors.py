"""The collector's exception tree.

    CollectorError                  every error the collector raises on purpose
    ├── JournalError                the SQLite journal cannot be opened, migrated or written
    ├── ServiceError                the service cannot start (address in use, bad TLS files)
    ├── LifecycleError              a component was entered twice or used outside its
    │                               context (also a probenet.lifecycle.LifecycleError)
    └── StreamRejectedError         one agent stream broke the protocol or failed to
                                    authenticate; carries the gRPC status and a reason

Config files raise `probenet.configfile.ConfigError` (shared with the agent). Foreign errors
(sqlite3, grpc, aiohttp, OSError) are translated at the boundary with `raise ... from exc`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from probenet import lifecycle

if TYPE_CHECKING:
    import grpc


class CollectorError(Exception):
    """Base of every error the collector raises on purpose."""


class JournalError(CollectorError):
    """The outage journal cannot be opened, migrated or written."""

    def __init__(self, path: str, message: str) -> None:
        """`path` is the journal file, `message` what went wrong."""
        super().__init__(f"journal {path}: {message}")
        self.path = path


class ServiceError(CollectorError):
    """The collector service cannot start or stop cleanly."""


class LifecycleError(CollectorError, lifecycle.LifecycleError):
    """A long-lived component was entered twice, or used outside its context.

    Raised by `probenet.lifecycle.EnterOnce`; `component` names the component.
    """



class StreamRejectedError(CollectorError):
    """An agent stream is ended: `code` is the gRPC status, `reason` the counted reason."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        """`reason` is the label of probenet_ingest_rejections_total."""
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
