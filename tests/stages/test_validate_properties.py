"""Property tests of decode + validate through the whole shipped topology (hostile input).

Unlike ``test_validate.py`` (validate → route only), every message here goes through the full
``Processor`` of ``topologies/ecommerce.yaml``: validate, dedupe, the enrichers, the aggregates
and route. For any input — arbitrary bytes, JSON-ish text with NaN/Infinity, huge numbers,
duplicate keys, lone surrogates, NULs and 10,000-level nesting, payloads around and far above
the size limit, and schema-valid events full of odd Unicode — the properties are:

* ``Processor.process`` never raises, and no stage raises on the way (no ``stage_error`` dead
  letter, no enricher ``error`` counter);
* every input ends up in exactly one place: routed (one output, keyed like the input, or unkeyed
  when consent stripped it), dropped as a duplicate of an earlier input of the batch, or in
  exactly one dead-letter record that validates against ``avro/dead_letter.avsc``, has a known
  reason code and carries the input's ``source.partition``/``offset``;
* the dead-letter reason is the one the validate stage gives that input on its own (no
  cross-talk inside a batch), and agrees with an independent oracle for the payload-level
  reasons (empty, too large, not UTF-8, not an object);
* a schema-valid event is never dead-lettered.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.avro_check import compile_schema
from pipeline.core.deadletter import RECORD_SIZE_LIMIT, dead_letter_key, decode_payload
from pipeline.core.dedupe_store import MemoryDedupeStore
from pipeline.core.processor import Processor
from pipeline.core.reasons import Reason
from pipeline.core.records import RawMessage
from pipeline.stages.dedupe import DedupeStage
from pipeline.stages.validate import _Invalid
from pipeline.topology import Topology
from tests.conftest import FIXED

NOW_MS = int(FIXED * 1000)
MINUTE_MS = 60_000
DAY_MS = 86_400_000
SOURCE = "raw_events"
DLQ = "invalid_events"
AGGREGATES = "aggregates"
LIMIT = 1_048_576  # validate.max_payload_bytes of the shipped topology
REASONS = {r.value for r in Reason}

PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


@pytest.fixture(autouse=True)
def _quiet_stage_failure_logs(caplog: pytest.LogCaptureFixture) -> None:
    # A stage failure is logged with a traceback and then asserted on; keep the output short.
    caplog.set_level(logging.CRITICAL, logger="pipeline.core.processor")


@pytest.fixture(scope="module")
def full_processor(example_topology: Topology) -> Iterator[Processor]:
    """Every stage of the shipped topology (geo runs disabled without a database)."""
    built = Processor(example_topology, clock=lambda: FIXED)
    yield built
    built.close()


@pytest.fixture(scope="module")
def dead_letter_schema(example_topology: Topology) -> Callable[[Any, str], Any]:
    return compile_schema(example_topology.schemas["dead_letter"])


# ------------------------------------------------------------------ the invariant


@dataclass
class Outcome:
    routed: dict[int, tuple[str, dict[str, Any]]]
    """Input index → (topic, event) of the routed inputs that kept their key."""
    dead: dict[int, dict[str, Any]]
    """Input index → its dead-letter record."""
    unkeyed_routed: int
    """Routed events without a key (consent stripped them: their key is dropped too)."""
    duplicates: int


def run_batch(
    processor: Processor,
    dead_letter_schema: Callable[[Any, str], Any],
    values: list[bytes | None],
    keys: list[bytes | None] | None = None,
) -> Outcome:
    """Process ``values`` as one batch and check that each lands in exactly one place.

    Inputs are keyed ``k<index>`` (unless ``keys`` is given) so routed outputs can be traced
    back; dead letters are traced by ``source.offset``.
    """
    # Fresh dedupe memory per batch: only duplicates *within* the batch may be dropped.
    for stage in processor.middle:
        if isinstance(stage, DedupeStage):
            stage.store = MemoryDedupeStore()
    if keys is None:
        keys = [b"k%d" % i for i in range(len(values))]
    messages = [
        RawMessage(
            value=v, key=k, topic=SOURCE, partition=i % 4, offset=1000 + i, timestamp=NOW_MS - i
        )
        for i, (v, k) in enumerate(zip(values, keys, strict=True))
    ]
    ctx = processor.process(messages)  # must not raise

    routes = set(processor.topology.output_topics) - {DLQ, AGGREGATES}
    key_index = {k: i for i, k in enumerate(keys) if k is not None}
    routed: dict[int, tuple[str, dict[str, Any]]] = {}
    dead: dict[int, dict[str, Any]] = {}
    unkeyed = 0
    for topic, key, out in ctx.outputs:
        if topic == AGGREGATES:
            assert isinstance(orjson.loads(out), dict)
            continue
        record = orjson.loads(out)
        if topic == DLQ:
            assert dead_letter_schema(record, "") is None, record
            assert record["reason"] in REASONS, record
            assert record["reason"] != Reason.STAGE_ERROR, f"a stage raised: {record}"
            source = record["source"]
            assert source["topic"] == SOURCE
            index = source["offset"] - 1000
            assert 0 <= index < len(values), record
            assert source["partition"] == index % 4, record
            assert source["timestamp"] == NOW_MS - index
            assert index not in dead, f"input {index} dead-lettered twice"
            # The input's key, or its SHA-256 when it is too long to travel (deadletter.py).
            assert key == dead_letter_key(keys[index]), "a dead letter keeps the input's key"
            original = values[index] or b""
            assert record["payload_size"] == len(original)
            kept = decode_payload(record)
            if record["payload_truncated"]:
                assert original.startswith(kept) and len(kept) < len(original)
            else:
                assert kept == original
            assert len(out) <= 1_000_000, "a dead letter must fit in a default-sized Kafka record"
            dead[index] = record
        else:
            assert topic in routes, topic
            assert type(record["timestamp"]) is int and record["processed_at"] == NOW_MS
            if key is None:
                assert record.get("consent_stripped") is True or keys.count(None), record
                unkeyed += 1
                continue
            index = key_index[key]
            assert index not in routed and index not in dead, f"input {index} output twice"
            routed[index] = (topic, record)

    errors = {k: n for k, n in ctx.counters.items() if k[1] == "error" and n}
    assert not errors, f"a stage raised and skipped an event: {errors}"
    duplicates = sum(n for (stage, outcome), n in ctx.counters.items() if outcome == "duplicate")
    drops = sum(n for (stage, outcome), n in ctx.counters.items() if outcome == "drop")
    assert drops == 0
    assert len(routed) + unkeyed + len(dead) + duplicates == len(values), (
        f"{len(values)} inputs: {len(routed)} routed, {unkeyed} routed unkeyed, "
        f"{len(dead)} dead-lettered, {duplicates} duplicates"
    )
    assert sum(ctx.dead_letters.values()) == len(dead)

    # Each input's fate matches what the validate stage says about it alone (no cross-talk).
    stage = processor.source
    seen_keys: set[bytes] = set()
    dedupe = next(s for s in processor.middle if isinstance(s, DedupeStage))
    for index, value in enumerate(values):
        try:
            event = stage.check(value, NOW_MS)
        except _Invalid as bad:
            assert index in dead, f"input {index} is invalid ({bad.reason}) but not dead-lettered"
            assert dead[index]["reason"] == bad.reason.value, (dead[index], bad.detail)
            assert dead[index]["stage"] == stage.id
            assert dead[index]["path"] == bad.path
            oracle = payload_oracle(value)
            assert oracle is None or dead[index]["reason"] in oracle, (oracle, dead[index])
            continue
        if index in dead:
            # Valid, but stamped and enriched it no longer fits a Kafka record: refused by the
            # route stage (a value that near the limit; the key counts too).
            assert dead[index]["reason"] == Reason.OUTPUT_TOO_LARGE, dead[index]
            assert dead[index]["stage"] == "route"
            assert len(value) + len(keys[index] or b"") > RECORD_SIZE_LIMIT // 2, dead[index]
            continue
        dedupe_key = dedupe.key_for(event)
        if index not in routed:
            assert dedupe_key in seen_keys or keys[index] is None or unkeyed, (
                f"valid input {index} is neither routed nor a duplicate"
            )
        seen_keys.add(dedupe_key)
    return Outcome(routed, dead, unkeyed, duplicates)


def payload_oracle(value: bytes | None) -> set[str] | None:
    """The possible reasons for a payload-level failure, judged without the validate stage
    (None: nothing to say). orjson stops at 1,024 levels, so "too deep" may win over others."""
    if not value:
        return {Reason.EMPTY_PAYLOAD}
    if len(value) > LIMIT:
        return {Reason.PAYLOAD_TOO_LARGE}
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return {Reason.INVALID_UTF8, Reason.TOO_DEEP}
    def no_constants(name: str) -> Any:
        raise ValueError(name)

    try:
        parsed = json.loads(text, parse_constant=no_constants)
    except RecursionError:
        return {Reason.TOO_DEEP, Reason.MALFORMED_JSON}
    except ValueError:
        return {Reason.MALFORMED_JSON, Reason.TOO_DEEP}
    if not isinstance(parsed, dict):
        # orjson is stricter than json (lone surrogates, numbers beyond a double).
        return {Reason.NOT_AN_OBJECT, Reason.MALFORMED_JSON, Reason.TOO_DEEP}
    return None


# ------------------------------------------------------------------ JSON-ish text, hostile


class Raw(str):
    """A token written into the JSON text as it is (need not be valid JSON)."""


class Obj(list):
    """An object as (key, value) pairs: keys may repeat."""


class Arr(list):
    pass


def render(node: Any) -> str:
    if isinstance(node, Raw):
        return str(node)
    if isinstance(node, Obj):
        return "{" + ",".join(f"{render(k)}:{render(v)}" for k, v in node) + "}"
    if isinstance(node, Arr):
        return "[" + ",".join(render(v) for v in node) + "]"
    # Python's json writes NaN/Infinity for non-finite floats, any-size ints, and \\udXXX
    # escapes for lone surrogates: all of them hostile to a strict parser.
    return json.dumps(node, ensure_ascii=False)


EDGE_TEXT = st.sampled_from(
    [
        "",
        "\x00",
        "a\x00b",
        "\u200b",  # zero-width space
        "\u202e",  # right-to-left override
        "\ufeff",  # BOM inside text
        "\uffff",
        "\U0010ffff",
        "e\u0301" * 50,  # combining accents
        "\U0001f600\u200d\U0001f469",
        "\u2028\u2029",
        "\ud800",  # lone surrogates: json escapes them, orjson refuses them
        "\udfff\ud800",
        "ǅ" * 10,
        "😀" * 300,
    ]
)
TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | EDGE_TEXT | st.text(max_size=10)
RAW_TOKENS = st.sampled_from(
    [
        "NaN",
        "-NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1e400",
        "1e-400",
        "-0",
        "1" * 400,
        "18446744073709551616",
        "9223372036854775808",
        "-9223372036854775809",
        "1.7976931348623157e308",
        "5e-324",
        "01",
        "1.",
        ".5",
        "+1",
        "0x1F",
        "True",
        "None",
        "undefined",
        '"\\u0000"',
        '"\\ud800"',
        '"\\udc00\\ud800"',
        '"\\ud83d\\ude00"',
        '"\\x41"',
        '"\\u12"',
        '"\x00"',
        '"\t"',
        "'single'",
        '"unterminated',
        "",
        "/* comment */ 1",
    ]
).map(Raw)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # any size: beyond 64 bits too
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT
    | RAW_TOKENS
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = TEXT | st.sampled_from(["event", "timestamp", "user_id", "properties", "event"])
    return st.lists(children, max_size=4).map(Arr) | st.lists(
        st.tuples(keys, children), max_size=4
    ).map(Obj)


TREES = st.recursive(SCALARS, _containers, max_leaves=12)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """A value nested 1-12,000 levels deep (arrays, objects, or both)."""
    levels = draw(st.sampled_from([30, 31, 32, 33, 511, 1023, 1024, 1025, 10_000]) | st.integers(1, 12_000))
    style = draw(st.sampled_from(["[", "{", "mix"]))
    inner = render(draw(SCALARS))
    if style == "[":
        return Raw("[" * levels + inner + "]" * levels)
    if style == "{":
        return Raw('{"a":' * levels + inner + "}" * levels)
    return Raw('[{"a":' * (levels // 2) + inner + "}]" * (levels // 2))


ENVELOPE_KEYS = [
    "event",
    "event_name",
    "event_id",
    "timestamp",
    "user_id",
    "anonymous_id",
    "device_id",
    "session_id",
    "properties",
    "context",
    "user_properties",
]
PLAUSIBLE = st.sampled_from(
    [
        "page_viewed",
        "purchase_completed",
        "add_to_cart",
        "error_occurred",
        "subscription_started",
        "u-1",
        NOW_MS - MINUTE_MS,
        NOW_MS - 31 * DAY_MS,  # too old
        NOW_MS + DAY_MS,  # too far ahead
        -(2**63),
        2**64 - 1,
        2**70,
        float(NOW_MS),
        "2026-11-18T11:00:00Z",
        "2026-11-18T11:00:00",  # no offset
        "0001-01-01T00:00:00+00:00",
        "9999-12-31T23:59:59+00:00",
        "2026-02-30T00:00:00Z",
        "yesterday",
        {},
        [],
        {"consent": {"analytics": False}, "ip": "10.1.2.3", "user_agent": "Googlebot/2.1"},
        {"email": ["a", {"b": None}]},
    ]
)


HOSTILE_TIMESTAMPS = (
    st.integers()  # far in the past, far in the future, beyond 64 bits
    | st.floats()
    | st.sampled_from(
        [
            0,
            -1,
            NOW_MS // 1000,  # epoch seconds
            NOW_MS * 1000,  # epoch microseconds
            NOW_MS + 5 * MINUTE_MS + 1,
            NOW_MS - 30 * DAY_MS - 1,
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999+14:00",
            "1970-01-01T00:00:00-23:59",
            "2026-11-18T11:06:40Z\x00",
            "2026-11-18 11:06:40+00:00",
            "2026-W47-3T00:00:00Z",
            "+002026-11-18T00:00:00Z",
            "2026-11-18T11:06:40.123456789Z",
            "１９７０-01-01T00:00:00Z",  # full-width digits
            "",
            " ",
            str(NOW_MS),
        ]
    )
    | st.dates().map(lambda d: f"{d.isoformat()}T00:00:00Z")
    | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
)


@st.composite
def event_shaped(draw: st.DrawFn) -> Any:
    """A valid-looking envelope with some fields replaced, repeated or added: wrong types in
    every field, out-of-range and unparseable timestamps, NULs, hostile trees, deep nesting."""
    name = draw(st.sampled_from(["page_viewed", "purchase_completed", "add_to_cart", "error_occurred"]))
    base = {
        "event": name,
        "event_id": "e-1",
        "timestamp": NOW_MS - MINUTE_MS,
        "user_id": "u-1",
        "properties": {
            "purchase_completed": {
                "order_id": "o-1", "revenue": 1.5, "currency": "EUR",
                "products": [{"product_id": "p", "price": 1, "quantity": 1}],
            },
            "add_to_cart": {"product_id": "p", "price": 1.0, "quantity": 2},
            "error_occurred": {"error_type": "Crash"},
        }.get(name, {}),
    }
    pairs = [(k, v) for k, v in base.items() if draw(st.integers(0, 19)) > 0]
    hostile = PLAUSIBLE | TREES | deep()
    for _ in range(draw(st.integers(0, 3))):
        mode = draw(st.sampled_from(["timestamp", "envelope", "property", "other key"]))
        if mode == "timestamp":
            key, value = "timestamp", draw(HOSTILE_TIMESTAMPS | hostile)
        elif mode == "envelope":
            key, value = draw(st.sampled_from(ENVELOPE_KEYS)), draw(hostile)
        elif mode == "property":
            props = dict(base["properties"])
            props[draw(st.sampled_from(sorted(props) or ["x"]) | TEXT)] = draw(hostile)
            key, value = "properties", Obj(props.items())
        else:
            key, value = draw(TEXT), draw(hostile)
        if draw(st.booleans()):
            pairs = [(k, v) for k, v in pairs if k != key]
        pairs.append((key, value))  # may repeat a key: the last one wins
    return Obj(pairs)


ENCODINGS = st.sampled_from(["utf-8"] * 6 + ["utf-8-sp", "utf-16", "latin-1", "cp1252"])


def encode_text(text: str, encoding: str) -> bytes:
    if encoding == "utf-8-sp":
        return text.encode("utf-8", "surrogatepass")  # encoded surrogates: not valid UTF-8
    return text.encode(encoding, "replace")


@st.composite
def json_ish(draw: st.DrawFn) -> bytes:
    tree = draw(event_shaped() | TREES | deep())
    text = render(tree)
    if draw(st.booleans()):
        text = draw(st.sampled_from(["", " ", "\ufeff", "\x00", "\n"])) + text
    return encode_text(text, draw(ENCODINGS))


@st.composite
def huge(draw: st.DrawFn) -> bytes:
    """Payloads around the 1 MiB limit and up to 10 MB, enormous strings, huge numbers."""
    size = draw(st.sampled_from([LIMIT - 200, LIMIT - 60, LIMIT, LIMIT + 1, 10 * 1024 * 1024]))
    kind = draw(st.sampled_from(["string", "number", "binary", "nul", "array", "escapes"]))
    head = b'{"event":"page_viewed","event_id":"e","timestamp":%d,"user_id":"u","pad":' % (
        NOW_MS - MINUTE_MS
    )
    room = max(size - len(head) - 3, 1)
    if kind == "string":
        return head + b'"' + b"x" * room + b'"}'
    if kind == "number":
        return head + b"9" * room + b"}"
    if kind == "binary":
        return b"\xff" * size
    if kind == "nul":
        return b"\x00" * size
    if kind == "array":
        return head + b"[" + b"0," * (room // 2 - 1) + b"0]}"
    return head + b'"' + b"\\u0000" * (room // 6) + b'"}'


# ------------------------------------------------------------------ schema-valid events

_SEQ = iter(range(10**12))
NAME_CHARS = st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"])
SAFE_TEXT = st.text(st.characters(codec="utf-8"), max_size=30) | EDGE_TEXT.filter(
    lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)
)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | SAFE_TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(SAFE_TEXT, c, max_size=4),
    max_leaves=6,
)
MONEY = st.floats(min_value=0, max_value=1e12, allow_nan=False) | st.integers(0, 10**9)
CURRENCY = st.from_regex(r"[A-Z]{3}", fullmatch=True)
PRODUCT = st.fixed_dictionaries(
    {"product_id": SAFE_TEXT.filter(bool), "price": MONEY, "quantity": st.integers(1, 2**31 - 1)},
    optional={"name": st.none() | SAFE_TEXT, "category": st.none() | SAFE_TEXT},
)
SCHEMA_PROPERTIES = {
    "purchase_completed": st.fixed_dictionaries(
        {
            "order_id": st.text(st.characters(codec="utf-8"), min_size=1, max_size=128),
            "revenue": MONEY,
            "currency": CURRENCY,
            "products": st.lists(PRODUCT, min_size=1, max_size=4),
        },
        optional={
            "shipping": st.none() | MONEY,
            "tax": st.none() | MONEY,
            "coupon": st.none() | SAFE_TEXT,
            "email": JSON_VALUES,
            "extra": JSON_VALUES,
        },
    ),
    "add_to_cart": st.fixed_dictionaries(
        {"product_id": SAFE_TEXT.filter(bool), "price": MONEY, "quantity": st.integers(1, 2**31 - 1)},
        optional={"currency": st.none() | CURRENCY, "name": st.none() | SAFE_TEXT},
    ),
    "error_occurred": st.fixed_dictionaries(
        {"error_type": st.text(st.characters(codec="utf-8"), min_size=1, max_size=200)},
        optional={
            "message": st.none() | SAFE_TEXT,
            "code": st.none() | st.integers(-(2**63), 2**63 - 1) | SAFE_TEXT,
            "fatal": st.none() | st.booleans(),
            "component": st.none() | SAFE_TEXT,
        },
    ),
}
OTHER_NAMES = st.sampled_from(
    ["page_viewed", "subscription_started", "refund_issued", "error_js", "signed_in"]
) | st.text(NAME_CHARS, min_size=1, max_size=128).filter(
    lambda s: s.isprintable() and s not in SCHEMA_PROPERTIES
)
IDENT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=256)
CONTEXT_STRINGS = st.none() | SAFE_TEXT | st.sampled_from(
    [
        "10.0.0.1",
        "::1",
        "2001:db8::1",
        "::ffff:1.2.3.4",
        "999.1.1.1",
        "fe80::1%eth0",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15",
        "https://shop.example/p?utm_source=news&utm_medium=email&utm_campaign=%ff%00",
        "https://www.google.com/search?q=\u00e9",
        "http://[::1",
        "https://xn--nxasmq6b.example/%E0%A4%A",
        "de-DE",
    ]
)
CONTEXT = st.fixed_dictionaries(
    {},
    optional={
        "ip": CONTEXT_STRINGS,
        "user_agent": CONTEXT_STRINGS,
        "page_url": CONTEXT_STRINGS,
        "referrer": CONTEXT_STRINGS,
        "locale": CONTEXT_STRINGS,
        "consent": st.fixed_dictionaries({}, optional={"analytics": JSON_SCALARS}),
        "campaign": JSON_VALUES,
        "library": JSON_VALUES,
    },
)


def _iso(ms: int, hours: int, spaces: bool) -> str:
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    text = when.astimezone(timezone(timedelta(hours=hours))).isoformat(timespec="milliseconds")
    return f" {text}\t" if spaces else text


TIMESTAMPS = st.integers(NOW_MS - 30 * DAY_MS + 1000, NOW_MS + 5 * MINUTE_MS)


@st.composite
def valid_event(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(SCHEMA_PROPERTIES)) | OTHER_NAMES)
    props = SCHEMA_PROPERTIES.get(name, st.dictionaries(SAFE_TEXT, JSON_VALUES, max_size=5))
    ts = draw(TIMESTAMPS)
    event: dict[str, Any] = {
        draw(st.sampled_from(["event", "event_name"])): name,
        "timestamp": draw(
            st.sampled_from(["int", "float", "iso"]).map(
                lambda kind, ts=ts: ts if kind == "int" else float(ts) if kind == "float" else kind
            )
        ),
        "properties": draw(props),
    }
    if event["timestamp"] == "iso":
        event["timestamp"] = _iso(ts, draw(st.integers(-12, 14)), draw(st.booleans()))
    seq = next(_SEQ)
    if draw(st.booleans()):
        event["event_id"] = draw(st.text(st.characters(codec="utf-8"), max_size=200)) + f"#{seq}"
    else:
        event["properties"]["hypothesis_seq"] = seq  # no event_id: fingerprinted, keep it unique
    identities = draw(
        st.lists(st.sampled_from(["user_id", "anonymous_id", "device_id"]), min_size=1, unique=True)
    )
    for field in identities:
        event[field] = draw(IDENT)
    for field in draw(st.lists(st.sampled_from(["user_id", "anonymous_id", "device_id"]), unique=True)):
        event.setdefault(field, draw(st.none() | st.just("")))
    optional = {
        "session_id": st.none() | SAFE_TEXT,
        "context": st.none() | CONTEXT,
        "user_properties": st.none()
        | st.fixed_dictionaries({}, optional={"email": JSON_VALUES, "phone": JSON_VALUES}),
        "app_version": JSON_VALUES,
        "\x00odd key \u202e": JSON_VALUES,
    }
    for field in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        event[field] = draw(optional[field])
    return event


ENCODERS: list[Callable[[Any], bytes]] = [
    orjson.dumps,
    lambda v: json.dumps(v).encode(),  # \\uXXXX escapes, surrogate pairs for astral characters
    lambda v: json.dumps(v, ensure_ascii=False, indent=2).encode(),
]


# ------------------------------------------------------------------ the properties


@PROPERTY_SETTINGS
@given(st.lists(st.none() | st.binary(max_size=300), max_size=10))
def test_any_bytes_land_in_exactly_one_place(
    full_processor: Processor, dead_letter_schema: Any, values: list[bytes | None]
) -> None:
    run_batch(full_processor, dead_letter_schema, values)


@settings(PROPERTY_SETTINGS, max_examples=80)
@given(st.lists(json_ish(), min_size=1, max_size=5))
def test_any_json_ish_text_lands_in_exactly_one_place(
    full_processor: Processor, dead_letter_schema: Any, values: list[bytes]
) -> None:
    run_batch(full_processor, dead_letter_schema, values)


@settings(PROPERTY_SETTINGS, max_examples=25)
@given(st.lists(huge(), min_size=1, max_size=3))
def test_huge_payloads_land_in_exactly_one_place(
    full_processor: Processor, dead_letter_schema: Any, values: list[bytes]
) -> None:
    outcome = run_batch(full_processor, dead_letter_schema, values)
    for index, value in enumerate(values):
        if len(value) > LIMIT:
            assert outcome.dead[index]["reason"] == Reason.PAYLOAD_TOO_LARGE
            assert outcome.dead[index]["payload_truncated"] is True


@settings(PROPERTY_SETTINGS, max_examples=60)
@given(st.lists(st.tuples(valid_event(), st.sampled_from(ENCODERS)), min_size=1, max_size=5))
def test_valid_events_are_never_dead_lettered(
    full_processor: Processor, dead_letter_schema: Any, events: list[tuple[dict[str, Any], Any]]
) -> None:
    values = [encode(event) for event, encode in events]
    outcome = run_batch(full_processor, dead_letter_schema, values)
    assert not outcome.dead, outcome.dead
    assert outcome.duplicates == 0
    assert len(outcome.routed) + outcome.unkeyed_routed == len(values)
    for index, (topic, routed) in outcome.routed.items():
        event = events[index][0]
        name = event.get("event") or event.get("event_name")
        assert routed["event"] == name
        if not routed.get("context", {}).get("bot", {}).get("is_bot"):
            if name == "purchase_completed" or name.startswith(("subscription_", "refund_")):
                assert topic == "revenue_events"
            elif name.startswith("error_"):
                assert topic == "error_events"
            else:
                assert topic == "processed_events"


@settings(PROPERTY_SETTINGS, max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.none() | st.binary(max_size=40) | st.just(b"\xff" * 5000),
            st.none() | st.binary(max_size=60) | json_ish() | valid_event().map(orjson.dumps),
        ),
        min_size=1,
        max_size=5,
        unique_by=lambda pair: pair[0],
    )
)
def test_garbage_keys_are_kept_and_never_decide_the_outcome(
    full_processor: Processor, dead_letter_schema: Any, pairs: list[tuple[bytes | None, Any]]
) -> None:
    keys = [k for k, _ in pairs]
    values = [v for _, v in pairs]
    outcome = run_batch(full_processor, dead_letter_schema, values, keys=keys)
    for index, record in outcome.dead.items():
        key = keys[index]
        if key is None:
            assert record["key"] is None and record["key_encoding"] is None
        else:
            expected = key[:1024]
            try:
                assert record["key"] == expected.decode("utf-8")
                assert record["key_encoding"] == "utf8"
            except UnicodeDecodeError:
                assert record["key_encoding"] == "base64"
