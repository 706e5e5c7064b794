"""Tests of the synthetic traffic generator (pipeline.traffic)."""

from __future__ import annotations

import inspect
import ipaddress
import itertools
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.traffic import (
    EVENT_MIX,
    EVENT_TYPES,
    INVALID_FLAVOURS,
    GeneratedRecord,
    TrafficProfile,
    _uuid4,
    generate,
    generate_labelled,
    identity_key,
    product_catalogue,
)

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PROFILE = TrafficProfile(seed=1234, start_ms=START_MS)
SAMPLE_SIZE = 50_000  # records generated once for the module (~1 s)
PARSED = 15_000  # of which the first PARSED are parsed for the detailed checks
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}(Z|[+-]\d{2}:\d{2})$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
BOT_MARKERS = ("Googlebot", "bingbot", "curl/", "python-requests/")
USER_AGENT = re.compile(rb'"user_agent":"([^"\\]*)"')


@pytest.fixture(scope="module")
def sample() -> list[tuple[GeneratedRecord, str | None]]:
    return list(generate_labelled(SAMPLE_SIZE, PROFILE))


@pytest.fixture(scope="module")
def valid(sample) -> list[tuple[GeneratedRecord, dict[str, Any]]]:
    return [(rec, orjson.loads(rec.value)) for rec, _ in sample[:PARSED] if rec.kind == "valid"]


def event_name(ev: dict[str, Any]) -> str:
    return ev["event"] if "event" in ev else ev["event_name"]


def timestamp_ms(value: Any) -> int:
    if type(value) is int:
        return value
    assert isinstance(value, str) and ISO.match(value), value
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None
    return int(parsed.timestamp() * 1000)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def looks_valid(value: bytes, now_ms: int) -> bool:
    """A strict little validator: what a consumer should accept."""
    try:
        ev = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    if type(ev) is not dict:
        return False
    name = ev.get("event", ev.get("event_name"))
    if type(name) is not str or name not in EVENT_MIX:
        return False
    if not any(
        type(ev.get(f)) is str and ev.get(f) for f in ("user_id", "anonymous_id", "device_id")
    ):
        return False
    try:
        ts = timestamp_ms(ev.get("timestamp"))
    except (AssertionError, ValueError):
        return False
    if not now_ms - 30 * 86_400_000 <= ts <= now_ms + 300_000:
        return False
    for field in ("properties", "context", "user_properties"):
        if field in ev and type(ev[field]) is not dict:
            return False
    if value.count(b"{") + value.count(b"[") > 32 and depth(ev) > 32:
        return False
    if name == "purchase_completed":
        props = ev["properties"]
        if type(props.get("order_id")) is not str:
            return False
        if type(props.get("revenue")) is not float or props["revenue"] < 0:
            return False
    return True


# --------------------------------------------------------------------------------------------
# API, validation, determinism
# --------------------------------------------------------------------------------------------


def test_same_profile_same_bytes() -> None:
    first = list(generate(2000, PROFILE))
    second = list(generate(2000, PROFILE))
    assert first == second
    assert [r.value for r in first] == [r.value for r in second]
    other = list(generate(200, TrafficProfile(seed=1235, start_ms=START_MS)))
    assert [r.value for r in other] != [r.value for r in first[:200]]


def digest(records: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    for rec in records:
        h.update(b"%s|%s|%d|" % (rec.kind.encode(), rec.key or b"-", len(rec.value)))
        h.update(rec.value)
    return h.hexdigest()


def test_same_bytes_in_another_process() -> None:
    # nothing may depend on hash randomisation (set order) or on the process
    code = (
        "from __future__ import annotations\nfrom typing import Any\n"
        f"{inspect.getsource(digest)}\nfrom pipeline.traffic import generate, TrafficProfile\n"
        f"print(digest(generate(2000, TrafficProfile(seed=1234, start_ms={START_MS}))))"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == digest(generate(2000, PROFILE))


def test_longer_run_extends_shorter_one() -> None:
    assert list(generate(500, PROFILE)) == list(generate(1500, PROFILE))[:500]


def test_labelled_is_the_same_stream() -> None:
    labelled = list(generate_labelled(2000, PROFILE))
    assert [rec for rec, _ in labelled] == list(generate(2000, PROFILE))
    for rec, flavour in labelled:
        assert (flavour is not None) == (rec.kind == "invalid")


def test_start_ms_only_moves_timestamps() -> None:
    def strip(start: int | None) -> list[Any]:
        out = []
        profile = TrafficProfile(seed=5, start_ms=start)
        for rec in generate(800, profile):
            if rec.kind == "valid":
                ev = orjson.loads(rec.value)
                out.append((ev.pop("timestamp"), ev, rec.key))
        return out

    a, b = strip(START_MS), strip(START_MS + 86_400_000 * 3)
    assert [x[1:] for x in a] == [x[1:] for x in b]
    assert [timestamp_ms(x[0]) + 86_400_000 * 3 for x in a] == [timestamp_ms(x[0]) for x in b]

    now_ms = int(datetime.now().timestamp() * 1000)
    first_ts = timestamp_ms(strip(None)[0][0])
    assert abs(first_ts - (now_ms - 3_600_000)) < 60_000  # default: one hour ago, at call time


def test_profile_validation() -> None:
    with pytest.raises(ValueError, match="invalid_fraction"):
        TrafficProfile(invalid_fraction=1.5)
    with pytest.raises(ValueError, match="duplicate_fraction"):
        TrafficProfile(duplicate_fraction=-0.1)
    with pytest.raises(ValueError, match="ipv6_fraction"):
        TrafficProfile(ipv6_fraction=float("nan"))
    with pytest.raises(ValueError, match="<= 1"):
        TrafficProfile(invalid_fraction=0.6, duplicate_fraction=0.5)
    with pytest.raises(ValueError, match="users"):
        TrafficProfile(users=0)
    with pytest.raises(ValueError, match="events_per_second"):
        TrafficProfile(events_per_second_of_event_time=0)
    with pytest.raises(ValueError, match="count"):
        generate(-1)
    with pytest.raises(TypeError):
        TrafficProfile(1)  # type: ignore[misc]  # keyword-only
    assert list(generate(0)) == []


def test_extreme_profiles() -> None:
    only_invalid = list(
        generate(
            300, TrafficProfile(invalid_fraction=1.0, duplicate_fraction=0.0, start_ms=START_MS)
        )
    )
    assert {r.kind for r in only_invalid} == {"invalid"}
    clean = list(
        generate(
            2000,
            TrafficProfile(
                invalid_fraction=0,
                duplicate_fraction=0,
                users=1,
                ipv6_fraction=1.0,
                start_ms=START_MS,
            ),
        )
    )
    assert {r.kind for r in clean} == {"valid"}
    # one user; the key changes with sign-in, log-out and "new visitor" (sessions >= 20 events)
    assert len({r.key for r in clean}) <= 2000 // 20 + 5
    assert all(
        ipaddress.ip_address(orjson.loads(r.value)["context"]["ip"]).version == 6 for r in clean
    )


def test_uuid4_matches_stdlib() -> None:
    for n in (0, 2**128 - 1, 0x0123456789ABCDEF0123456789ABCDEF):
        assert _uuid4(n) == str(uuid.UUID(int=n, version=4))


def test_product_catalogue() -> None:
    products = product_catalogue()
    assert 450 <= len(products) <= 550
    assert len({p["product_id"] for p in products}) == len(products)
    assert all(p["price"] >= 0 and round(p["price"], 2) == p["price"] for p in products)
    assert products[0]["popularity"] > 10 * products[-1]["popularity"]  # skewed


# --------------------------------------------------------------------------------------------
# The mix
# --------------------------------------------------------------------------------------------


def test_kind_fractions(sample) -> None:
    kinds = Counter(rec.kind for rec, _ in sample[:20_000])
    assert 0.016 * 20_000 <= kinds["invalid"] <= 0.024 * 20_000
    assert 0.007 * 20_000 <= kinds["duplicate"] <= 0.013 * 20_000
    assert kinds["valid"] + kinds["invalid"] + kinds["duplicate"] == 20_000


def test_event_mix(sample) -> None:
    counts = Counter(rec.event for rec, _ in sample if rec.kind == "valid")
    assert set(counts) == set(EVENT_TYPES)
    total = sum(counts.values())
    for name, target in EVENT_MIX.items():
        share = 100 * counts[name] / total
        assert abs(share - target) <= max(1.5, target * 0.3), (name, share, target)


# --------------------------------------------------------------------------------------------
# Valid events
# --------------------------------------------------------------------------------------------


def test_valid_envelopes(valid) -> None:
    span_ms = PARSED * 1000 / PROFILE.events_per_second_of_event_time
    formats: Counter[str] = Counter()
    aliases = 0
    ids = set()
    for rec, ev in valid:
        assert type(ev) is dict
        name = event_name(ev)
        aliases += "event_name" in ev
        assert name in EVENT_TYPES and rec.event == name
        assert UUID4.match(ev["event_id"])
        ids.add(ev["event_id"])
        ident = identity_key(ev)
        assert ident and rec.key == ident.encode()
        ts = ev["timestamp"]
        formats["int" if type(ts) is int else "Z" if ts.endswith("Z") else "offset"] += 1
        assert START_MS - 10_000 <= timestamp_ms(ts) <= START_MS + span_ms + 1000
        assert type(ev["properties"]) is dict and type(ev["context"]) is dict
        ctx = ev["context"]
        assert ctx["library"]["name"] in (
            "analytics.js",
            "analytics-ios",
            "analytics-android",
            "analytics-python",
        )
        if ctx["library"]["name"] == "analytics-python":  # mobile backend: device_id only
            assert set(ev) & {"user_id", "anonymous_id", "device_id"} == {"device_id"}
        if "page_url" in ctx:
            assert ctx["page_url"].startswith("https://shop.example.com/")
        if "user_properties" in ev:
            assert "user_id" in ev and ev["user_properties"]["email"].endswith("@example.com")
    assert len(ids) == len(valid)  # every valid event is new; only duplicates repeat ids
    n = len(valid)
    assert 0.25 < formats["int"] / n < 0.35
    assert 0.03 < formats["offset"] / n < 0.07
    assert 0.03 < aliases / n < 0.07


def test_identities(valid) -> None:
    kinds: Counter[str] = Counter()
    for _, ev in valid:
        if "user_id" in ev:
            kinds["user"] += 1
            assert re.match(r"^u_\d{6}$", ev["user_id"])
        elif "anonymous_id" in ev:
            kinds["anonymous"] += 1
        else:
            kinds["device_only"] += 1
    n = len(valid)
    assert 0.03 < kinds["device_only"] / n < 0.08
    assert kinds["user"] / n > 0.2 and kinds["anonymous"] / n > 0.2


def test_serialisation_is_canonical_orjson(valid) -> None:
    # the generator splices pre-serialised fragments: they must give exactly orjson's output
    for rec, ev in valid:
        assert orjson.dumps(ev) == rec.value


def test_events_are_roughly_in_time_order(valid) -> None:
    stamps = [timestamp_ms(ev["timestamp"]) for _, ev in valid]
    late = [b - a for a, b in itertools.pairwise(stamps) if b < a]
    assert late and max(late, key=abs) >= -6000  # out of order by at most a few seconds
    assert stamps[-1] - stamps[0] > 0.9 * PARSED * 1000 / 200


def test_purchases(sample) -> None:
    purchases = [
        orjson.loads(rec.value)["properties"]
        for rec, _ in sample
        if rec.kind == "valid" and rec.event == "purchase_completed"
    ]
    assert len(purchases) > 500
    coupons = 0
    for props in purchases:
        assert re.match(r"^ord_\d{10}$", props["order_id"])
        assert props["currency"] in ("EUR", "USD", "GBP")
        assert props["revenue"] >= 0 and props["shipping"] >= 0 and props["tax"] >= 0
        assert 1 <= len(props["products"]) <= 5
        lines = 0.0
        for item in props["products"]:
            assert set(item) == {"product_id", "name", "price", "quantity", "category"}
            assert item["price"] >= 0 and type(item["quantity"]) is int and item["quantity"] >= 1
            lines += item["price"] * item["quantity"]
        assert abs(props["revenue"] - (lines + props["shipping"] + props["tax"])) <= 0.011
        coupons += "coupon" in props
    assert 0 < coupons < len(purchases) / 2
    currencies = Counter(p["currency"] for p in purchases)
    assert currencies.most_common(1)[0][0] == "EUR"


def test_properties_per_event(valid) -> None:
    seen: Counter[str] = Counter()
    for rec, ev in valid:
        props = ev["properties"]
        name = rec.event
        seen[name] += 1
        if name == "page_viewed":
            assert set(props) == {"path", "title"}
        elif name in ("product_viewed", "add_to_cart", "remove_from_cart"):
            assert props["product_id"].startswith("sku_") and props["price"] >= 0
            assert round(props["price"], 2) == props["price"] and props["currency"]
            if name != "product_viewed":
                assert type(props["quantity"]) is int and props["quantity"] >= 1
        elif name == "search_performed":
            assert type(props["query"]) is str and type(props["results"]) is int
        elif name == "checkout_started":
            assert props["cart_id"].startswith("cart_") and props["value"] >= 0
            assert type(props["items"]) is int and props["items"] >= 1
        elif name in ("subscription_started", "subscription_cancelled"):
            assert props["billing_period"] in ("monthly", "yearly") and props["price"] > 0
        elif name == "refund_issued":
            assert props["order_id"].startswith("ord_") and props["amount"] >= 0 and props["reason"]
        elif name == "error_occurred":
            assert props["error_type"] and type(props["fatal"]) is bool and props["component"]
            assert "code" not in props or type(props["code"]) is int
        elif name in ("signed_in", "signed_up"):
            assert props["method"] in ("password", "google", "apple")
        elif name == "video_played":
            assert 0 <= props["position_s"] < props["duration_s"]
    assert set(seen) == set(EVENT_TYPES)


def test_page_urls_and_referrers(valid) -> None:
    web = [ev["context"] for _, ev in valid if "page_url" in ev["context"]]
    utm = sum("utm_source=" in c["page_url"] for c in web)
    assert 0.12 < utm / len(web) < 0.18
    assert any("gclid=" in c["page_url"] for c in web)
    assert any("fbclid=" in c["page_url"] for c in web)
    referrers = [c.get("referrer") for c in web]
    assert None in referrers and "" in referrers
    for marker in (
        "google.",
        "bing.com",
        "duckduckgo.com",
        "facebook.com",
        "t.co",
        "newsletter",
        "shop.example.com",
    ):
        assert any(r and marker in r for r in referrers), marker
    assert any(r and "q=" in r for r in referrers)
    locales = Counter(ev["context"]["locale"] for _, ev in valid)
    assert {"en-US", "de-DE", "fr-FR", "en-GB", "nl-NL"} <= set(locales)


def test_ips_are_public(valid) -> None:
    versions: Counter[int] = Counter()
    ips = Counter(ev["context"]["ip"] for _, ev in valid)
    for text, count in ips.items():
        ip = ipaddress.ip_address(text)
        assert ip.is_global and not ip.is_multicast, ip
        versions[ip.version] += count
    assert versions[4] and versions[6]
    assert 0.1 < versions[6] / (versions[4] + versions[6]) < 0.4


def test_user_agents(sample) -> None:
    # all 50k records, without parsing them all: user agents contain no quotes or backslashes
    found = (USER_AGENT.search(rec.value) for rec, _ in sample if rec.kind == "valid")
    uas = Counter(m.group(1).decode() for m in found if m)
    total = sum(uas.values())
    top10 = sum(count for _, count in uas.most_common(10))
    assert top10 / total > 0.40
    assert len(uas) > 500
    bots = sum(count for ua, count in uas.items() if any(m in ua for m in BOT_MARKERS))
    assert 0 < bots / total < 0.08
    assert any("iPad" in ua for ua in uas) and any("SamsungBrowser" in ua for ua in uas)
    assert any("Android" in ua and "Pixel" in ua for ua in uas)


# --------------------------------------------------------------------------------------------
# Duplicates and invalid records
# --------------------------------------------------------------------------------------------


def test_duplicates_resend_an_earlier_valid_record(sample) -> None:
    seen: dict[bytes, GeneratedRecord] = {}
    dups = 0
    for rec, _ in sample:
        if rec.kind == "valid":
            seen[rec.value] = rec
        elif rec.kind == "duplicate":
            dups += 1
            original = seen[rec.value]
            assert original.key == rec.key and original.event == rec.event
    assert dups > 300


def test_invalid_flavours(sample) -> None:
    flavours = Counter(flavour for rec, flavour in sample if rec.kind == "invalid")
    assert set(flavours) == set(INVALID_FLAVOURS)
    total = sum(flavours.values())
    for flavour, (weight, _) in INVALID_FLAVOURS.items():
        assert abs(100 * flavours[flavour] / total - weight) < 4, flavour
    first_1000 = {flavour for rec, flavour in sample[:1000] if flavour}
    assert len(first_1000) >= 6


def test_invalid_records_are_invalid(sample) -> None:
    now_ms = START_MS + 3_600_000
    non_utf8 = non_object = 0
    for rec, flavour in sample:
        if rec.kind != "invalid":
            continue
        assert rec.event is None
        assert not looks_valid(rec.value, now_ms), (flavour, rec.value[:200])
        if flavour == "missing_identity":
            assert rec.key is None
        try:
            rec.value.decode("utf-8")
        except UnicodeDecodeError:
            non_utf8 += 1
            continue
        if rec.value:
            try:
                non_object += type(orjson.loads(rec.value)) is not dict
            except orjson.JSONDecodeError:
                pass
    assert non_utf8 > 20 and non_object > 20


def test_valid_records_pass_the_strict_check(valid) -> None:
    now_ms = START_MS + PARSED * 5 + 3_600_000
    assert all(looks_valid(rec.value, now_ms) for rec, _ in valid)


def test_agrees_with_the_validate_stage() -> None:
    """Cross-check with the pipeline's own validator: valid and duplicate records pass, every
    invalid flavour is dead-lettered with the reason INVALID_FLAVOURS documents."""
    try:
        from pipeline.core.avro_check import compile_schema
        from pipeline.stages.validate import ValidateConfig, ValidateStage
    except ImportError as exc:  # pragma: no cover - the stage is developed alongside
        pytest.skip(f"validate stage not importable: {exc}")

    avro = Path(__file__).resolve().parent.parent / "avro" / "events"
    schemas = {f.stem: compile_schema(orjson.loads(f.read_bytes())) for f in avro.glob("*.avsc")}
    stage = ValidateStage("validate", ValidateConfig(), schemas)
    now_ms = START_MS + 6_000 * 5 + 1000
    for rec, flavour in generate_labelled(6_000, PROFILE):
        try:
            stage.check(rec.value, now_ms)
            reason = None
        except Exception as exc:  # noqa: BLE001  # the stage's (private) exception has .reason
            reason = str(getattr(exc, "reason", None) or exc)
        if rec.kind == "invalid":
            assert reason is not None and reason in INVALID_FLAVOURS[flavour][1], (flavour, reason)
        else:
            assert reason is None, (rec.value[:300], reason)
