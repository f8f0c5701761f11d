"""YAML config files parsed into typed pydantic models, with errors as `file:line:col: message`.

Both the agent and the collector load their YAML through `load_model`: the file is parsed
once into a tree whose every node remembers where it was written, validated by a frozen
pydantic model with `extra="forbid"`, and each validation error is mapped back to the
position of the key or value it is about. Durations are written `500ms`, `30s`, `5m`, `1h`
(or combined, `1m30s`) and become float seconds. The field types both configs share (names,
labels, addresses, durations) are defined here, once.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from .addresses import split_host_port, split_listen
from .names import check_labels, check_name

ModelT = TypeVar("ModelT", bound=BaseModel)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|s|m|h|d)")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Parse `500ms`, `30s`, `5m`, `1h`, `1m30s` into seconds; bare numbers are refused."""
    if isinstance(value, bool) or not isinstance(value, str):
        msg = f"a duration is written with a unit, like 500ms, 30s or 5m (got {value!r})"
        raise ValueError(msg)  # noqa: TRY004 - pydantic turns ValueError into a field error
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        msg = f"invalid duration {value!r}: write it like 500ms, 30s, 5m or 1m30s"
        raise ValueError(msg)
    if not math.isfinite(total):
        raise ValueError(f"invalid duration {value!r}")
    return total


def format_duration(seconds: float) -> str:
    """Format seconds the way config files write them (`500ms`, `30s`, `5m`)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A duration field: written `30s` in YAML, held as float seconds."""


def check_host_port(value: str) -> str:
    """`value` when it is a `host:port` address (port 1-65535), else ValueError."""
    split_host_port(value)
    return value


def check_listen(value: str) -> str:
    """`value` when it is a listen address (`host:port`, port 0 allowed), else ValueError."""
    split_listen(value)
    return value


Name = Annotated[str, AfterValidator(check_name)]
"""An agent id, region, probe or collector name (the rule of `probenet.names`)."""

Labels = Annotated[dict[str, str], AfterValidator(check_labels)]
"""Labels such as `{network: as24940}` (the label rule of `probenet.names`)."""

HostPort = Annotated[str, AfterValidator(check_host_port)]
"""An address to connect to: `host:port` or `[v6]:port` (see `probenet.addresses`)."""

ListenAddress = Annotated[str, AfterValidator(check_listen)]
"""An address to listen on: like HostPort, and port 0 lets the kernel pick a free port."""


class FrozenModel(BaseModel):
    """Base of every config object: immutable, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file, at a 1-based line and column."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        """Render as `file:line:col: message`, the form editors and CI logs understand."""
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class ConfigError(Exception):
    """A config file could not be loaded; `issues` holds every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        """Keep every issue; the message lists them one per line."""
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues


Path_ = tuple[str | int, ...]


class _Marks:
    """Positions of every key and value in a YAML document, by path."""

    def __init__(self) -> None:
        self.value: dict[Path_, tuple[int, int]] = {}
        self.key: dict[Path_, tuple[int, int]] = {}

    def find(self, path: Path_, *, at_key: bool = False) -> tuple[int, int]:
        """The position of `path` (its key with `at_key`), or of its closest written ancestor."""
        for end in range(len(path), -1, -1):
            sub = path[:end]
            if at_key and end == len(path) and sub in self.key:
                return self.key[sub]
            if sub in self.value:
                return self.value[sub]
        return (1, 1)


def _build(node: yaml.Node, path: Path_, marks: _Marks, issues: list[ConfigIssue],
           file: str) -> Any:
    marks.value[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            where = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if not isinstance(key, str | int | float | bool) or key is None:
                issues.append(ConfigIssue(file, *where, "keys must be plain scalars"))
                continue
            if key in result:
                issues.append(ConfigIssue(file, *where, f"duplicate key {key!r}"))
                continue
            child = (*path, key if isinstance(key, str) else str(key))
            marks.key[child] = where
            result[key if isinstance(key, str) else str(key)] = _build(
                value_node, child, marks, issues, file)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), marks, issues, file) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (through Optional, list, tuple, dict)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _known_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The keys the model accepts at `path` (empty when the path cannot be followed)."""
    current: type[BaseModel] | None = model
    for part in path:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
    if current is None:
        return []
    return [f.alias or name for name, f in current.model_fields.items()]


def _error_message(err: Any, model: type[BaseModel] | None = None) -> str:
    kind = err["type"]
    loc = err["loc"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        known = _known_keys(model, tuple(loc[:-1])) if model is not None else []
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            return f"unknown key {key!r} (did you mean {close[0]!r}?)"
        return f"unknown key {key!r}"
    if kind == "missing":
        return f"missing required key {loc[-1]!r}"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return f"{field}: {msg}" if field else msg


def _iter_documents(text: str, file: str) -> Iterator[yaml.Node | None]:
    try:
        yield from yaml.compose_all(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([ConfigIssue(file, line, col, f"YAML syntax: {problem}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, 1, 1, f"YAML: {exc}")]) from exc


def load_tree(text: str, file: str) -> tuple[Any, _Marks]:
    """Parse YAML text into plain data plus the position of every node."""
    docs = list(_iter_documents(text, file))
    if len(docs) > 1:
        raise ConfigError([ConfigIssue(file, 1, 1, "expected one YAML document, found several")])
    marks = _Marks()
    if not docs or docs[0] is None:
        return {}, marks
    issues: list[ConfigIssue] = []
    data = _build(docs[0], (), marks, issues, file)
    if issues:
        raise ConfigError(issues)
    return data, marks


CrossCheck = Callable[[Any], list[tuple[Path_, str]]]
"""A check across fields (unique names, references) returning (path, message) pairs."""


def validate_tree(model: type[ModelT], data: Any, marks: _Marks, file: str,
                  checks: Sequence[CrossCheck] = ()) -> ModelT:
    """Validate parsed data with `model`, mapping every error to `file:line:col`.

    Relative paths in the file are resolved against the file's folder: validators find it
    as `info.context["base_dir"]`. `checks` run on the validated model, and their findings
    are reported at the position of the path they name.
    """
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(file, 1, 1, "the top level must be a mapping of keys")])
    base_dir = Path(file).parent if not file.startswith("<") else Path()
    try:
        result = model.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line, col = marks.find(loc, at_key=err["type"] == "extra_forbidden")
            issues.append(ConfigIssue(file, line, col, _error_message(err, model)))
        issues.sort(key=lambda i: (i.line, i.col))
        raise ConfigError(issues) from exc
    found = [ConfigIssue(file, *marks.find(path), message)
             for check in checks for path, message in check(result)]
    if found:
        found.sort(key=lambda i: (i.line, i.col))
        raise ConfigError(found)
    return result


def load_model(model: type[ModelT], path: str | Path,
               checks: Sequence[CrossCheck] = ()) -> ModelT:
    """Read, parse and validate one config file; raise ConfigError naming every problem."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(file, 1, 1, f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(file, 1, 1, "not UTF-8 text")]) from exc
    data, marks = load_tree(text, file)
    return validate_tree(model, data, marks, file, checks)


def load_text(model: type[ModelT], text: str, file: str = "<string>",
              checks: Sequence[CrossCheck] = ()) -> ModelT:
    """Parse and validate YAML text (for tests and generated configs)."""
    data, marks = load_tree(text, file)
    return validate_tree(model, data, marks, file, checks)


def resolve_path(value: str, context: Any) -> str:
    """Resolve a path written in a config file against that file's folder."""
    base = context.get("base_dir") if isinstance(context, dict) else None
    path = Path(value).expanduser()
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    return str(path)
