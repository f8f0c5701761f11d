"""Fixtures every test may ask for by name; their code lives in the `support` package."""

from __future__ import annotations

from hypothesis import settings

from support.mosquitto import mosquitto_broker_fixture

__all__ = ["mosquitto_broker_fixture"]

# Tests check behaviour, never wall-clock speed: hypothesis's per-example deadline (200 ms)
# failed property tests on a loaded 2-core machine, so it is off for every test.
settings.register_profile("probenet", deadline=None)
settings.load_profile("probenet")
