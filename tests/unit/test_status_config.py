"""The collector config's `regions:` and `status_page:` sections: valid ones load into typed
values, broken ones name file:line:col (also through `probenet check`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from probenet.collector.config import RegionPlace, StatusPageConfig, load_config, parse_config
from probenet.configfile import ConfigError
from support.system import ROOT


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "collector.yaml")
    return [str(issue) for issue in raised.value.issues]


def test_defaults():
    config = parse_config("{}")
    assert config.regions == {}
    assert config.status_page == StatusPageConfig(public=False, title="Status", services=[])


def test_regions_and_a_public_status_page_load():
    config = parse_config("""
regions:
  eu-central: {name: Frankfurt, location: [50.1, 8.7]}
  us-east: {name: "Ashburn, Virginia", location: [39, -77.5]}
  lab: {}
status_page: {public: true, title: "Acme status", services: [social, billing]}
""")
    assert config.regions == {
        "eu-central": RegionPlace(name="Frankfurt", location=(50.1, 8.7)),
        "us-east": RegionPlace(name="Ashburn, Virginia", location=(39.0, -77.5)),
        "lab": RegionPlace(name=None, location=None),
    }
    assert config.status_page == StatusPageConfig(public=True, title="Acme status",
                                                  services=["social", "billing"])


def test_the_edges_of_the_map_are_allowed():
    config = parse_config("regions:\n  a: {location: [-90, -180]}\n  b: {location: [90, 180]}\n")
    assert config.regions["a"].location == (-90.0, -180.0)
    assert config.regions["b"].location == (90.0, 180.0)


@pytest.mark.parametrize(("text", "expected"), [
    ("regions:\n  eu: {location: [90.5, 8.7]}\n",
     ["collector.yaml:2:19: regions.eu.location[0]: Input should be less than or equal to 90"]),
    ("regions:\n  eu: {location: [-91, 8.7]}\n",
     [("collector.yaml:2:19: regions.eu.location[0]: Input should be greater than or equal "
       "to -90")]),
    ("regions:\n  eu: {location: [50, 180.5]}\n",
     [("collector.yaml:2:23: regions.eu.location[1]: Input should be less than or equal to "
       "180")]),
    ("regions:\n  eu: {location: [50, -181]}\n",
     [("collector.yaml:2:23: regions.eu.location[1]: Input should be greater than or equal "
       "to -180")]),
    ("regions:\n  eu: {location: [50.1]}\n",
     [("collector.yaml:2:18: regions.eu.location: write [latitude, longitude] in degrees, like "
       "[50.1, 8.7] (got [50.1])")]),
    ("regions:\n  eu: {location: {lat: 50, lon: 8}}\n",
     [("collector.yaml:2:18: regions.eu.location: write [latitude, longitude] in degrees, like "
       "[50.1, 8.7] (got {'lat': 50, 'lon': 8})")]),
    ("regions:\n  eu: {location: ['50', 8]}\n",
     ["collector.yaml:2:19: regions.eu.location[0]: Input should be a valid number"]),
    ("regions:\n  eu: {location: [true, 8]}\n",
     ["collector.yaml:2:19: regions.eu.location[0]: Input should be a valid number"]),
    ("regions:\n  eu: {name: 5}\n",
     ["collector.yaml:2:14: regions.eu.name: Input should be a valid string"]),
    ("regions:\n  eu: {name: '  '}\n",
     ["collector.yaml:2:14: regions.eu.name: must not be empty"]),
    ("regions:\n  eu: {place: Frankfurt}\n",
     ["collector.yaml:2:8: unknown key 'place'"]),
    ("regions:\n  'eu central': {name: Frankfurt}\n",
     [("collector.yaml:2:17: regions.eu central.[key]: invalid name 'eu central': use letters, "
       "digits and _ . : @ - (starting with a letter or digit, at most 128 characters)")]),
    ("status_page: {public: true}\n",
     [("collector.yaml:1:23: status_page.public: true needs `services`: the services the "
       "public page may show (a public page never shows every service by default)")]),
    ("status_page: {public: true, services: []}\n",
     [("collector.yaml:1:23: status_page.public: true needs `services`: the services the "
       "public page may show (a public page never shows every service by default)")]),
    ("status_page: {services: [social, 7]}\n",
     ["collector.yaml:1:34: status_page.services[1]: Input should be a valid string"]),
    ("status_page: {services: social}\n",
     ["collector.yaml:1:25: status_page.services: Input should be a valid list"]),
    ("status_page: {services: [a, b, a]}\n",
     ["collector.yaml:1:25: status_page.services: services listed twice: a"]),
    ("status_page: {title: ''}\n",
     ["collector.yaml:1:22: status_page.title: must not be empty"]),
    ('status_page: {title: "a\\tb"}\n',
     ["collector.yaml:1:22: status_page.title: must not hold control characters"]),
    ("status_page: {public: maybe, services: [a]}\n",
     [("collector.yaml:1:23: status_page.public: Input should be a valid boolean, unable to "
       "interpret input")]),
    ("status_page: {pubic: true}\n",
     ["collector.yaml:1:15: unknown key 'pubic' (did you mean 'public'?)"]),
])
def test_broken_sections_name_their_position(text, expected):
    assert issues(text) == expected


def test_a_long_title_is_refused():
    found = issues(f"status_page: {{title: {'x' * 101}}}\n")
    assert found == [("collector.yaml:1:22: status_page.title: String should have at most 100 "
                     "characters")]


def test_probenet_check_reports_them_from_a_file(tmp_path):
    path = tmp_path / "collector.yaml"
    path.write_text("regions:\n  eu: {location: [95, 8]}\nstatus_page: {public: true}\n")
    with pytest.raises(ConfigError):
        load_config(path)
    done = subprocess.run(
        [sys.executable, "-c", "from probenet.cli import main; main()", "check", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    # (Cross-field checks such as `public` without `services` run once the fields are valid.)
    assert done.stderr.splitlines() == [
        f"{path}:2:19: regions.eu.location[0]: Input should be less than or equal to 90"]
