"""A bounded, seeded fuzz run of the config loader over mutated example and test configs.

Each mutant must load into a config object or raise ConfigError whose every issue names the
file and a line and column inside it; any other exception (or a hang) is a bug. The seeds
are fixed, so a failure reproduces, and the failing text is shown.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from probenet.agent.config import load_config as load_agent_config
from probenet.agent.probes import unavailable_kinds
from probenet.cli import config_kind
from probenet.collector.config import load_config as load_collector_config
from probenet.collector.fleet import load_fleet
from probenet.configfile import ConfigError, load_tree, read_config_text

if TYPE_CHECKING:
    from collections.abc import Callable


ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("deploy/examples/**/*.yaml"), *ROOT.glob("tests/data/*/*.yaml")])
MUTANTS_PER_SEED = 60
SEEDS = range(6)
GENEROUS_S = 10.0  # only catches a runaway; the loader's speed is not what is tested here

# Fragments a hostile or clumsy hand writes into YAML.
HOSTILE = [
    "!!python/object:os.system", "!!python/name:os.system", "!foo", "!!float abc",
    "!!int 0xZZ", "!!timestamp x", "!!binary aGk=", "!!bool maybe", "!!set", "!!omap",
    "&a", "*a", "*nowhere", "&a [*a]", "<<: *a", "<<: 5", "<<:", "=", "~", "?", ":", "- ",
    "[", "]", "{", "}", ",", "'", '"', "\t", "\x00", "\x01", "\x1b", "\x7f", "\x85",
    "\u2028", "\ufeff", "\\", "%YAML 1.1", "%TAG ! tag:x,2000:", "---", "...", "#", "|", ">",
    "1e999", "-.inf", ".nan", "0x_", "0b2", "1:2:3", "2026-02-30", "9" * 60, "-1", "0",
    "~nobody-probenet/x.pem", "/dev/zero", "😀", "a" * 300, " " * 40, "\n", "\r", "\r\n",
]


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _delete_line(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    del lines[rng.randrange(len(lines))]
    return "\n".join(lines)


def _duplicate_line(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return "\n".join(lines)


def _swap_lines(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def _insert_fragment(rng: random.Random, text: str) -> str:
    at = rng.randrange(len(text) + 1)
    return text[:at] + rng.choice(HOSTILE) + text[at:]


def _replace_value(rng: random.Random, text: str) -> str:
    values = list(re.finditer(r"(?<=: )[^\n#]+", text))
    if not values:
        return _insert_fragment(rng, text)
    found = rng.choice(values)
    return text[:found.start()] + rng.choice(HOSTILE) + text[found.end():]


def _reindent(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    i = rng.randrange(len(lines))
    lines[i] = " " * rng.randrange(8) + lines[i].lstrip(" ")
    return "\n".join(lines)


def _flip_character(rng: random.Random, text: str) -> str:
    if not text:
        return rng.choice(HOSTILE)
    at = rng.randrange(len(text))
    return text[:at] + chr(rng.randrange(0x20, 0x7f)) + text[at + 1:]


def _truncate(rng: random.Random, text: str) -> str:
    return text[:rng.randrange(len(text) + 1)]


MUTATIONS: list[Callable[[random.Random, str], str]] = [
    _delete_line, _duplicate_line, _swap_lines, _insert_fragment, _insert_fragment,
    _replace_value, _replace_value, _reindent, _flip_character, _truncate,
]


def mutate(rng: random.Random, text: str) -> str:
    """`text` with one to four random mutations."""
    for _ in range(rng.randint(1, 4)):
        text = rng.choice(MUTATIONS)(rng, text)
    return text


def _load(path: Path) -> object:
    """Load `path` the way `probenet check` does: as an agent, fleet or collector config."""
    data, _ = load_tree(read_config_text(path), str(path))
    kind = config_kind(data)
    if kind == "agent":
        return load_agent_config(path, checks=(unavailable_kinds,))
    if kind == "fleet":
        return load_fleet(path)
    return load_collector_config(path)


def _assert_positioned(error: ConfigError, path: Path, text: str) -> None:
    line_count = text.count("\n") + text.count("\r") + text.count("\x85") + \
        text.count("\u2028") + text.count("\u2029") + 1
    assert error.issues, "a ConfigError without issues"
    for issue in error.issues:
        assert issue.file == str(path), issue
        assert 1 <= issue.line <= line_count, issue
        assert issue.col >= 1, issue
        assert issue.message.strip(), issue


def _mutants(seed: int) -> list[tuple[Path, str]]:
    rng = random.Random(seed)
    return [(source, mutate(rng, source.read_text(encoding="utf-8")))
            for source in (rng.choice(SOURCES) for _ in range(MUTANTS_PER_SEED))]


@pytest.mark.parametrize("seed", SEEDS)
def test_mutated_configs_load_or_fail_with_positions(seed, tmp_path, monkeypatch):
    assert len(SOURCES) >= 20
    monkeypatch.chdir(ROOT)  # test data names token files relative to the repository
    outcomes = {"loaded": 0, "refused": 0}
    for index, (source, text) in enumerate(_mutants(seed)):
        path = tmp_path / f"{index:03d}-{source.name}"
        path.write_text(text, encoding="utf-8", newline="")
        started = time.perf_counter()
        try:
            _load(path)
        except ConfigError as error:
            _assert_positioned(error, path, text)
            outcomes["refused"] += 1
        except Exception as exc:  # a failure of the test, shown with its input
            pytest.fail(f"seed {seed}, mutant of {source.name} raised {exc!r}:\n{text!r}")
        else:
            outcomes["loaded"] += 1
        assert time.perf_counter() - started < GENEROUS_S, f"seed {seed}: {text!r}"
    # Both outcomes occur: the mutations neither only break nor only keep the files.
    assert outcomes["refused"] > 0
    assert sum(outcomes.values()) == MUTANTS_PER_SEED


def test_probenet_check_over_mutants_never_prints_a_traceback(tmp_path):
    paths = []
    for index, (source, text) in enumerate(_mutants(seed=1000)):
        path = tmp_path / f"{index:03d}-{source.name}"
        path.write_text(text, encoding="utf-8", newline="")
        paths.append(path)
    done = subprocess.run(
        [sys.executable, "-c", "from probenet.cli import main; main()", "check",
         *map(str, paths)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in done.stderr
    assert "internal error" not in done.stderr
    assert done.returncode == (1 if done.stderr else 0)
    positioned = re.compile(rf"^{re.escape(str(tmp_path))}/\d{{3}}-[\w.-]+:\d+:\d+: \S")
    for line in done.stderr.splitlines():
        assert positioned.match(line), line
