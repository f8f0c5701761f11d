"""`agent.state_dir` and the `buffer` settings of the disk spool, and where the state goes."""

from __future__ import annotations

import logging

import pytest

from probenet.agent.config import load_config, parse_config
from probenet.agent.main import choose_state_dir
from probenet.configfile import ConfigError

HEAD = """\
agent: {id: fra-1, region: eu-central%s}
collectors: [{address: "127.0.0.1:7070"}]
"""


def test_defaults_keep_results_on_disk_with_a_bound_in_bytes():
    buffer = parse_config(HEAD % "").buffer
    assert (buffer.disk, buffer.max_bytes, buffer.sync) == (True, 256 << 20, "normal")


def test_sizes_are_written_with_units():
    config = parse_config(HEAD % "" + "buffer: {max_bytes: 64MiB, sync: full}\n")
    assert (config.buffer.max_bytes, config.buffer.sync) == (64 << 20, "full")
    assert parse_config(HEAD % "" + "buffer: {max_bytes: 2GB}\n").buffer.max_bytes == 2 * 10**9


@pytest.mark.parametrize(("line", "expected"), [
    ("buffer: {max_bytes: 64 potatoes}", "3:21: buffer.max_bytes: invalid size"),
    ("buffer: {max_bytes: 1KiB}", "3:21: buffer.max_bytes"),
    ("buffer: {sync: sometimes}", "3:16: buffer.sync"),
])
def test_bad_buffer_settings_name_their_place(line, expected):
    with pytest.raises(ConfigError) as caught:
        parse_config(HEAD % "" + line + "\n")
    assert expected in str(caught.value)


def test_state_dir_is_relative_to_the_config_file(tmp_path):
    path = tmp_path / "conf" / "agent.yaml"
    path.parent.mkdir()
    path.write_text(HEAD % ", state_dir: spool")
    config = load_config(path)
    assert config.agent.state_dir == str(tmp_path / "conf" / "spool")
    assert choose_state_dir(path, config) == tmp_path / "conf" / "spool"


def test_an_empty_state_dir_is_an_error():
    with pytest.raises(ConfigError, match=r"agent\.state_dir"):
        parse_config(HEAD % ", state_dir: ''")


def test_the_default_is_next_to_the_config_unless_systemd_says_otherwise(tmp_path,
                                                                         monkeypatch):
    path = tmp_path / "agent.yaml"
    path.write_text(HEAD % "")
    config = load_config(path)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert choose_state_dir(path, config) == tmp_path / "agent.state"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "systemd"))
    assert choose_state_dir(path, config) == tmp_path / "systemd"
    no_disk = parse_config(HEAD % "" + "buffer: {disk: false}\n")
    assert choose_state_dir(path, no_disk) is None


def test_an_unusable_default_folder_means_memory_only_and_says_so(tmp_path, monkeypatch,
                                                                  caplog):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("STATE_DIRECTORY", str(blocker / "sub"))
    config = parse_config(HEAD % "")
    with caplog.at_level(logging.WARNING):
        assert choose_state_dir(tmp_path / "agent.yaml", config) is None
    assert "kept in memory only" in caplog.text
