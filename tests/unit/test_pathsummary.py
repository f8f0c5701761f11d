"""The pure path summary: per-region last hops, the divergence (address, then network) and
its sentences, and the cases with nothing to say."""

from __future__ import annotations

import pytest

from probenet.collector.pathsummary import RegionPath, network_of, summarize_paths
from probenet.v1 import probenet_pb2 as pb

_SHARED = ("10.0.0.1", "198.18.1.1", "198.18.3.1")


def _path(*hops: str, reached: bool = False) -> RegionPath:
    return RegionPath(tuple(hops), reached=reached)


def _four_regions() -> dict[str, RegionPath | None]:
    return {
        "ap-south": _path("10.1.0.1", *_SHARED[1:]),
        "sa-east": _path("10.2.0.1", *_SHARED[1:], "", ""),
        "eu-central": _path("10.3.0.1", *_SHARED[1:], "198.18.4.1", "203.0.113.5", reached=True),
        "us-east": _path("10.4.0.1", *_SHARED[1:], "198.18.4.1", "203.0.113.5", reached=True),
    }


def test_two_failing_two_healthy_names_the_last_shared_hop() -> None:
    summary = summarize_paths(_four_regions(), down={"ap-south", "sa-east"},
                              up={"eu-central", "us-east"})
    assert summary.text == ("paths from ap-south and sa-east stop after 198.18.3.1; "
                            "eu-central and us-east pass it")
    assert summary.divergence is not None
    assert summary.divergence.level == "address"
    assert summary.divergence.after_hop == "198.18.3.1"
    assert summary.divergence.before_hop == "198.18.4.1"
    assert summary.regions["sa-east"].last_hop == "198.18.3.1"
    assert summary.regions["sa-east"].hops == 5
    assert summary.regions["eu-central"].reached is True
    assert summary.regions["ap-south"].state == "down"
    assert summary.missing == ()
    body = summary.to_json()
    assert body["divergence"]["address"] == "198.18.3.1"
    assert body["divergence"]["after_hop"] == "198.18.3.1"
    assert "198.18" not in summary.public_text
    assert "ap-south and sa-east" in summary.public_text


def test_one_failing_one_healthy_singular_verbs() -> None:
    paths = {"ap-south": _path("198.18.3.1"), "eu-central": _path("198.18.3.1", "203.0.113.5",
                                                                   reached=True)}
    summary = summarize_paths(paths, down=["ap-south"], up=["eu-central"])
    assert summary.text == "path from ap-south stops after 198.18.3.1; eu-central passes it"


def test_network_level_when_addresses_differ_but_prefixes_match() -> None:
    paths = {
        "ap-south": _path("10.1.0.1", "198.18.3.1"),
        "sa-east": _path("10.2.0.1", "198.18.3.7"),
        "eu-central": _path("10.3.0.1", "198.18.3.20", "198.18.4.1", reached=True),
    }
    summary = summarize_paths(paths, down={"ap-south", "sa-east"}, up={"eu-central"})
    assert summary.divergence is not None
    assert summary.divergence.level == "network"
    assert summary.divergence.after_hop == "198.18.3.0/24"
    assert summary.to_json()["divergence"]["network"] == "198.18.3.0/24"
    assert summary.text == ("paths from ap-south and sa-east stop after network 198.18.3.0/24; "
                            "eu-central passes it")


def test_ipv6_networks_are_48s() -> None:
    assert network_of("2001:db8:1:2::1") == "2001:db8:1::/48"
    assert network_of("198.18.3.200") == "198.18.3.0/24"
    assert network_of("not-an-address") == "not-an-address"


def test_failing_paths_with_different_last_hops_stop_before_a_healthy_hop() -> None:
    paths = {
        "ap-south": _path("10.1.0.1", "192.0.2.1"),
        "sa-east": _path("10.2.0.1", "192.0.2.99", "100.64.0.1"),
        "eu-central": _path("10.3.0.1", "198.18.4.1", "203.0.113.5", reached=True),
        "us-east": _path("10.4.0.1", "198.18.4.1", "203.0.113.5", reached=True),
    }
    summary = summarize_paths(paths, down={"ap-south", "sa-east"}, up={"eu-central", "us-east"})
    assert summary.divergence is not None
    assert summary.divergence.after_hop is None
    assert summary.divergence.before_hop == "198.18.4.1"
    assert summary.text == ("paths from ap-south and sa-east stop before 198.18.4.1; "
                            "eu-central and us-east pass it")


def test_no_divergence_when_paths_are_the_same() -> None:
    same = _path("10.0.0.1", "198.18.3.1", "198.18.4.1")
    summary = summarize_paths({"ap-south": same, "eu-central": same}, down={"ap-south"},
                              up={"eu-central"})
    assert summary.divergence is None
    assert summary.text == "no hop separates the failing regions' paths from the healthy ones"


def test_failing_path_that_reached_has_no_divergence() -> None:
    paths = {"ap-south": _path("198.18.3.1", "203.0.113.5", reached=True),
             "eu-central": _path("198.18.3.1", "203.0.113.5", reached=True)}
    summary = summarize_paths(paths, down={"ap-south"}, up={"eu-central"})
    assert summary.divergence is None
    assert "reach the target" in summary.text


def test_all_failing_report_the_shared_last_hop() -> None:
    paths = {"ap-south": _path("10.1.0.1", "198.18.3.1"),
             "sa-east": _path("10.2.0.1", "198.18.3.1", "")}
    summary = summarize_paths(paths, down={"ap-south", "sa-east"}, up=set())
    assert summary.divergence is not None
    assert summary.divergence.after_hop == "198.18.3.1"
    assert summary.divergence.healthy == ()
    assert summary.text == "paths from ap-south and sa-east stop after 198.18.3.1"


def test_all_failing_with_different_stops_says_nothing() -> None:
    paths = {"ap-south": _path("10.1.0.1"), "sa-east": _path("10.2.0.1")}
    summary = summarize_paths(paths, down={"ap-south", "sa-east"}, up=set())
    assert summary.divergence is None


def test_missing_traces_are_listed_and_ignored() -> None:
    paths = _four_regions()
    paths["sa-east"] = None
    del paths["us-east"]
    summary = summarize_paths(paths, down={"ap-south", "sa-east"}, up={"eu-central", "us-east"})
    assert summary.missing == ("sa-east", "us-east")
    assert set(summary.regions) == {"ap-south", "eu-central"}
    assert summary.text == "path from ap-south stops after 198.18.3.1; eu-central passes it"


def test_no_failing_trace_at_all() -> None:
    summary = summarize_paths({"eu-central": _path("198.18.3.1", reached=True)},
                              down={"ap-south"}, up={"eu-central"})
    assert summary.divergence is None
    assert summary.text == "no trace from a failing region"
    assert summary.missing == ("ap-south",)


def test_empty_input() -> None:
    summary = summarize_paths({}, down=(), up=())
    assert summary.divergence is None
    assert summary.regions == {}


def test_unreached_everywhere_with_same_last_hop_has_no_divergence() -> None:
    paths = {"ap-south": _path("10.1.0.1", "198.18.3.1", ""),
             "eu-central": _path("10.3.0.1", "198.18.3.1", "", "")}
    summary = summarize_paths(paths, down={"ap-south"}, up={"eu-central"})
    assert summary.divergence is None


def test_unreached_everywhere_but_healthy_go_further() -> None:
    paths = {"ap-south": _path("10.1.0.1", "198.18.3.1", ""),
             "eu-central": _path("10.3.0.1", "198.18.3.1", "198.18.4.1", "")}
    summary = summarize_paths(paths, down={"ap-south"}, up={"eu-central"})
    assert summary.divergence is not None
    assert summary.divergence.after_hop == "198.18.3.1"
    assert summary.divergence.before_hop == "198.18.4.1"


def test_nothing_answered_on_failing_paths() -> None:
    paths = {"ap-south": _path("", "", ""),
             "eu-central": _path("10.3.0.1", "198.18.4.1", reached=True)}
    summary = summarize_paths(paths, down={"ap-south"}, up={"eu-central"})
    # Nothing answered: no hop of eu-central's own path is named as where ap-south stops.
    assert summary.divergence is None
    assert summary.text == "path from ap-south gets no answer from any hop"
    assert summary.regions["ap-south"].last_hop is None


def test_a_failing_path_sharing_no_hop_with_the_one_healthy_path_names_its_own_last_hop() -> None:
    # A goes ra -> core -> target; B stops at its own router rb, never on A's path.
    paths = {"ap-south": _path("198.19.5.6"),
             "eu-west": _path("198.19.1.2", "198.19.2.10", reached=True)}
    summary = summarize_paths(paths, down={"ap-south"}, up={"eu-west"})
    assert summary.divergence is None
    assert summary.text == ("path from ap-south stops after 198.19.5.6 (ap-south), "
                            "a hop the healthy regions' paths do not pass")
    assert "198.19" not in summary.public_text


def test_region_both_down_and_up_counts_as_failing() -> None:
    paths = _four_regions()
    summary = summarize_paths(paths, down={"ap-south", "sa-east"},
                              up={"eu-central", "us-east", "sa-east"})
    assert summary.divergence is not None
    assert summary.divergence.failing == ("ap-south", "sa-east")
    assert summary.divergence.healthy == ("eu-central", "us-east")


def test_unknown_region_is_listed_not_compared() -> None:
    paths = _four_regions()
    summary = summarize_paths(paths, down={"ap-south"}, up={"eu-central"})
    assert summary.regions["us-east"].state == "unknown"
    assert summary.divergence is not None
    assert summary.divergence.healthy == ("eu-central",)


def test_a_healthy_path_that_does_not_pass_the_stop_blocks_it() -> None:
    paths = {"ap-south": _path("10.1.0.1", "198.18.3.1"),
             "eu-central": _path("10.3.0.1", "198.18.3.1", "203.0.113.5", reached=True),
             "us-east": _path("10.4.0.1", "198.18.9.9", reached=True)}
    summary = summarize_paths(paths, down={"ap-south"}, up={"eu-central", "us-east"})
    # us-east never passes 198.18.3.1 (another route), so that hop is not the divergence;
    # no hop is on both healthy paths and missed by the failing one but the destination.
    assert summary.divergence is None or summary.divergence.after_hop is None


@pytest.mark.parametrize("reached", [True, False])
def test_from_trace_orders_hops_by_ttl(reached: bool) -> None:
    trace = pb.PathTrace(trigger="failure", reached=reached, hops=[
        pb.TraceHop(ttl=2, address="198.18.3.1"), pb.TraceHop(ttl=1, address="10.0.0.1"),
        pb.TraceHop(ttl=3, address="")])
    path = RegionPath.from_trace(trace)
    assert path.hops == ("10.0.0.1", "198.18.3.1", "")
    assert path.reached is reached
    assert path.last_hop == "198.18.3.1"


def test_from_json_matches_from_trace() -> None:
    body = {"hops": [{"ttl": 2, "address": "198.18.3.1"}, {"ttl": 1, "address": "10.0.0.1"}],
            "reached": False}
    assert RegionPath.from_json(body) == _path("10.0.0.1", "198.18.3.1")


def test_repeated_hops_count_once_in_answered() -> None:
    path = _path("10.0.0.1", "198.18.3.1", "198.18.3.1", "")
    assert path.answered == ("10.0.0.1", "198.18.3.1")
