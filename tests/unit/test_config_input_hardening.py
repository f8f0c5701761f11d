"""Hostile config input: tags, bad scalars, control characters, bombs, huge files, merges.

Every file of `tests/data/hardening` was one of the tracebacks (or the silent acceptance) of
issue 11; each must now be one `file:line:col: message` issue and exit 1, quickly.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from probenet.agent.config import load_config as load_agent_config
from probenet.collector.config import load_config as load_collector_config
from probenet.collector.config import parse_config as parse_collector_config
from probenet.configfile import (
    MAX_CONFIG_BYTES,
    ConfigError,
    FrozenModel,
    load_text,
    read_config_text,
    resolve_path,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "hardening"

# file -> the one issue it must produce, as `line:col: message`.
BROKEN = {
    "python_object.yaml": "2:7: unsupported YAML tag !!python/object/apply:os.system on a list",
    "local_tag.yaml": ("2:7: unsupported YAML tag !later: config files hold plain strings, "
                       "numbers, booleans, lists and mappings"),
    "binary.yaml": ("2:9: unsupported YAML tag !!binary: config files hold plain strings, "
                    "numbers, booleans, lists and mappings"),
    "set_tag.yaml": "1:17: unsupported YAML tag !!set on a mapping",
    "bad_float.yaml": "2:17: 'abc' is not a valid !!float",
    "bad_int.yaml": "2:16: '0xZZ' is not a valid !!int",
    "bad_bool.yaml": "2:11: 'maybe' is not a valid !!bool",
    "bad_timestamp.yaml": "2:33: 'tomorrow' is not a valid !!timestamp",
    "impossible_date.yaml": "2:33: '2026-02-30T02:00:00Z' is not a valid !!timestamp",
    "control_char.yaml": ("3:19: character U+0001 is not allowed in YAML (write it escaped in "
                          "a double-quoted string)"),
    "escape_in_quotes.yaml": ("2:19: character U+001B is not allowed in YAML (write it escaped "
                              "in a double-quoted string)"),
    "recursive_alias.yaml": "2:13: alias *a refers to a node that contains it (a recursive alias)",
    "deep_flow.yaml": "2:72: nested deeper than 64 levels",
    "deep_block.yaml": "66:129: nested deeper than 64 levels",
    "alias_bomb.yaml": "7:8: more than 200000 values with aliases expanded (an alias bomb?)",
    "alias_depth.yaml": "17:16: alias *a14 nests deeper than 64 levels",
    "merge_not_mapping.yaml": "2:7: a merge key `<<` takes a mapping or a list of mappings",
    "two_documents.yaml": "7:1: expected one YAML document, found several",
    "empty.yaml": "1:1: the file is empty (write `{}` to take every default)",
}

POSITIONED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): \S")


def probenet_check(*paths: str | Path) -> subprocess.CompletedProcess[str]:
    """`probenet check` in a child process; the generous timeout only catches a hang."""
    return subprocess.run(
        [sys.executable, "-c", "from probenet.cli import main; main()", "check",
         *map(str, paths)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_bad_input_is_one_positioned_issue(name):
    with pytest.raises(ConfigError) as raised:
        load_collector_config(DATA / name)
    assert [str(issue) for issue in raised.value.issues] == [f"{DATA / name}:{BROKEN[name]}"]


def test_probenet_check_reports_every_bad_input_without_a_traceback():
    paths = [DATA / name for name in sorted(BROKEN)]
    done = probenet_check(*paths)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"{path}:{BROKEN[path.name]}" for path in paths]


def test_an_agent_config_with_a_bad_tag_fails_the_same_way():
    # `tick` is not an agent key either, but the tag is refused before validation.
    with pytest.raises(ConfigError) as raised:
        load_agent_config(DATA / "python_object.yaml")
    assert [str(i) for i in raised.value.issues] == [
        f"{DATA / 'python_object.yaml'}:{BROKEN['python_object.yaml']}"]


def test_endless_and_huge_files_are_refused_before_parsing(tmp_path):
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n", encoding="utf-8")
    paths = [huge] + ([Path("/dev/zero")] if Path("/dev/zero").exists() else [])
    done = probenet_check(*paths)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"{path}:1:1: larger than {MAX_CONFIG_BYTES} bytes: not a config file" for path in paths]


def test_a_file_at_the_cap_is_still_read(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("#" * (MAX_CONFIG_BYTES - 1) + "\n", encoding="utf-8")
    assert len(read_config_text(path)) == MAX_CONFIG_BYTES


def test_bad_utf8_names_its_line_and_column(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"listen:\n  grpc: caf\xe9\n")
    with pytest.raises(ConfigError) as raised:
        load_collector_config(path)
    assert [str(issue) for issue in raised.value.issues] == [f"{path}:2:12: not UTF-8 text"]


def test_an_unreadable_path_is_an_issue_not_a_traceback(tmp_path):
    done = probenet_check(tmp_path, tmp_path / "missing.yaml")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"{tmp_path}:1:1: cannot read: Is a directory",
                                        (f"{tmp_path / 'missing.yaml'}:1:1: cannot read: "
                                         "No such file or directory")]


def test_merge_keys_work_and_probenet_check_accepts_them():
    config = load_agent_config(DATA / "merge_agent.yaml")
    assert [(p.name, p.target, p.interval, p.service) for p in config.probes] == [
        ("web-a", "http://127.0.0.1:8080/", 10.0, "example"),
        ("web-b", "http://127.0.0.1:8080/", 10.0, "example"),
        ("web-c", "http://127.0.0.1:8081/", 10.0, "example"),
    ]
    done = probenet_check(DATA / "merge_agent.yaml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{DATA / 'merge_agent.yaml'}: ok (agent config)"


class Pair(FrozenModel):
    """A small model for merge precedence."""

    a: int = 0
    b: int = 0
    c: int = 0


class Doc(FrozenModel):
    """Anchors live in `bases`; `merged` takes from them."""

    bases: tuple[Pair, ...] = ()
    merged: Pair


def test_written_keys_beat_merged_ones_and_the_first_merge_wins():
    doc = load_text(Doc, ("bases:\n  - &one {a: 1, b: 1}\n  - &two {a: 2, b: 2, c: 2}\n"
                          "merged:\n  <<: [*one, *two]\n  b: 9\n"), "m.yaml")
    assert doc.merged == Pair(a=1, b=9, c=2)


def test_an_error_in_a_merged_value_points_where_it_is_written():
    with pytest.raises(ConfigError) as raised:
        load_text(Doc, "bases:\n  - &one {a: x}\nmerged:\n  <<: *one\n", "m.yaml")
    assert [str(i) for i in raised.value.issues] == [
        ("m.yaml:2:14: bases[0].a: Input should be a valid integer, unable to parse string as "
         "an integer"),
        ("m.yaml:2:14: merged.a: Input should be a valid integer, unable to parse string as "
         "an integer")]


def test_duplicate_written_keys_stay_errors_next_to_a_merge():
    with pytest.raises(ConfigError, match=r"m\.yaml:5:3: duplicate key 'b'"):
        load_text(Doc, "bases:\n  - &one {a: 1}\nmerged:\n  b: 1\n  b: 2\n  <<: *one\n", "m.yaml")


class Titled(FrozenModel):
    """One text field."""

    title: str


@pytest.mark.parametrize("text", ["<<", "="])
def test_plain_values_that_look_like_merge_or_value_keys_are_text(text):
    # PyYAML resolves a plain `<<` or `=` to the merge and value tags wherever they stand.
    assert load_text(Titled, f"title: {text}\n", "t.yaml").title == text


def test_empty_text_given_by_code_still_means_every_default():
    # Only a *file* that says nothing is an error; generated configs may be empty.
    assert parse_collector_config("") == parse_collector_config("{}")


def test_a_home_of_an_unknown_user_is_a_value_error_not_a_crash():
    with pytest.raises(ValueError, match=r"cannot expand '~no-such-user-probenet/ca\.pem'"):
        resolve_path("~no-such-user-probenet/ca.pem", {"base_dir": Path()})
