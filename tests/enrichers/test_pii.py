"""The pii enricher: keyed hashing and dropping of configured fields.

Hash values (checked against ``hmac`` directly), normalisation, value types, paths, the key's
handling (never in logs, repr, status or error messages), config errors, a run through a
topology and generated traffic. The per-event cost (against a naive ``hmac.new`` per value in
the same process) is printed by ``python -m tests.enrichers.test_pii``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from pipeline.core.avro_check import compile_schema
from pipeline.core.processor import Processor
from pipeline.core.records import RawMessage
from pipeline.enrichers import EnricherContext, EnricherUnavailable, Outcome, enricher_type
from pipeline.enrichers.pii import PiiConfig, PiiEnricher
from pipeline.errors import TopologyError
from pipeline.topology import load_topology
from pipeline.traffic import TrafficProfile, generate
from tests.enrichers.topologies import topology_file

REPO = Path(__file__).resolve().parents[2]
NOW = 1_795_000_000.0
KEY = "s3cr3t-K3y-f0r-t3sts-0nly-4b9e71"
OTHER_KEY = "another-key-of-enough-bytes-1234"
ENV = {"PIPELINE_PII_KEY": KEY}
_ids = itertools.count()


def expected(text: str, key: str = KEY) -> str:
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()


def make(fields: list[dict], env: dict | None = None, **config: Any) -> PiiEnricher:
    return PiiEnricher(
        PiiConfig(fields=fields, **config), EnricherContext(env=ENV if env is None else env)
    )


EMAIL = {"path": "user_properties.email", "action": "hash", "normalize": "lower_strip"}
PHONE = {"path": "user_properties.phone", "action": "hash", "normalize": "phone"}


def test_registered_by_name() -> None:
    kind = enricher_type("pii")
    assert kind.config_model is PiiConfig and kind.build is PiiEnricher


def test_hash_is_keyed_hmac_sha256_hex() -> None:
    enricher = make([{"path": "properties.email", "action": "hash"}])
    event = {"properties": {"email": "ann@example.com", "other": 1}}
    assert enricher.enrich(event) is Outcome.HIT
    assert event == {"properties": {"email": expected("ann@example.com"), "other": 1}}
    assert len(event["properties"]["email"]) == 64
    assert event["properties"]["email"] != hashlib.sha256(b"ann@example.com").hexdigest()
    other = make(
        [{"path": "properties.email", "action": "hash"}], env={"PIPELINE_PII_KEY": OTHER_KEY}
    )
    event2 = {"properties": {"email": "ann@example.com"}}
    other.enrich(event2)
    assert event2["properties"]["email"] == expected("ann@example.com", OTHER_KEY)
    assert event2["properties"]["email"] != event["properties"]["email"]


def test_same_person_hashes_the_same_after_normalisation() -> None:
    enricher = make([EMAIL, PHONE])
    a = {"user_properties": {"email": "  Ann@Example.COM ", "phone": "+49 (151) 234-56"}}
    b = {"user_properties": {"email": "ann@example.com", "phone": "+4915123456"}}
    enricher.enrich(a)
    enricher.enrich(b)
    assert a == b
    assert a["user_properties"]["email"] == expected("ann@example.com")
    assert a["user_properties"]["phone"] == expected("+4915123456")
    c = {"user_properties": {"phone": "0151 234 56"}}
    enricher.enrich(c)
    assert c["user_properties"]["phone"] == expected("015123456")


def test_fields_of_one_object_interleaved_with_others_and_top_level_fields() -> None:
    """Fields are applied in config order; each parent object is looked up once per run of
    fields below it. Interleaved parents, nested parents and top-level keys all work."""
    enricher = make(
        [
            {"path": "properties.a", "action": "hash"},
            {"path": "user_properties.email", "action": "hash", "normalize": "lower_strip"},
            {"path": "properties.b", "action": "drop"},
            {"path": "user_id", "action": "hash"},
            {"path": "properties.c", "action": "hash"},
            {"path": "context.campaign.click_id", "action": "hash"},
            {"path": "context.campaign.term", "action": "drop"},
            {"path": "coupon", "action": "drop"},
        ]
    )
    event = {
        "user_id": "u1",
        "coupon": "SAVE10",
        "properties": {"a": "A", "b": "B", "c": 7, "d": "kept"},
        "user_properties": {"email": " Ann@Example.com"},
        "context": {"campaign": {"click_id": "gclid-1", "term": "shoes", "source": "google"}},
    }
    assert enricher.enrich(event) is Outcome.HIT
    assert event == {
        "user_id": expected("u1"),
        "properties": {"a": expected("A"), "c": expected("7"), "d": "kept"},
        "user_properties": {"email": expected("ann@example.com")},
        "context": {"campaign": {"click_id": expected("gclid-1"), "source": "google"}},
    }
    # parents that are absent, empty or not objects are passed over
    for odd in ({}, {"properties": {}, "context": {"campaign": "x"}}, {"properties": [1]}):
        before = copy.deepcopy(odd)
        assert enricher.enrich(odd) is Outcome.SKIPPED
        assert odd == before


def test_strip_and_none_normalisation() -> None:
    enricher = make(
        [
            {"path": "properties.a", "action": "hash", "normalize": "strip"},
            {"path": "properties.b", "action": "hash"},
        ]
    )
    event = {"properties": {"a": " X ", "b": " X "}}
    enricher.enrich(event)
    assert event["properties"] == {"a": expected("X"), "b": expected(" X ")}


def test_non_string_values() -> None:
    enricher = make([{"path": f"properties.{k}", "action": "hash"} for k in "abcdefg"])
    event = {
        "properties": {
            "a": 4915123,
            "b": True,
            "c": 1.5,
            "d": ["x", 1],
            "e": {"z": 1, "a": 2},
            "f": None,
            "g": "4915123",
        }
    }
    assert enricher.enrich(event) is Outcome.HIT
    p = event["properties"]
    assert p["a"] == expected("4915123") == p["g"]  # a number hashes like its text
    assert p["b"] == expected("true")
    assert p["c"] == expected("1.5")
    assert p["d"] == expected('["x",1]')
    assert p["e"] == expected('{"a":2,"z":1}')  # canonical: sorted keys
    assert p["f"] is None  # null: nothing to protect
    dropper = make(
        [{"path": "properties.d", "action": "hash"}, {"path": "properties.e", "action": "hash"}],
        containers="drop",
    )
    event = {"properties": {"d": [1], "e": {}, "k": 1}}
    assert dropper.enrich(event) is Outcome.HIT
    assert event == {"properties": {"k": 1}}


def test_unicode_and_odd_strings_hash_without_error() -> None:
    enricher = make([{"path": "properties.x", "action": "hash", "normalize": "lower_strip"}])
    for value in ["Ünïcödé@bücher.de", "", "\x00", "\ud800", "x" * 100_000]:
        event = {"properties": {"x": value}}
        assert enricher.enrich(event) is Outcome.HIT
        assert len(event["properties"]["x"]) == 64


def test_drop() -> None:
    enricher = make(
        [{"path": "properties.coupon", "action": "drop"}, {"path": "context.ip", "action": "drop"}]
    )
    event = {"properties": {"coupon": "X", "k": 1}, "context": {"ip": "1.2.3.4", "locale": "de"}}
    assert enricher.enrich(event) is Outcome.HIT
    assert event == {"properties": {"k": 1}, "context": {"locale": "de"}}
    # drop removes containers too, and needs no key
    nokey = make([{"path": "properties.items", "action": "drop"}], env={})
    event = {"properties": {"items": [{"email": "a@b"}]}}
    assert nokey.enrich(event) is Outcome.HIT and event == {"properties": {}}


def test_paths_into_context_and_top_level() -> None:
    enricher = make(
        [
            {"path": "context.campaign.click_id", "action": "hash"},
            {"path": "user_id", "action": "hash"},
            {"path": "email", "action": "drop"},
        ]
    )
    event = {
        "user_id": "u1",
        "email": "a@b",
        "context": {"campaign": {"click_id": "abc", "source": "google"}},
    }
    assert enricher.enrich(event) is Outcome.HIT
    assert event == {
        "user_id": expected("u1"),
        "context": {"campaign": {"click_id": expected("abc"), "source": "google"}},
    }


def test_missing_fields_change_nothing() -> None:
    enricher = make(
        [
            EMAIL,
            {"path": "context.campaign.click_id", "action": "hash"},
            {"path": "properties.x", "action": "drop"},
        ]
    )
    for event in [
        {},
        {"user_properties": {}},
        {"user_properties": {"email": None}},
        {"user_properties": "not an object"},
        {"user_properties": ["email"]},
        {"context": {"campaign": None}},
        {"context": {"campaign": "gclid"}},
        {"context": {"campaign": {"source": "x"}}},
    ]:
        before = copy.deepcopy(event)
        assert enricher.enrich(event) is Outcome.SKIPPED
        assert event == before


def test_fields_apply_in_order_and_partial_events_are_a_hit() -> None:
    enricher = make([EMAIL, PHONE])
    event = {"user_properties": {"phone": "+1 555"}}
    assert enricher.enrich(event) is Outcome.HIT
    assert event == {"user_properties": {"phone": expected("+1555")}}


# ------------------------------------------------------------------------------------------
# The key
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", [{}, {"PIPELINE_PII_KEY": ""}])
def test_missing_key_is_unavailable_naming_the_variable(env: dict) -> None:
    with pytest.raises(EnricherUnavailable) as caught:
        make([EMAIL], env=env)
    assert "PIPELINE_PII_KEY" in str(caught.value)
    assert "user_properties.email" in str(caught.value)


def test_short_key_is_refused_without_showing_it() -> None:
    short = "shortkey-123"
    with pytest.raises(EnricherUnavailable) as caught:
        make([EMAIL], env={"PIPELINE_PII_KEY": short})
    assert "PIPELINE_PII_KEY" in str(caught.value) and "16 bytes" in str(caught.value)
    assert short not in str(caught.value) and short not in repr(caught.value)
    # 16 bytes of UTF-8 are enough, however few characters
    make([EMAIL], env={"PIPELINE_PII_KEY": "ü" * 8})


def test_key_env_names_another_variable() -> None:
    enricher = make([EMAIL], env={"MY_KEY": OTHER_KEY}, key_env="MY_KEY")
    event = {"user_properties": {"email": "a@b"}}
    enricher.enrich(event)
    assert event["user_properties"]["email"] == expected("a@b", OTHER_KEY)
    with pytest.raises(EnricherUnavailable, match="MY_KEY"):
        make([EMAIL], env={"PIPELINE_PII_KEY": KEY}, key_env="MY_KEY")


def test_key_never_leaks(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    enricher = make([EMAIL, PHONE])
    event = {"user_properties": {"email": "a@b", "phone": "1"}}
    enricher.enrich(event)
    texts = [
        repr(enricher),
        str(enricher),
        enricher.status(),
        repr(enricher._config),
        str(vars(enricher)),
    ]
    # a failure on one event (a value JSON cannot hold) says nothing about the key either
    with pytest.raises(TypeError) as caught:
        make([{"path": "properties.x", "action": "hash"}]).enrich({"properties": {"x": object()}})
    texts.append(str(caught.value))
    # the start-up error of a stage whose key is too short
    path, _ = topology_file(tmp_path, STAGE)
    with pytest.raises(EnricherUnavailable) as refused:
        Processor(
            load_topology(path, env={"PIPELINE_PII_KEY": "tooshort-" + KEY[:5]}), clock=lambda: NOW
        )
    texts.append(str(refused.value))
    texts.extend(r.getMessage() for r in caplog.records)
    texts.append(caplog.text)
    for text in texts:
        assert KEY not in text
        assert KEY[:5] not in text
    assert any("PIPELINE_PII_KEY" in t for t in texts)


def test_status_close_and_repr() -> None:
    enricher = make([EMAIL, {"path": "properties.coupon", "action": "drop"}])
    assert enricher.status() == "enabled"
    assert repr(enricher) == (
        "<PiiEnricher [user_properties.email:hash, properties.coupon:drop]"
        " key from $PIPELINE_PII_KEY>"
    )
    enricher.close()


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, where, message",
    [
        ({}, "fields", "Field required"),
        ({"fields": []}, "fields", "at least 1"),
        ({"fields": [{"path": "properties.email"}]}, "fields.0.action", "Field required"),
        (
            {"fields": [{"path": "properties.email", "action": "encrypt"}]},
            "fields.0.action",
            "'hash' or 'drop'",
        ),
        (
            {"fields": [{"path": "properties.email", "action": "hash", "normalize": "upper"}]},
            "fields.0.normalize",
            "",
        ),
        (
            {"fields": [{"path": "properties.email", "action": "hash", "salt": "x"}]},
            "fields.0.salt",
            "",
        ),
        (
            {"fields": [{"path": "properties..email", "action": "hash"}]},
            "fields.0.path",
            "not a dotted path",
        ),
        (
            {"fields": [{"path": "properties.e mail", "action": "hash"}]},
            "fields.0.path",
            "not a dotted path",
        ),
        ({"fields": [{"path": 5, "action": "hash"}]}, "fields.0.path", ""),
        ({"fields": [{"path": "properties", "action": "drop"}]}, "fields.0.path", "whole object"),
        ({"fields": [{"path": "context", "action": "hash"}]}, "fields.0.path", "whole object"),
        (
            {"fields": [{"path": "timestamp", "action": "hash"}]},
            "fields.0.path",
            "every event needs it",
        ),
        (
            {"fields": [{"path": "event.name", "action": "hash"}]},
            "fields.0.path",
            "every event needs it",
        ),
        (
            {"fields": [{"path": "user_id.x", "action": "hash"}]},
            "fields.0.path",
            "which is a string",
        ),
        ({"fields": [{"path": "user_id", "action": "drop"}]}, "fields.0", "without an identity"),
        (
            {"fields": [{"path": "properties.x", "action": "drop", "normalize": "strip"}]},
            "fields.0",
            "only applies",
        ),
        ({"fields": [EMAIL, EMAIL]}, "", "listed twice"),
        (
            {"fields": [EMAIL, {"path": "user_properties", "action": "drop"}]},
            "fields.1.path",
            "whole object",
        ),
        (
            {
                "fields": [
                    {"path": "properties.a", "action": "drop"},
                    {"path": "properties.a.b", "action": "hash"},
                ]
            },
            "",
            "overlaps",
        ),
        (
            {"fields": [EMAIL], "key_env": "not-a-name"},
            "key_env",
            "not an environment variable name",
        ),
        ({"fields": [EMAIL], "containers": "keep"}, "containers", ""),
        ({"fields": [EMAIL], "key": "inline-keys-are-not-allowed"}, "key", "Extra inputs"),
    ],
)
def test_bad_config_is_refused(config: dict, where: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PiiConfig.model_validate(config)
    errors = {".".join(str(p) for p in e["loc"]): e["msg"] for e in caught.value.errors()}
    assert where in errors, errors
    assert message in errors[where]


# ------------------------------------------------------------------------------------------
# Through a topology
# ------------------------------------------------------------------------------------------


STAGE = """  - id: pii
    type: enrich
    enricher: pii
    on_error: dead_letter
    config:
      fields:
        - {path: user_properties.email, action: hash, normalize: lower_strip}
        - {path: user_properties.phone, action: drop}"""


def message(user_properties: Any) -> RawMessage:
    event = {
        "event_id": f"e-{next(_ids)}",
        "event": "signed_in",
        "timestamp": int(NOW * 1000),
        "user_id": "u-1",
        "properties": {"method": "password"},
        "context": {},
        "user_properties": user_properties,
    }
    return RawMessage(orjson.dumps(event), key=b"u-1")


def test_in_a_topology(tmp_path: Path) -> None:
    path, _ = topology_file(tmp_path, STAGE)
    topology = load_topology(path, env=ENV)
    processor = Processor(topology, clock=lambda: NOW)
    ctx = processor.process(
        [
            message({"email": "Ann@Example.com", "phone": "+49 1", "plan": "plus"}),
            message({"plan": "free"}),
            message({"email": 12345}),
        ]
    )
    assert [t for t, _, _ in ctx.outputs] == ["processed_events"] * 3
    events = [orjson.loads(v) for _, _, v in ctx.outputs]
    assert events[0]["user_properties"] == {"email": expected("ann@example.com"), "plan": "plus"}
    assert events[1]["user_properties"] == {"plan": "free"}
    assert events[2]["user_properties"] == {"email": expected("12345")}
    assert (ctx.counters[("pii", "hit")], ctx.counters[("pii", "skipped")]) == (2, 1)
    for _, _, value in ctx.outputs:
        assert b"Ann@Example.com" not in value and KEY.encode() not in value
    envelope = compile_schema(topology.schemas["envelope"])
    assert all(envelope(e, "") is None for e in events)


def test_missing_key_in_a_topology(tmp_path: Path) -> None:
    path, _ = topology_file(tmp_path, STAGE)
    with pytest.raises(EnricherUnavailable, match="PIPELINE_PII_KEY"):
        Processor(load_topology(path, env={}), clock=lambda: NOW)
    # Disabled would mean the data passes in clear: pii cannot be optional.
    path, i = topology_file(tmp_path, STAGE.replace("on_error: dead_letter", "optional: true"))
    with pytest.raises(TopologyError) as caught:
        load_topology(path, env={})
    assert any(p.path == f"stages[{i}].optional" for p in caught.value.problems)


def test_key_from_a_topology_variable(tmp_path: Path) -> None:
    stage = STAGE.replace("    config:\n", "    config:\n      key_env: SHOP_PII_KEY\n")
    path, _ = topology_file(tmp_path, stage)
    processor = Processor(load_topology(path, env={"SHOP_PII_KEY": OTHER_KEY}), clock=lambda: NOW)
    ctx = processor.process([message({"email": "a@b"})])
    assert orjson.loads(ctx.outputs[0][2])["user_properties"] == {
        "email": expected("a@b", OTHER_KEY)
    }


def test_bad_config_in_a_topology_names_the_path(tmp_path: Path) -> None:
    stage = """  - id: pii
    type: enrich
    enricher: pii
    config:
      key_env: 1bad
      fields:
        - {path: user_properties.email, action: encrypt}
      colour: blue"""
    path, i = topology_file(tmp_path, stage)
    with pytest.raises(TopologyError) as caught:
        load_topology(path, env=ENV)
    paths = {p.path: p.message for p in caught.value.problems}
    assert f"stages[{i}].config.key_env" in paths
    assert f"stages[{i}].config.fields[0].action" in paths
    assert paths[f"stages[{i}].config.colour"] == "unknown key"


# ------------------------------------------------------------------------------------------
# Generated traffic
# ------------------------------------------------------------------------------------------


def traffic(count: int = 5000) -> list[dict[str, Any]]:
    events = []
    for record in generate(count, TrafficProfile(seed=9)):
        if record.kind == "valid":
            event = orjson.loads(record.value)
            for field in ("properties", "context", "user_properties"):
                event[field] = event.get(field) or {}
            events.append(event)
    return events


FIELDS = [EMAIL, PHONE, {"path": "context.ip", "action": "hash"}]


def test_generated_traffic() -> None:
    enricher = make(FIELDS)
    events = traffic()
    originals = copy.deepcopy(events)
    outcomes = [enricher.enrich(e) for e in events]
    for before, after, outcome in zip(originals, events, outcomes):
        changed = before != after
        assert (outcome is Outcome.HIT) == changed
        if "email" in before["user_properties"]:
            assert after["user_properties"]["email"] == expected(
                before["user_properties"]["email"].strip().lower()
            )
        ip = before["context"].get("ip")
        if ip is not None:
            assert after["context"]["ip"] == expected(ip)
    assert outcomes.count(Outcome.HIT) > len(events) // 2


# ------------------------------------------------------------------------------------------
# Cost: python -m tests.enrichers.test_pii
# ------------------------------------------------------------------------------------------


def _per_event_us(fn: Any, events: list[dict[str, Any]], repeat: int = 9) -> float:
    runs = []
    for _ in range(repeat):
        batch = copy.deepcopy(events)
        start = time.process_time()
        for event in batch:
            fn(event)
        runs.append(time.process_time() - start)
    return statistics.median(runs) / len(events) * 1e6


def bench(count: int = 20_000) -> None:
    key = KEY.encode()

    def baseline(event: dict[str, Any]) -> None:  # hmac.new per value, no normalisation
        traits = event["user_properties"]
        for name in ("email", "phone"):
            value = traits.get(name)
            if value is not None:
                traits[name] = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
        ip = event["context"].get("ip")
        if ip is not None:
            event["context"]["ip"] = hmac.new(key, ip.encode(), hashlib.sha256).hexdigest()

    enricher = make(FIELDS)
    events = traffic(count)
    with_traits = [e for e in events if e["user_properties"]]
    print(
        f"{len(events)} valid events, {len(with_traits)} with user_properties; "
        "fields: email, phone, context.ip"
    )
    for label, subset in [("all events", events), ("with traits", with_traits)]:
        ours = _per_event_us(enricher.enrich, subset)
        base = _per_event_us(baseline, subset)
        print(
            f"{label:12s} pii {ours:6.2f} µs/event   "
            f"naive hmac.new per value {base:6.2f}   ratio {ours / base:.2f}"
        )


if __name__ == "__main__":
    bench()
