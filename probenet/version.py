"""The probenet version, shared by agent and collector (and sent in Hello/Welcome)."""

__version__ = "0.1.0"
