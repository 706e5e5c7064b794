"""The ip_anonymize enricher: truncation of both families, drop mode, invalid and absent values,
config bounds, and the stage after geoip in a topology."""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.core.processor import Processor
from pipeline.core.records import RawMessage
from pipeline.enrichers import EnricherContext, Outcome, enricher_type
from pipeline.enrichers.ip_anonymize import IpAnonymizeConfig, IpAnonymizeEnricher, truncator
from pipeline.errors import TopologyError
from pipeline.topology import load_topology
from tests.enrichers.mmdb_fixtures import city_record, write_city_db

REPO = Path(__file__).resolve().parents[2]


def make(**config: Any) -> IpAnonymizeEnricher:
    return IpAnonymizeEnricher(IpAnonymizeConfig.model_validate(config), EnricherContext())


def anonymize(enricher: IpAnonymizeEnricher, ip: Any) -> tuple[Outcome, dict[str, Any]]:
    event: dict[str, Any] = {"event": "page_viewed", "context": {"ip": ip, "user_agent": "curl/8"}}
    outcome = enricher.enrich(event)
    return outcome, event["context"]


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("81.2.69.142", "81.2.69.0"),
        ("10.0.0.255", "10.0.0.0"),
        ("255.255.255.255", "255.255.255.0"),
        ("0.0.0.0", "0.0.0.0"),
        ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::"),
        ("2001:0DB8:85A3:0000:0000:8A2E:0370:7334", "2001:db8:85a3::"),
        ("2001:db8::1", "2001:db8::"),
        ("::1", "::"),
        ("fe80::1%eth0", "fe80::"),
        ("2a00:1450:4001:82b::200e", "2a00:1450:4001::"),
        # IPv4-mapped IPv6: the IPv4 prefix applies, and the result is IPv4.
        ("::ffff:81.2.69.142", "81.2.69.0"),
        ("::FFFF:5102:458e", "81.2.69.0"),
        # IPv4-compatible (deprecated) is plain IPv6.
        ("::81.2.69.142", "::"),
    ],
)
def test_default_truncation(ip: str, expected: str) -> None:
    outcome, context = anonymize(make(), ip)
    assert outcome is Outcome.HIT
    assert context == {"ip": expected, "user_agent": "curl/8", "ip_anonymized": True}


@pytest.mark.parametrize(
    ("v4", "v6", "ip", "expected"),
    [
        (16, 48, "81.2.69.142", "81.2.0.0"),  # Matomo's default
        (8, 48, "81.2.69.142", "81.0.0.0"),
        (0, 0, "81.2.69.142", "0.0.0.0"),
        (0, 0, "2001:db8::1", "::"),
        (32, 128, "81.2.69.142", "81.2.69.142"),
        (32, 128, "2001:db8::1", "2001:db8::1"),
        (25, 64, "81.2.69.255", "81.2.69.128"),
        (24, 64, "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
        (24, 56, "2001:db8:1:2ff:3:4:5:6", "2001:db8:1:200::"),
        (20, 127, "::ffff:81.2.79.142", "81.2.64.0"),
        (24, 120, "2001:db8::1:ff", "2001:db8::1:0"),
        (24, 128, "::81.2.69.142", "::5102:458e"),  # ipaddress's spelling, not inet_ntop's
        (24, 128, "::ffff:0:0", "0.0.0.0"),
        (24, 128, "0:0:0:0:1:ffff:5102:458e", "::1:ffff:5102:458e"),
    ],
)
def test_configured_prefixes(v4: int, v6: int, ip: str, expected: str) -> None:
    outcome, context = anonymize(make(ipv4_prefix=v4, ipv6_prefix=v6), ip)
    assert (outcome, context["ip"]) == (Outcome.HIT, expected)


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(), st.integers(0, 32), st.integers(0, 128))
def test_truncation_is_the_network_address(address: Any, v4: int, v6: int) -> None:
    truncate = truncator(v4, v6)
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = v4 if address.version == 4 else v6
    expected = ipaddress.ip_network((address, prefix), strict=False).network_address
    assert truncate(str(address)) == str(expected)
    assert truncate(address.exploded) == str(expected)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**64 - 1), st.integers(0, 128))
def test_truncation_of_addresses_with_many_zeros(low: int, v6: int) -> None:
    # Low addresses (::/64) exercise zero compression and the dotted forms inet_ntop has.
    address = ipaddress.IPv6Address(low)
    if address.ipv4_mapped is not None:
        return
    expected = ipaddress.ip_network((address, v6), strict=False).network_address
    assert truncator(24, v6)(str(address)) == str(expected)


def test_drop_mode() -> None:
    enricher = make(mode="drop")
    for ip in ("81.2.69.142", "2001:db8::1", "not an ip"):
        outcome, context = anonymize(enricher, ip)
        assert outcome is Outcome.HIT
        assert context == {"user_agent": "curl/8", "ip_anonymized": True}


@pytest.mark.parametrize(
    "ip",
    ["not an ip", "1.2.3.256", "01.2.3.4", " 1.2.3.4", "1.2.3.4, 5.6.7.8", "1.2.3.4\x00",
     "1::2::3", "x" * 5000, 123, 1.5, True, ["1.2.3.4"], {"a": 1}],
)  # fmt: skip
def test_invalid_ip_is_removed_and_marked(ip: Any) -> None:
    outcome, context = anonymize(make(), ip)
    assert outcome is Outcome.MISS
    assert context == {"user_agent": "curl/8", "ip_anonymized": True}


@pytest.mark.parametrize(
    "event",
    [
        {"event": "x", "context": {}},
        {"event": "x", "context": {"ip": None}},
        {"event": "x", "context": {"ip": ""}},
        {"event": "x"},
        {"event": "x", "context": "odd"},
    ],
)
@pytest.mark.parametrize("mode", ["truncate", "drop"])
def test_no_ip_is_skipped_and_unchanged(event: dict[str, Any], mode: str) -> None:
    before = orjson.dumps(event)
    assert make(mode=mode).enrich(event) is Outcome.SKIPPED
    assert orjson.dumps(event) == before


@pytest.mark.parametrize("cache_size", [0, 2])
def test_cache_sizes_give_the_same_results(cache_size: int) -> None:
    enricher = make(cache_size=cache_size)
    for _ in range(3):
        for ip, expected in (("81.2.69.142", "81.2.69.0"), ("2001:db8::1", "2001:db8::"),
                             ("9.9.9.9", "9.9.9.0")):  # fmt: skip
            assert anonymize(enricher, ip)[1]["ip"] == expected


# ---------------------------------------------------------------------------------- config


def test_defaults() -> None:
    config = IpAnonymizeConfig()
    assert (config.mode, config.ipv4_prefix, config.ipv6_prefix) == ("truncate", 24, 48)
    assert enricher_type("ip_anonymize").config_model is IpAnonymizeConfig
    assert make().status() == "enabled"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"ipv4_prefix": 33}, "ipv4_prefix"),
        ({"ipv4_prefix": -1}, "ipv4_prefix"),
        ({"ipv6_prefix": 129}, "ipv6_prefix"),
        ({"ipv6_prefix": -8}, "ipv6_prefix"),
        ({"ipv4_prefix": "twenty"}, "ipv4_prefix"),
        ({"ipv4_prefix": 24.5}, "ipv4_prefix"),
        ({"ipv4_prefix": True}, "ipv4_prefix"),
        ({"ipv6_prefix": None}, "ipv6_prefix"),
        ({"mode": "hash"}, "mode"),
        ({"cache_size": -1}, "cache_size"),
        ({"prefix": 24}, "prefix"),
    ],
)
def test_bad_config_is_refused(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ValidationError) as info:
        IpAnonymizeConfig.model_validate(config)
    assert [e["loc"][0] for e in info.value.errors()] == [key]


def test_bounds_are_accepted() -> None:
    for v4, v6 in ((0, 0), (32, 128), ("16", "64")):  # strings: values from ${ENV} interpolation
        IpAnonymizeConfig.model_validate({"ipv4_prefix": v4, "ipv6_prefix": v6})


# ----------------------------------------------------------------------- in a topology

STAGES = """\
  - id: geo
    type: enrich
    enricher: geoip
    optional: true
    config: {{city_db: "${{GEOIP_CITY_DB:-}}"}}

  - id: anonymize_ip
    type: enrich
    enricher: ip_anonymize
    config:
{config}
"""


def topology_file(tmp_path: Path, config: str = "      mode: truncate") -> Path:
    text = (REPO / "tests" / "enrichers" / "base_topology.yaml").read_text(encoding="utf-8")
    text = text.replace("../avro/", f"{REPO / 'avro'}/")
    marker = "  - id: route\n"
    assert marker in text
    text = text.replace(marker, STAGES.format(config=config) + "\n" + marker)
    path = tmp_path / "topology.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def run(processor: Processor, ip: str) -> dict[str, Any]:
    event = {
        "event_id": os.urandom(8).hex(),
        "event": "page_viewed",
        "timestamp": int(time.time() * 1000),
        "anonymous_id": "a-1",
        "context": {"ip": ip},
    }
    ctx = processor.process([RawMessage(orjson.dumps(event))])
    assert not ctx.dead_letters, ctx.dead_letters
    [(topic, _key, value)] = ctx.outputs
    assert topic == "processed_events"
    return orjson.loads(value)["context"]


def test_after_geoip_in_a_topology(tmp_path: Path) -> None:
    db = write_city_db(
        tmp_path / "city.mmdb", {"81.2.69.0/24": city_record("GB", "United Kingdom", city="London")}
    )
    path = topology_file(tmp_path, '      ipv4_prefix: 16\n      ipv6_prefix: "${IPV6_PREFIX:-48}"')
    processor = Processor(load_topology(path, env={"GEOIP_CITY_DB": str(db)}))
    context = run(processor, "81.2.69.142")
    assert context["ip"] == "81.2.0.0" and context["ip_anonymized"] is True
    assert context["geo"]["city"] == "London"  # looked up before the truncation
    context = run(processor, "2001:db8:85a3:8d3:1319:8a2e:370:7348")
    assert context["ip"] == "2001:db8:85a3::"
    context = run(processor, "garbage")
    assert "ip" not in context and context["ip_anonymized"] is True
    assert context["geo"]["ip_type"] == "invalid"


def test_drop_in_a_topology(tmp_path: Path) -> None:
    processor = Processor(load_topology(topology_file(tmp_path, "      mode: drop"), env={}))
    context = run(processor, "81.2.69.142")
    assert "ip" not in context and context["ip_anonymized"] is True


def test_bad_config_in_a_topology_names_the_path(tmp_path: Path) -> None:
    import yaml

    path = topology_file(tmp_path, "      ipv4_prefix: 33\n      ipv6_prefix: wide\n      mask: 2")
    index = [s["id"] for s in yaml.safe_load(path.read_text())["stages"]].index("anonymize_ip")
    with pytest.raises(TopologyError) as info:
        load_topology(path, env={})
    found = {p.path: p.message for p in info.value.problems}
    at = f"stages[{index}].config"
    assert "less than or equal to 32" in found[f"{at}.ipv4_prefix"]
    assert f"{at}.ipv6_prefix" in found
    assert found[f"{at}.mask"] == "unknown key"
