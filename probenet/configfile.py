"""YAML config files parsed into typed pydantic models, with errors as `file:line:col: message`.

Both the agent and the collector load their YAML through `load_model`: the file is parsed
once into a tree whose every node remembers where it was written, validated by a frozen
pydantic model with `extra="forbid"`, and each validation error is mapped back to the
position of the key or value it is about. Durations are written `500ms`, `30s`, `5m`, `1h`
(or combined, `1m30s`) and become float seconds. The field types both configs share (names,
labels, addresses, durations) are defined here, once.

Config files are input like any other: the loader reads at most MAX_CONFIG_BYTES, refuses
nesting beyond MAX_DEPTH, recursive aliases and alias bombs before composing, constructs
only the standard tags of plain data (never `!!python/...`), supports merge keys
(`<<: *base`), and turns every failure into a ConfigError whose issues are `file:line:col`.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from collections.abc import Callable, Sequence
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


_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|TiB|kB|MB|GB|TB)?")
_UNIT_BYTES = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
               "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_size(value: Any) -> int:
    """Parse `512MiB`, `2GB` or a whole number of bytes into bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        msg = f"invalid size {value!r}: write it like 512MiB, 2GiB or 1GB"
        raise ValueError(msg)
    return int(match.group(1)) * _UNIT_BYTES[match.group(2)]


ByteSize = Annotated[int, BeforeValidator(parse_size)]
"""A size field: written `512MiB` (or a number of bytes) in YAML, held as int bytes."""


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


_YAML_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(f"{_YAML_TAG}{name}"
                         for name in ("str", "int", "float", "bool", "null", "timestamp"))
_SEQ_TAG = f"{_YAML_TAG}seq"
_MAP_TAG = f"{_YAML_TAG}map"
# The resolver gives a plain `<<` the merge tag and a plain `=` the value tag, wherever they
# are written; only `<<` as a key means a merge, elsewhere both are just text.
_MERGE_TAG = f"{_YAML_TAG}merge"
_TEXT_TAGS = frozenset((_MERGE_TAG, f"{_YAML_TAG}value"))


def _show_tag(tag: str) -> str:
    """A tag the way it is usually written (`!!int`, `!foo`)."""
    return f"!!{tag.removeprefix(_YAML_TAG)}" if tag.startswith(_YAML_TAG) else tag


class _TreeBuilder:
    """Turns a composed YAML node graph into plain data, recording every node's position.

    Only the standard tags of plain data are accepted (`!!str`, `!!int`, `!!float`,
    `!!bool`, `!!null`, `!!timestamp`, `!!seq`, `!!map`): anything else (`!!python/...`,
    `!!binary`, `!!set`, local `!foo` tags) is an issue at its position, never constructed.
    The graph has been checked by `_check_events` (bounded depth, no recursive alias, bounded
    expansion), so the recursion here is bounded.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.marks = _Marks()
        self.issues: list[ConfigIssue] = []
        self._constructor = yaml.constructor.SafeConstructor()

    def _issue(self, node: yaml.Node, message: str) -> None:
        self.issues.append(ConfigIssue(self.file, node.start_mark.line + 1,
                                       node.start_mark.column + 1, message))

    def build(self, node: yaml.Node, path: Path_) -> Any:
        """The data `node` holds; its position is recorded under `path`."""
        self.marks.value[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                self._issue(node, f"unsupported YAML tag {_show_tag(node.tag)} on a mapping")
                return None
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                self._issue(node, f"unsupported YAML tag {_show_tag(node.tag)} on a list")
                return None
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def scalar(self, node: yaml.Node) -> Any:
        """The value of a scalar node, or None with an issue when it cannot be read."""
        if not isinstance(node, yaml.ScalarNode):
            self._issue(node, "expected a plain value here")
            return None
        if node.tag in _TEXT_TAGS:
            return str(node.value)
        if node.tag not in _SCALAR_TAGS:
            self._issue(node, (f"unsupported YAML tag {_show_tag(node.tag)}: config files hold "
                               "plain strings, numbers, booleans, lists and mappings"))
            return None
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, KeyError, IndexError, TypeError, AttributeError,
                OverflowError):
            # PyYAML's scalar constructors fail with whatever their parsing step raises
            # (`!!bool maybe` is a KeyError, `!!timestamp x` an AttributeError, an empty
            # `!!int` an IndexError).
            self._issue(node, f"{node.value!r} is not a valid {_show_tag(node.tag)}")
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merges: list[yaml.Node] = []
        explicit: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE_TAG:
                merges.append(value_node)
            else:
                explicit.append((key_node, value_node))
        # Merge keys (`<<: *base`, `<<: [*a, *b]`): keys written in the mapping win over
        # merged ones, and among merged mappings the first listed wins, as YAML 1.1 says.
        for source in reversed(self._merge_sources(merges)):
            result.update(self._mapping(source, path))
        seen: set[str] = set()
        for key_node, value_node in explicit:
            if not isinstance(key_node, yaml.ScalarNode):
                self._issue(key_node, "keys must be plain scalars")
                continue
            key = self.scalar(key_node)
            if not isinstance(key, str | int | float | bool) or key is None:
                if key is not None or key_node.tag == f"{_YAML_TAG}null":
                    self._issue(key_node, "keys must be plain scalars")
                continue
            name = key if isinstance(key, str) else str(key)
            if name in seen:
                self._issue(key_node, f"duplicate key {key!r}")
                continue
            seen.add(name)
            child = (*path, name)
            self.marks.key[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[name] = self.build(value_node, child)
        return result

    def _merge_sources(self, merges: list[yaml.Node]) -> list[yaml.MappingNode]:
        """The mappings merged into one mapping, highest precedence first."""
        sources: list[yaml.MappingNode] = []
        for value_node in merges:
            items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for item in items:
                if isinstance(item, yaml.MappingNode) and item.tag == _MAP_TAG:
                    sources.append(item)
                else:
                    self._issue(item, "a merge key `<<` takes a mapping or a list of mappings")
        return sources


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


MAX_CONFIG_BYTES = 1 << 20
"""The largest config file read (1 MiB, hundreds of probes): `/dev/zero` is not a config."""

MAX_DEPTH = 64
"""The deepest nesting of lists and mappings, aliases expanded (real configs stay below 10)."""

MAX_NODES = 200_000
"""The most values a document may hold with its aliases expanded: stops alias bombs."""

_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def _position(text: str, index: int) -> tuple[int, int]:
    """The 1-based line and column of character `index`, counting breaks as PyYAML does."""
    line, line_start = 1, 0
    for match in _LINE_BREAK.finditer(text, 0, index):
        line, line_start = line + 1, match.end()
    return line, index - line_start + 1


@dataclass(slots=True)
class _OpenCollection:
    """A list or mapping whose end event has not come yet, while checking events."""

    anchor: str | None
    nodes: int = 1
    height: int = 1


class _ExpansionCheck:
    """Follows parser events, refusing what would explode or recurse when composed.

    PyYAML's parser is a state machine (no recursion), but its composer and our tree builder
    recurse, and aliases share nodes: a self-referencing alias (`a: &a [*a]`) never ends and
    six levels of nine aliases hold a million values. Each anchor's expanded size and height
    are known when its node ends, so an alias that would nest too deep, expand too far or
    refer to a node still open is refused at its own position.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.stack: list[_OpenCollection] = []
        self.sizes: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, height) once ended
        self.total = 0

    def _fail(self, event: yaml.Event, message: str) -> ConfigError:
        mark = event.start_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        return ConfigError([ConfigIssue(self.file, line, col, message)])

    def feed(self, event: yaml.Event) -> None:
        """Account for one event; raise ConfigError at the first one out of bounds."""
        if isinstance(event, yaml.CollectionStartEvent):
            if len(self.stack) >= MAX_DEPTH:
                raise self._fail(event, f"nested deeper than {MAX_DEPTH} levels")
            self.stack.append(_OpenCollection(event.anchor))
            self.total += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            done = self.stack.pop()
            if done.anchor is not None:
                self.sizes[done.anchor] = (done.nodes, done.height)
            self._add(done.nodes, done.height)
        elif isinstance(event, yaml.AliasEvent):
            self._alias(event)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                self.sizes[event.anchor] = (1, 0)
            self.total += 1
            self._add(1, 0)
        if self.total > MAX_NODES:
            raise self._fail(event, f"more than {MAX_NODES} values with aliases expanded "
                                    "(an alias bomb?)")

    def _alias(self, event: yaml.AliasEvent) -> None:
        if any(open_.anchor == event.anchor for open_ in self.stack):
            raise self._fail(event, f"alias *{event.anchor} refers to a node that contains it "
                                    "(a recursive alias)")
        # An unknown anchor is left to the composer, which names it.
        nodes, height = self.sizes.get(event.anchor or "", (1, 0))
        if len(self.stack) + height > MAX_DEPTH:
            raise self._fail(event, f"alias *{event.anchor} nests deeper than {MAX_DEPTH} levels")
        self.total += nodes
        self._add(nodes, height)

    def _add(self, nodes: int, height: int) -> None:
        """Count a finished child (`nodes` values, `height` levels) into its parent."""
        if self.stack:
            self.stack[-1].nodes += nodes
            self.stack[-1].height = max(self.stack[-1].height, height + 1)


def _check_events(text: str, file: str) -> list[yaml.Event]:
    """Parse `text` into events, checked by `_ExpansionCheck` before anything is composed."""
    check = _ExpansionCheck(file)
    events: list[yaml.Event] = []
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        check.feed(event)
        events.append(event)
    return events


class _EventComposer(yaml.composer.Composer, yaml.resolver.Resolver):
    """PyYAML's composer and resolver fed from events already checked by `_check_events`."""

    def __init__(self, events: list[yaml.Event]) -> None:
        self._events = events
        self._next = 0
        yaml.composer.Composer.__init__(self)
        yaml.resolver.Resolver.__init__(self)

    def check_event(self, *choices: type[yaml.Event]) -> bool:
        """Whether the next event is one of `choices` (any event, without choices)."""
        if self._next >= len(self._events):
            return False
        return not choices or isinstance(self._events[self._next], choices)

    def peek_event(self) -> yaml.Event:
        """The next event, left in place."""
        return self._events[self._next]

    def get_event(self) -> yaml.Event:
        """The next event, consumed."""
        event = self._events[self._next]
        self._next += 1
        return event


def _compose(text: str, file: str) -> list[yaml.Node]:
    """The documents of `text` as node graphs; YAML errors become `file:line:col` issues."""
    try:
        composer = _EventComposer(_check_events(text, file))
        docs: list[yaml.Node] = []
        while composer.check_node():
            node = composer.get_node()
            if node is not None:
                docs.append(node)
    except yaml.reader.ReaderError as exc:
        # The reader knows only a character index; say where that is, like every issue.
        line, col = _position(text, exc.position)
        raise ConfigError([ConfigIssue(
            file, line, col,
            f"character U+{exc.character:04X} is not allowed in YAML (write it escaped in a "
            "double-quoted string)" if isinstance(exc.character, int)
            else f"YAML: {exc.reason}")]) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([ConfigIssue(file, line, col, f"YAML syntax: {problem}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, 1, 1, f"YAML: {exc}")]) from exc
    return docs


def load_tree(text: str, file: str, *, allow_empty: bool = True) -> tuple[Any, _Marks]:
    """Parse YAML text into plain data plus the position of every node.

    An empty document (nothing but comments) is `{}` with `allow_empty`, else an issue:
    a config file that says nothing is a mistake, not a request for every default.
    """
    docs = _compose(text, file)
    if len(docs) > 1:
        second = docs[1].start_mark
        raise ConfigError([ConfigIssue(file, second.line + 1, second.column + 1,
                                       "expected one YAML document, found several")])
    if not docs:
        if not allow_empty:
            raise ConfigError([ConfigIssue(
                file, 1, 1, "the file is empty (write `{}` to take every default)")])
        return {}, _Marks()
    builder = _TreeBuilder(file)
    data = builder.build(docs[0], ())
    if builder.issues:
        builder.issues.sort(key=lambda i: (i.line, i.col))
        raise ConfigError(builder.issues)
    return data, builder.marks


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


def read_config_text(path: str | Path) -> str:
    """The UTF-8 text of a config file, at most MAX_CONFIG_BYTES; ConfigError otherwise."""
    file = str(path)
    try:
        with Path(path).open("rb") as stream:
            # Read one byte past the cap, never the whole file: it may be endless.
            raw = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([ConfigIssue(file, 1, 1,
                                       f"cannot read: {exc.strerror or exc}")]) from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigIssue(
            file, 1, 1, f"larger than {MAX_CONFIG_BYTES} bytes: not a config file")])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start].decode("utf-8")  # valid: the bad bytes start here
        line, col = _position(before, len(before))
        raise ConfigError([ConfigIssue(file, line, col, "not UTF-8 text")]) from exc


def load_model(model: type[ModelT], path: str | Path,
               checks: Sequence[CrossCheck] = ()) -> ModelT:
    """Read, parse and validate one config file; raise ConfigError naming every problem."""
    file = str(path)
    data, marks = load_tree(read_config_text(path), file, allow_empty=False)
    return validate_tree(model, data, marks, file, checks)


def load_text(model: type[ModelT], text: str, file: str = "<string>",
              checks: Sequence[CrossCheck] = ()) -> ModelT:
    """Parse and validate YAML text (for tests and generated configs; empty means `{}`)."""
    data, marks = load_tree(text, file)
    return validate_tree(model, data, marks, file, checks)


def resolve_path(value: str, context: Any) -> str:
    """Resolve a path written in a config file against that file's folder."""
    base = context.get("base_dir") if isinstance(context, dict) else None
    try:
        path = Path(value).expanduser()
    except RuntimeError as exc:
        # `~nosuchuser/...`: pathlib cannot find that home; a field error, not a crash.
        msg = f"cannot expand {value!r}: {exc}"
        raise ValueError(msg) from exc
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    return str(path)
