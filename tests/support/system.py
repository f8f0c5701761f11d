"""Fixtures shared by every test: system binaries (skip on a laptop, fail in CI), free ports."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from probenet.lab.fleet import pick_free_port

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def need_binary(name: str, package: str) -> str:
    """Path of a system binary; skip with a reason on a laptop, fail when CI=true."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if found:
        return found
    reason = f"{name} not installed (Debian package {package}; `make test` as root installs it)"
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def need_root(what: str) -> None:
    """Skip (laptop) or fail (CI) when not running as root."""
    if os.geteuid() == 0:
        return
    reason = f"{what} needs root"
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for servers that cannot bind port 0).

    Picked outside the kernel's ephemeral range, so an outgoing connection of another test
    cannot take it before the server binds it.
    """
    return pick_free_port(host)
