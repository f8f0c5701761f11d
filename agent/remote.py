"""Probe sets pushed by collectors (remote configuration): parse, check, merge, choose, keep.

A collector with a fleet file sends each agent a `ProbeConfig`: `document` is JSON,
`{"defaults": {...}, "probes": [...]}` in the agent's own probe syntax, and `version` is
the hex SHA-256 of `document`. An agent runs it only with `remote_config: true` and only
from a collector it authenticated (agent/stream.py decides that).

Parsing (`parse_set`) validates with the models and per-probe checks of agent/config.py;
a set whose version does not match its document, that is not JSON, or whose `defaults` are
invalid is refused whole (`RemoteSetError`). A probe that is invalid, named twice, or
named like a local probe is refused alone (`Refusal`), and so is one this agent cannot run
(`runnable_problem`: icmp without the privilege, a flow whose secret cannot be read); the
rest runs. Relative file paths in a pushed set are resolved against the agent's config
folder.

HA rule (`choose`): the agent keeps the last set each collector sent in this run (by the
Welcome's collector_id), plus the set restored from disk under the collector it came from
until that collector sends another. It runs the candidate with the latest `issued_at_ms`
(when the fleet file was last modified), ties broken by the larger `version` string: every
agent of an HA pair follows the newer fleet file, and two collectors with the same file
give the same choice on every agent.

Persistence (`save_set`, `load_set`): the running set is kept in
`<state_dir>/<agent id>.remote-probes.json`, written atomically (temporary file, fsync,
rename), so that a restart runs it at once, before (or without) any collector. A file
that cannot be read or does not hold a valid set is logged and ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .config import PROBE_CHECKS, ProbeDefaults, ProbeSpec, resolve_probe_timing, secret_problem

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path

    from probenet.configfile import CrossCheck

log = logging.getLogger(__name__)

FILE_FORMAT = 1
CLASH_REASON = "name clash with a local probe"


class RemoteSetError(ValueError):
    """A pushed set refused whole; the message says why (and names the fleet file)."""


@dataclass(frozen=True, slots=True)
class RemoteSet:
    """A probe set as a collector sent it (and as it is kept on disk)."""

    version: str
    document: str
    issued_at_ms: int
    source: str
    collector_id: str

    def rank(self) -> tuple[int, str]:
        """The HA order: the latest issued_at_ms, then the larger version."""
        return (self.issued_at_ms, self.version)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A probe of a pushed set the agent does not run, and why."""

    probe: str
    reason: str


@dataclass(frozen=True, slots=True)
class ParsedSet:
    """A pushed set's valid probes (timing resolved) and the probes refused while parsing."""

    remote: RemoteSet
    probes: tuple[ProbeSpec, ...]
    refused: tuple[Refusal, ...]


@dataclass(frozen=True, slots=True)
class Merged:
    """Local probes plus the pushed probes that run; `remote` holds those pushed ones."""

    probes: tuple[ProbeSpec, ...]
    remote: tuple[ProbeSpec, ...]
    refused: tuple[Refusal, ...]


def content_version(document: str) -> str:
    """The version of a document: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


def _describe(error: Any) -> str:
    loc = error["loc"]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if error["type"] == "extra_forbidden":
        return f"unknown key {field!r}"
    if error["type"] == "missing":
        return f"missing required key {field!r}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{field}: {message}" if field else message


def _validation_text(exc: ValidationError) -> str:
    return "; ".join(_describe(e) for e in exc.errors())


@dataclass(frozen=True, slots=True)
class _OneProbe:
    """What a per-probe check of agent/config.py reads: a config of one probe."""

    probes: list[ProbeSpec]
    defaults: ProbeDefaults


def parse_set(remote: RemoteSet, *, base_dir: Path,
              checks: Sequence[CrossCheck] = ()) -> ParsedSet:
    """Validate a pushed set like agent.yaml's probes; RemoteSetError when refused whole.

    `checks` run on each probe after agent/config.py's own (the agent adds
    `probes.unavailable_kinds`).
    """
    source = remote.source or "the collector's fleet file"
    if content_version(remote.document) != remote.version:
        msg = (f"{source}: version {remote.version[:12]!r} is not the SHA-256 of the "
               "document (damaged or altered on the way)")
        raise RemoteSetError(msg)
    try:
        data = json.loads(remote.document)
    except (ValueError, RecursionError) as exc:
        raise RemoteSetError(f"{source}: the document is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RemoteSetError(f"{source}: the document must be a JSON object")
    unknown = sorted(set(data) - {"defaults", "probes"})
    if unknown:
        raise RemoteSetError(f"{source}: unknown key {unknown[0]!r} (expected defaults, probes)")
    context = {"base_dir": base_dir}
    try:
        defaults = ProbeDefaults.model_validate(data.get("defaults") or {}, context=context)
    except ValidationError as exc:
        raise RemoteSetError(f"{source}: defaults: {_validation_text(exc)}") from None
    raw_probes = data.get("probes") or []
    if not isinstance(raw_probes, list):
        raise RemoteSetError(f"{source}: probes must be a list")
    probes: list[ProbeSpec] = []
    refused: list[Refusal] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_probes):
        name = str(raw.get("name", "")) if isinstance(raw, dict) else ""
        where = f"{source}: probes[{index}]" + (f" ({name!r})" if name else "")
        problem, spec = _parse_probe(raw, defaults, context, (*PROBE_CHECKS, *checks))
        if spec is not None and spec.name in seen:
            problem = f"duplicate probe name {spec.name!r} in the pushed set"
        if problem is not None or spec is None:
            refused.append(Refusal(name or f"probes[{index}]", f"{where}: {problem}"))
            continue
        seen.add(spec.name)
        probes.append(spec)
    return ParsedSet(remote, tuple(probes), tuple(refused))


def _parse_probe(raw: Any, defaults: ProbeDefaults, context: dict[str, Any],
                 checks: Sequence[CrossCheck]) -> tuple[str | None, ProbeSpec | None]:
    if not isinstance(raw, dict):
        return "a probe must be a JSON object", None
    try:
        spec = ProbeSpec.model_validate(raw, context=context)
    except ValidationError as exc:
        return _validation_text(exc), None
    resolve_probe_timing(spec, defaults)
    view = _OneProbe([spec], defaults)
    problems = [message for check in checks for _, message in check(view)]
    if problems:
        return "; ".join(problems), None
    return None, spec


def runnable_problem(spec: ProbeSpec, *,
                     icmp_problem: Callable[[str], str | None]) -> str | None:
    """Why this agent cannot run `spec` (None when it can).

    `icmp_problem(ip_family)` says why icmp sockets cannot be opened here (the privilege).
    """
    if spec.kind == "icmp":
        family = (spec.icmp.ip_family if spec.icmp is not None else None) or "ip4"
        problem = icmp_problem(family)
        if problem is not None:
            return f"icmp probes cannot run on this agent: {problem}"
    if spec.flow is not None:
        for name, secret in spec.flow.secrets.items():
            problem = secret_problem(secret)
            if problem is not None:
                return f"flow secret {name!r}: {problem}"
    return None


def merge(local: Sequence[ProbeSpec], parsed: ParsedSet | None, *,
          icmp_problem: Callable[[str], str | None]) -> Merged:
    """The local probes plus the pushed ones that can run here; clashes refused by name."""
    if parsed is None:
        return Merged(tuple(local), (), ())
    local_names = {spec.name for spec in local}
    remote: list[ProbeSpec] = []
    refused = list(parsed.refused)
    for spec in parsed.probes:
        if spec.name in local_names:
            refused.append(Refusal(spec.name, CLASH_REASON))
            continue
        problem = runnable_problem(spec, icmp_problem=icmp_problem)
        if problem is not None:
            refused.append(Refusal(spec.name, problem))
            continue
        remote.append(spec)
    return Merged((*local, *remote), tuple(remote), tuple(refused))


def choose(candidates: Iterable[RemoteSet]) -> RemoteSet | None:
    """The set to run among the candidates (the HA rule of the module docstring)."""
    return max(candidates, key=RemoteSet.rank, default=None)


# --------------------------------------------------------------------------- persistence


def remote_set_path(state_dir: Path, agent_id: str) -> Path:
    """Where an agent keeps the set it runs."""
    return state_dir / f"{agent_id}.remote-probes.json"


def save_set(path: Path, remote: RemoteSet) -> None:
    """Write `remote` to `path` atomically (tmp + fsync + rename); OSError on failure."""
    data = json.dumps({"format": FILE_FORMAT, "version": remote.version,
                       "issued_at_ms": remote.issued_at_ms,
                       "collector_id": remote.collector_id, "source": remote.source,
                       "document": remote.document}, indent=1)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a power cut
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _decode(text: str) -> RemoteSet:
    """The set a kept file holds; ValueError (or TypeError) saying what is wrong."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        msg = f"not a remote probe set of format {FILE_FORMAT}"
        raise ValueError(msg)
    fields = {key: data.get(key) for key in ("version", "document", "source", "collector_id")}
    issued = data.get("issued_at_ms")
    if not all(isinstance(value, str) for value in fields.values()):
        msg = "version, document, source and collector_id must be strings"
        raise TypeError(msg)
    if not isinstance(issued, int) or isinstance(issued, bool):
        msg = "issued_at_ms must be an integer"
        raise TypeError(msg)
    remote = RemoteSet(version=str(fields["version"]), document=str(fields["document"]),
                       source=str(fields["source"]), collector_id=str(fields["collector_id"]),
                       issued_at_ms=issued)
    if content_version(remote.document) != remote.version:
        msg = "the document does not match its version"
        raise ValueError(msg)
    return remote


def load_set(path: Path) -> RemoteSet | None:
    """The set kept at `path`; None when there is none, or (logged) when it is unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("remote probe set not restored: cannot read %s: %s", path, exc)
        return None
    try:
        return _decode(text)
    except (ValueError, TypeError, RecursionError) as exc:
        log.warning("remote probe set not restored: %s is damaged: %s", path, exc)
        return None
