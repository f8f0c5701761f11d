"""Fixtures every test may ask for by name; their code lives in the `support` package."""

from __future__ import annotations

from support.mosquitto import mosquitto_broker_fixture

__all__ = ["mosquitto_broker_fixture"]
