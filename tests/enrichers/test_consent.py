"""The consent enricher: what a denied analytics consent removes, and what it keeps.

Value matching (type-aware, booleans are not numbers), missing and malformed consent, the
identity placeholder, extra fields, config errors, a run through a topology (consent first,
then pii) and generated traffic. The per-event cost is printed by
``python -m tests.enrichers.test_consent``.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from pydantic import ValidationError

from pipeline.core.avro_check import compile_schema
from pipeline.core.processor import Processor
from pipeline.core.records import RawMessage
from pipeline.enrichers import EnricherContext, Outcome, enricher_type, get_path
from pipeline.enrichers.consent import ConsentConfig, ConsentEnricher
from pipeline.errors import TopologyError
from pipeline.topology import load_topology
from pipeline.traffic import TrafficProfile, generate
from tests.enrichers.topologies import topology_file

REPO = Path(__file__).resolve().parents[2]
NOW = 1_795_000_000.0
_ids = itertools.count()


def make(**config: Any) -> ConsentEnricher:
    return ConsentEnricher(ConsentConfig(**config), EnricherContext())


def event_with(consent: Any = "absent", **extra: Any) -> dict[str, Any]:
    context: dict[str, Any] = {
        "ip": "203.0.113.9",
        "user_agent": "Mozilla/5.0",
        "page_url": "https://shop.example.com/p/1",
        "referrer": "https://www.google.com/",
        "locale": "de-DE",
    }
    if consent != "absent":
        context["consent"] = {"analytics": consent}
    event = {
        "event_id": "e-1",
        "event": "page_viewed",
        "timestamp": 1_795_000_000_000,
        "user_id": "u_123",
        "anonymous_id": "0b0e-anon",
        "device_id": "dev-9",
        "session_id": "s_1",
        "properties": {"path": "/p/1"},
        "context": context,
        "user_properties": {"email": "ann@example.com", "plan": "plus"},
    }
    event.update(extra)
    return event


def test_registered_by_name() -> None:
    kind = enricher_type("consent")
    assert kind.config_model is ConsentConfig and kind.build is ConsentEnricher


def test_denied_strips_identifiers_and_marks_the_event() -> None:
    event = event_with(False)
    assert make().enrich(event) is Outcome.HIT
    assert event == {
        "event_id": "e-1",
        "event": "page_viewed",
        "timestamp": 1_795_000_000_000,
        "anonymous_id": "consent-denied",
        "properties": {"path": "/p/1"},
        "context": {
            "user_agent": "Mozilla/5.0",
            "page_url": "https://shop.example.com/p/1",
            "referrer": "https://www.google.com/",
            "locale": "de-DE",
            "consent": {"analytics": False},
        },
        "user_properties": {},
        "consent_stripped": True,
    }


def test_granted_changes_nothing() -> None:
    enricher = make()
    for value in [True, "granted", "yes", 1, "1", "absent", None, "maybe"]:
        event = event_with(value)
        before = copy.deepcopy(event)
        assert enricher.enrich(event) is Outcome.SKIPPED, value
        assert event == before


@pytest.mark.parametrize(
    "value", [False, 0, 0.0, "denied", "DENIED", " no ", "0", "false", "False"]
)
def test_default_denied_values(value: Any) -> None:
    assert make().enrich(event_with(value)) is Outcome.HIT


def test_booleans_are_not_numbers() -> None:
    numbers_only = make(denied_values=[0])
    assert numbers_only.enrich(event_with(0)) is Outcome.HIT
    assert numbers_only.enrich(event_with(False)) is Outcome.SKIPPED
    bools_only = make(denied_values=[False])
    assert bools_only.enrich(event_with(False)) is Outcome.HIT
    assert bools_only.enrich(event_with(0)) is Outcome.SKIPPED
    assert bools_only.enrich(event_with("false")) is Outcome.SKIPPED
    # True is not 1 either
    ones = make(denied_values=[1])
    assert ones.enrich(event_with(True)) is Outcome.SKIPPED
    assert ones.enrich(event_with(1)) is Outcome.HIT
    # numbers are not strings
    assert make(denied_values=["0"]).enrich(event_with(0)) is Outcome.SKIPPED


def test_denied_values_parse_type_aware_from_yaml() -> None:
    config = ConsentConfig.model_validate(
        yaml.safe_load("denied_values: [false, 0, '0', no_thanks]")
    )
    assert [type(v) for v in config.denied_values] == [bool, int, str, str]


@pytest.mark.parametrize("value", ["absent", None, {"nested": False}, [False]])
def test_missing_or_malformed_follows_missing_means(value: Any) -> None:
    assert make().enrich(event_with(value)) is Outcome.SKIPPED
    assert make(missing_means="denied").enrich(event_with(value)) is Outcome.HIT


def test_missing_parents_follow_missing_means() -> None:
    strict = make(missing_means="denied")
    for context in [{}, {"consent": None}, {"consent": "denied"}, {"consent": []}]:
        event = event_with()
        event["context"] = {**context, "ip": "1.2.3.4"}
        assert strict.enrich(event) is Outcome.HIT, context
        assert "ip" not in event["context"]
    assert strict.enrich({"user_id": "u"}) is Outcome.HIT


def test_other_field_path() -> None:
    enricher = make(field="consent.analytics_storage", denied_values=["denied"])
    event = event_with()
    event["consent"] = {"analytics_storage": "denied"}  # a top-level field of the input
    assert enricher.enrich(event) is Outcome.HIT
    assert enricher.enrich(event_with(False)) is Outcome.SKIPPED
    enricher = make(field="properties.tracking_ok")
    assert enricher.enrich(event_with(properties={"tracking_ok": "no"})) is Outcome.HIT


def test_keep_anonymous_id() -> None:
    event = event_with(False)
    make(keep_anonymous_id=True).enrich(event)
    assert event["anonymous_id"] == "0b0e-anon"
    assert "user_id" not in event and "device_id" not in event
    # an event with no identity left gets the placeholder anyway
    event = event_with(False)
    del event["anonymous_id"]
    make(keep_anonymous_id=True).enrich(event)
    assert event["anonymous_id"] == "consent-denied"
    # ... unless a kept device_id is still there
    event = event_with(False)
    del event["anonymous_id"]
    make(keep_anonymous_id=True, strip_fields=["session_id"]).enrich(event)
    assert "anonymous_id" not in event and event["device_id"] == "dev-9"


def test_placeholder_and_identity_always_present() -> None:
    for event in [
        event_with(False),
        {"device_id": "d", "context": {"consent": {"analytics": False}}},
    ]:
        make(placeholder_id="no-consent").enrich(event)
        assert event["anonymous_id"] == "no-consent"
        assert any(event.get(f) for f in ("user_id", "anonymous_id", "device_id"))


def test_strip_fields() -> None:
    enricher = make(
        strip_fields=[
            "context.user_agent",
            "properties.email",
            "email",
            "context.campaign.click_id",
        ]
    )
    event = event_with(
        False,
        properties={"email": "a@b", "path": "/"},
        email="top@level",
    )
    event["context"]["campaign"] = {"click_id": "abc", "source": "google"}
    enricher.enrich(event)
    assert "user_agent" not in event["context"]
    assert event["properties"] == {"path": "/"}
    assert "email" not in event
    assert event["context"]["campaign"] == {"source": "google"}
    # the defaults (device_id, session_id) are replaced, not extended
    assert event["device_id"] == "dev-9" and event["session_id"] == "s_1"
    # always removed whatever strip_fields says
    assert (
        "user_id" not in event and "ip" not in event["context"] and event["user_properties"] == {}
    )


def test_odd_shapes_do_not_raise() -> None:
    enricher = make(strip_fields=["context.a.b", "properties.x"])
    for event in [
        {"context": {"consent": {"analytics": False}}},
        {"context": {"consent": {"analytics": False}, "a": "string"}, "properties": []},
        {"context": {"consent": {"analytics": False}, "a": None}, "properties": None},
    ]:
        assert enricher.enrich(event) is Outcome.HIT
        assert event["consent_stripped"] is True
    assert enricher.enrich({"context": "nope"}) is Outcome.SKIPPED


def test_idempotent() -> None:
    event = event_with("denied")
    make().enrich(event)
    once = copy.deepcopy(event)
    assert make().enrich(event) is Outcome.HIT
    assert event == once


def test_status_and_repr() -> None:
    enricher = make()
    assert enricher.status() == "enabled"
    assert "context.consent.analytics" in repr(enricher)
    enricher.close()


@pytest.mark.parametrize(
    "config, where, message",
    [
        ({"field": "context..x"}, "field", "not a dotted path"),
        ({"field": "context"}, "field", "whole object"),
        ({"field": 3}, "field", ""),
        ({"denied_values": []}, "denied_values", "at least 1"),
        ({"denied_values": [" "]}, "denied_values", "empty string"),
        ({"denied_values": [None]}, "denied_values.0", ""),
        ({"denied_values": [{"a": 1}]}, "denied_values.0", ""),
        ({"missing_means": "unknown"}, "missing_means", "'granted' or 'denied'"),
        ({"strip_fields": ["anonymous_id"]}, "strip_fields", "keep_anonymous_id"),
        ({"strip_fields": ["timestamp"]}, "strip_fields", "cannot be stripped"),
        ({"strip_fields": ["consent_stripped"]}, "strip_fields", "cannot be stripped"),
        ({"strip_fields": ["properties"]}, "strip_fields", "whole object"),
        ({"strip_fields": ["bad path!"]}, "strip_fields", "not a dotted path"),
        ({"strip_fields": ["context.consent.analytics"]}, "", "consent field"),
        ({"placeholder_id": ""}, "placeholder_id", ""),
        ({"placeholder_id": "x" * 257}, "placeholder_id", ""),
        ({"keep_anonymous_id": "sometimes"}, "keep_anonymous_id", ""),
        ({"hash_ids": True}, "hash_ids", "Extra inputs"),
    ],
)
def test_bad_config_is_refused(config: dict, where: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ConsentConfig.model_validate(config)
    errors = {".".join(str(p) for p in e["loc"]): e["msg"] for e in caught.value.errors()}
    matching = [loc for loc in errors if loc == where or loc.startswith(where + ".")]
    assert matching, errors
    assert any(message in errors[loc] for loc in matching), errors


# ------------------------------------------------------------------------------------------
# Through a topology: consent first, then pii
# ------------------------------------------------------------------------------------------


STAGES = """  - id: consent
    type: enrich
    enricher: consent
    on_error: dead_letter
    config:
      missing_means: granted

  - id: pii
    type: enrich
    enricher: pii
    config:
      fields: [{path: user_properties.email, action: hash, normalize: lower_strip}]"""


def message(consent: Any) -> RawMessage:
    event = event_with(consent, event_id=f"e-{next(_ids)}", timestamp=int(NOW * 1000))
    return RawMessage(orjson.dumps(event), key=b"u_123")


def test_in_a_topology(tmp_path: Path) -> None:
    path, _ = topology_file(tmp_path, STAGES)
    topology = load_topology(path, env={"PIPELINE_PII_KEY": "k" * 32})
    processor = Processor(topology, clock=lambda: NOW)
    ctx = processor.process([message("denied"), message("granted"), message("absent")])
    assert [t for t, _, _ in ctx.outputs] == ["processed_events"] * 3
    denied, granted, absent = (orjson.loads(v) for _, _, v in ctx.outputs)
    assert denied["consent_stripped"] is True
    assert denied["anonymous_id"] == "consent-denied"
    assert denied.get("user_id") is None and "ip" not in denied["context"]
    assert denied["user_properties"] == {}
    assert b"ann@example.com" not in ctx.outputs[0][2] and b"203.0.113.9" not in ctx.outputs[0][2]
    for kept in (granted, absent):
        assert "consent_stripped" not in kept
        assert kept["user_id"] == "u_123" and kept["context"]["ip"] == "203.0.113.9"
        assert len(kept["user_properties"]["email"]) == 64  # hashed by pii
    assert ctx.counters[("consent", "hit")] == 1
    assert ctx.counters[("consent", "skipped")] == 2
    assert ctx.counters[("pii", "skipped")] == 1 and ctx.counters[("pii", "hit")] == 2
    envelope = compile_schema(topology.schemas["envelope"])
    assert all(envelope(orjson.loads(v), "") is None for _, _, v in ctx.outputs)
    # A stripped event does not carry the user id in its Kafka key either.
    assert ctx.outputs[0][1] is None


def test_consent_cannot_be_optional(tmp_path: Path) -> None:
    # A privacy stage that could be skipped would let personal data through.
    stage = STAGES.split("\n\n")[0].replace("on_error: dead_letter", "optional: true")
    path, i = topology_file(tmp_path, stage)
    with pytest.raises(TopologyError) as caught:
        load_topology(path, env={})
    assert any(p.path == f"stages[{i}].optional" for p in caught.value.problems)


def test_bad_config_in_a_topology_names_the_path(tmp_path: Path) -> None:
    stage = """  - id: consent
    type: enrich
    enricher: consent
    config:
      missing_means: maybe
      strip_fields: [anonymous_id]
      colour: blue"""
    path, i = topology_file(tmp_path, stage)
    with pytest.raises(TopologyError) as caught:
        load_topology(path, env={})
    paths = {p.path: p.message for p in caught.value.problems}
    assert f"stages[{i}].config.missing_means" in paths
    assert "keep_anonymous_id" in paths[f"stages[{i}].config.strip_fields"]
    assert paths[f"stages[{i}].config.colour"] == "unknown key"


# ------------------------------------------------------------------------------------------
# Generated traffic
# ------------------------------------------------------------------------------------------


def traffic(count: int = 5000, denied_every: int = 0) -> list[dict[str, Any]]:
    events = []
    for i, record in enumerate(
        r for r in generate(count, TrafficProfile(seed=13)) if r.kind == "valid"
    ):
        event = orjson.loads(record.value)
        for field in ("properties", "context", "user_properties"):
            event[field] = event.get(field) or {}
        if denied_every and i % denied_every == 0:
            event["context"]["consent"] = {"analytics": "denied"}
        events.append(event)
    return events


def test_generated_traffic() -> None:
    enricher = make()
    events = traffic(denied_every=4)
    for event in events:
        denied = get_path(event, "context.consent.analytics") == "denied"
        assert enricher.enrich(event) is (Outcome.HIT if denied else Outcome.SKIPPED)
        if denied:
            assert event["anonymous_id"] == "consent-denied"
            for gone in ("user_id", "device_id", "session_id"):
                assert gone not in event
            assert "ip" not in event["context"] and event["user_properties"] == {}


# ------------------------------------------------------------------------------------------
# Cost: python -m tests.enrichers.test_consent
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
    enricher = make()
    granted = traffic(count)
    denied = traffic(count, denied_every=1)
    lookup = _per_event_us(lambda e: get_path(e, "context.consent.analytics"), granted)
    print(f"{len(granted)} valid events")
    print(f"no consent field (granted) {_per_event_us(enricher.enrich, granted):6.2f} µs/event")
    print(f"every event denied         {_per_event_us(enricher.enrich, denied):6.2f} µs/event")
    print(f"baseline: get_path of the field {lookup:6.2f} µs/event")


if __name__ == "__main__":
    bench()
