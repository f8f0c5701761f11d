"""The demo's exception tree.

DemoError                 a bad option or schedule; ends the demo with status 1
(the fleet's own failures are probenet.lab.errors.LabError and its subclasses, which end it
the same way)
"""

from __future__ import annotations


class DemoError(Exception):
    """Base of every error the demo itself raises on purpose."""
