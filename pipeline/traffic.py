"""Deterministic synthetic e-commerce traffic: raw behavioural events as Kafka key/value bytes.

Used by ``pipeline produce --generate N``, demos, integration tests and benchmarks::

    from pipeline.traffic import TrafficProfile, generate

    for record in generate(100_000, TrafficProfile(seed=7, start_ms=1_767_225_600_000)):
        producer.produce(topic, key=record.key, value=record.value)

What comes out
--------------
* ``valid`` records: a JSON object per event (the envelope below), compact UTF-8 JSON exactly as
  ``orjson.dumps`` writes it.
* ``invalid`` records (``TrafficProfile.invalid_fraction`` of the output): one of
  :data:`INVALID_FLAVOURS`, each a distinct way a producer gets it wrong (see that mapping for
  what each one is and which dead-letter reason a validator should give it).
* ``duplicate`` records (``TrafficProfile.duplicate_fraction``): the exact key and value bytes of
  one of the last 1,000 valid records again (same ``event_id``), as an at-least-once producer
  retry would send them.

The envelope of a valid event::

    {"event_id": "<uuid4>", "event": "product_viewed",   # ~5% say "event_name" instead
     "timestamp": "2026-11-29T17:15:55.123Z",     # ~30% epoch ms int, ~5% "+02:00" offsets
     "user_id": "u_000123", "anonymous_id": "<uuid>",    # identity: see below
     "session_id": "s_9f2c...", "properties": {...},
     "context": {"ip": ..., "user_agent": ..., "page_url": ..., "referrer": ..., "locale": "de-DE",
                 "library": {"name": "analytics.js", "version": "4.1.0"}},
     "user_properties": {"plan": "plus", "email": "user123@example.com", "phone": "+4915..."}}

Events from the mobile apps have ``context.screen`` instead of ``page_url``/``referrer``.
``properties`` by event (the mix is :data:`EVENT_MIX`):

* page_viewed: path, title; product_list_viewed: list_id, category
* product_viewed: product_id, name, category, price, currency (+ quantity for add_to_cart and
  remove_from_cart); ~500 products (:func:`product_catalogue`) with skewed popularity
* search_performed: query, results; video_played: video_id, position_s, duration_s
* checkout_started: cart_id, value, currency, items
* purchase_completed: order_id, revenue (= sum of price * quantity + shipping + tax, rounded to
  cents), currency, shipping, tax, coupon (sometimes), products (1-5 line items)
* subscription_started / _cancelled: plan, billing_period, price, currency
* refund_issued: order_id, amount, currency, reason; signed_in / signed_up: method
* error_occurred: error_type, message, code (sometimes), fatal, component

A user's session follows a rough funnel: add_to_cart mostly adds the product last viewed,
checkout and purchase use the cart, a refund refers to the user's last order.

Identity: logged-in users carry ``user_id`` (and usually ``anonymous_id``); anonymous visitors
only ``anonymous_id``; visitors sign in / sign up (their events gain ``user_id``) and
occasionally log out or come back as a fresh anonymous visitor. Users of the mobile apps also
carry ``device_id``, and about 5% of all events come from the "mobile backend", which knows only
the ``device_id`` (library ``analytics-python``, no user agent, page or session). The record key
is ``user_id``, else ``anonymous_id``, else ``device_id`` (see :func:`identity_key`).

Event time starts at ``start_ms`` and advances by ``1000 / events_per_second_of_event_time`` ms
per record on average; each event's timestamp is that clock minus a small jitter (mostly under
200 ms, a few percent up to 5 s), so events are slightly out of order.

Determinism: the output is a pure function of the profile and ``count`` (``random.Random(seed)``,
no clock, no environment); two runs with the same profile, including ``start_ms``, are
byte-identical. With ``start_ms=None`` only the timestamps depend on the wall clock.
Nothing is computed at import time; the shared pools (user agents, products, ...) are built on
the first call and cached.

Speed: one record costs about as much CPU as ``orjson.loads`` of it (values average ~640 B):
65-125k records/s on one core of the shared 2-vCPU VM this was measured on (where
``orjson.loads`` of such an event takes 7-18 us). ``python -m pipeline.traffic --bench 200000``
measures it and prints the achieved mix. Consume the iterator as a stream: a million records
held in a list take ~1 GB.
"""

from __future__ import annotations

import base64
import bisect
import functools
import math
import random
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import orjson

from pipeline.core.identity import canonical_identity

__all__ = [
    "EVENT_MIX",
    "EVENT_TYPES",
    "INVALID_FLAVOURS",
    "GeneratedRecord",
    "TrafficProfile",
    "generate",
    "generate_labelled",
    "identity_key",
    "product_catalogue",
]

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _check_profile(p: TrafficProfile) -> None:
    """Raise ``ValueError`` (``TypeError`` for a non-int seed) naming the first bad field."""
    if isinstance(p.seed, bool) or not isinstance(p.seed, int):
        raise TypeError(f"TrafficProfile.seed must be an int, got {p.seed!r}")
    if isinstance(p.users, bool) or not isinstance(p.users, int) or p.users < 1:
        raise ValueError(f"TrafficProfile.users must be an int >= 1, got {p.users!r}")
    for name in ("invalid_fraction", "duplicate_fraction", "ipv6_fraction"):
        value = getattr(p, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0.0 <= value <= 1.0
        ):
            raise ValueError(f"TrafficProfile.{name} must be a number in [0, 1], got {value!r}")
    if p.invalid_fraction + p.duplicate_fraction > 1.0:
        raise ValueError(
            "TrafficProfile.invalid_fraction + duplicate_fraction must be <= 1, got "
            f"{p.invalid_fraction} + {p.duplicate_fraction}"
        )
    rate = p.events_per_second_of_event_time
    if (
        isinstance(rate, bool)
        or not isinstance(rate, (int, float))
        or not math.isfinite(rate)
        or rate <= 0
    ):
        raise ValueError(
            f"TrafficProfile.events_per_second_of_event_time must be a finite number > 0, got {rate!r}"
        )
    if p.start_ms is not None and (
        isinstance(p.start_ms, bool) or not isinstance(p.start_ms, int) or p.start_ms < 0
    ):
        raise ValueError(
            f"TrafficProfile.start_ms must be None or epoch milliseconds >= 0, got {p.start_ms!r}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficProfile:
    """Knobs of the generated traffic. All fields are keyword-only; the defaults are a demo shop.

    Raises ``ValueError`` on construction when a field is out of range.
    """

    seed: int = 42
    """Seed of the ``random.Random`` driving everything; same seed, same output."""
    users: int = 5000
    """Distinct users (the identity pool). Activity is skewed: a few users are very active."""
    invalid_fraction: float = 0.02
    """Fraction of emitted records that are invalid in some way (see ``INVALID_FLAVOURS``)."""
    duplicate_fraction: float = 0.01
    """Fraction of emitted records that are an exact resend (same key and value bytes, same
    ``event_id``) of one of the last 1,000 valid records."""
    start_ms: int | None = None
    """Event time (epoch ms) of the first event; ``None``: one hour before the call to
    :func:`generate` (read from the clock at call time, never at import)."""
    events_per_second_of_event_time: float = 200.0
    """How fast event time advances: records per second of event time. N records span
    ``N / events_per_second_of_event_time`` seconds of event time (with the defaults, event
    time passes the wall clock after 720,000 records; raise this or set ``start_ms`` earlier
    when generating millions of events for a validator with a future-skew limit)."""
    ipv6_fraction: float = 0.25
    """Fraction of users whose ``context.ip`` is IPv6 (the rest IPv4); all addresses public."""

    def __post_init__(self) -> None:
        _check_profile(self)


@dataclass(frozen=True, slots=True)
class GeneratedRecord:
    """One Kafka message to produce."""

    key: bytes | None
    """The user identity (``user_id``, else ``anonymous_id``, else ``device_id``) as UTF-8;
    ``None`` only for some invalid records."""
    value: bytes
    """The raw message value (arbitrary bytes for invalid records, possibly empty)."""
    kind: str
    """``"valid"``, ``"invalid"`` or ``"duplicate"``."""
    event: str | None
    """The event name for valid and duplicate records; ``None`` for invalid ones."""


EVENT_MIX: dict[str, float] = {
    "page_viewed": 38.0,
    "product_viewed": 22.0,
    "add_to_cart": 9.0,
    "product_list_viewed": 7.0,
    "search_performed": 6.0,
    "video_played": 4.1,
    "checkout_started": 3.0,
    "error_occurred": 3.0,
    "purchase_completed": 2.5,
    "remove_from_cart": 2.0,
    "signed_in": 2.0,
    "signed_up": 0.5,
    "subscription_started": 0.4,
    "refund_issued": 0.3,
    "subscription_cancelled": 0.2,
}
"""Target share (percent of valid events) of each event type; sums to 100. The achieved mix
differs slightly: crawlers (~3% of events) only view pages, products and lists."""

EVENT_TYPES: tuple[str, ...] = tuple(EVENT_MIX)
"""Every event name a valid or duplicate record can carry."""

INVALID_FLAVOURS: dict[str, tuple[float, str]] = {
    "truncated_json": (12, "malformed_json: a valid event cut off mid-object"),
    "invalid_utf8": (
        10,
        (
            "invalid_utf8: UTF-16 with a BOM, binary junk after b'\\xff\\xfe', or a Latin-1 string"
            " inside otherwise valid JSON"
        ),
    ),
    "not_an_object": (10, "not_an_object: a JSON array, string, number, true or null"),
    "missing_event": (10, "missing_field: neither event nor event_name"),
    "missing_identity": (10, "missing_identity: no user_id/anonymous_id/device_id (key None)"),
    "bad_timestamp": (
        12,
        (
            "bad_timestamp ('yesterday', '2025-13-45T25:61:00Z', ...) or timestamp_out_of_range"
            " (epoch seconds in the 1970s, or decades in the future)"
        ),
    ),
    "wrong_types": (
        10,
        "wrong_type: properties as a JSON-encoded string or an array, or event as a number",
    ),
    "bad_purchase": (
        10,
        (
            "schema_violation: purchase_completed with negative revenue, revenue as a string, or no"
            " order_id"
        ),
    ),
    "empty_value": (6, "empty_payload: b'' (key kept or None)"),
    "deep_nesting": (10, "too_deep: properties nested 200-299 levels deep"),
}
"""Invalid flavour -> (relative weight in percent of invalid records, what it is / the
dead-letter reason a validator should give it). Weights sum to 100."""


# The partition key rule: user_id, else anonymous_id, else device_id.
identity_key = canonical_identity


def generate(count: int, profile: TrafficProfile = TrafficProfile()) -> Iterator[GeneratedRecord]:
    """``count`` records of synthetic traffic shaped by ``profile`` (lazily, in order).

    The same ``profile`` (with ``start_ms`` set) and ``count`` always give byte-identical
    records; a longer ``count`` extends a shorter one (the first N records are the same).
    Raises ``ValueError`` for a negative count or an invalid profile.
    """
    count, start_ms = _prepare(count, profile)
    return _run(count, profile, start_ms, False)


def generate_labelled(
    count: int, profile: TrafficProfile = TrafficProfile()
) -> Iterator[tuple[GeneratedRecord, str | None]]:
    """Like :func:`generate` (the very same records), each paired with its invalid flavour (a key
    of :data:`INVALID_FLAVOURS`) or ``None`` for valid and duplicate records."""
    count, start_ms = _prepare(count, profile)
    return _run(count, profile, start_ms, True)


def product_catalogue() -> list[dict[str, Any]]:
    """The fixed product catalogue (~500 products; the same for every seed), most popular first:
    ``{"product_id", "name", "category", "price", "popularity"}`` (popularity: share of product
    picks). Handy as an enrichment lookup table in demos."""
    pools = _pools()
    return [
        {
            "product_id": p[0],
            "name": p[1],
            "category": p[2],
            "price": p[3],
            "popularity": pools.product_share[i],
        }
        for i, p in sorted(enumerate(pools.products), key=lambda ip: -pools.product_share[ip[0]])
    ]


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _prepare(count: int, profile: TrafficProfile) -> tuple[int, int]:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    if not isinstance(profile, TrafficProfile):
        raise TypeError(f"profile must be a TrafficProfile, got {type(profile).__name__}")
    _check_profile(profile)
    start_ms = profile.start_ms
    if start_ms is None:
        start_ms = int(time.time() * 1000) - 3_600_000
    return count, start_ms


# --------------------------------------------------------------------------------------------
# Static pools (built once, on first use, from a fixed seed: the same for every profile)
# --------------------------------------------------------------------------------------------

_BASE = "https://shop.example.com"
_POOL_SEED = 0x5EED_CA7A
_TABLE = 4096  # resolution of the weighted lookup tables


def _table(items: list[Any], weights: list[float], size: int = _TABLE) -> list[Any]:
    """A list of ``size`` (a power of two) entries where each item appears ~in proportion to its
    weight, so that ``table[rng.getrandbits(log2(size))]`` is a weighted pick in one C call."""
    assert size & (size - 1) == 0, size
    total = float(sum(weights))
    out: list[Any] = []
    acc = 0.0
    for item, weight in zip(items, weights):
        acc += weight
        upto = round(acc / total * size)
        out.extend([item] * (upto - len(out)))
    out.extend([items[-1]] * (size - len(out)))
    return out


def _j(value: Any) -> str:
    """``value`` as JSON text (orjson's exact formatting, so fragments splice byte-identically)."""
    return orjson.dumps(value).decode()


def _check_url(url: str, allow_empty: bool = False) -> str:
    """URLs are spliced into JSON unescaped: make sure they need no escaping."""
    if (
        (not url and not allow_empty)
        or not url.isascii()
        or not url.isprintable()
        or any(ch in url for ch in '"\\')
    ):
        raise RuntimeError(f"URL needs JSON escaping: {url!r}")
    return url


def _slug(text: str) -> str:
    out = []
    for ch in text.lower():
        out.append(ch if ch.isalnum() and ch.isascii() else "-")
    return "-".join(filter(None, "".join(out).split("-")))


# ---- user agents ---------------------------------------------------------------------------

_WIN10 = "Windows NT 10.0; Win64; x64"
_MAC = "Macintosh; Intel Mac OS X 10_15_7"
_LINUX = "X11; Linux x86_64"
_WEBKIT = "AppleWebKit/537.36 (KHTML, like Gecko)"
_SAFARI_WEBKIT = "AppleWebKit/605.1.15 (KHTML, like Gecko)"


def _chrome_build(v: int) -> str:
    # plausible Chrome build numbers (4430 for 90, ~62 per major version after)
    build = 4430 + (v - 90) * 47 if v < 100 else 4896 + (v - 100) * 62
    return f"{v}.0.{build}.{(v * 37) % 200 + 50}"


def _chrome(os_part: str, v: int, mobile: bool = False) -> str:
    ver = f"{v}.0.0.0" if v >= 101 else _chrome_build(v)
    return (
        f"Mozilla/5.0 ({os_part}) {_WEBKIT} Chrome/{ver} {'Mobile ' if mobile else ''}Safari/537.36"
    )


def _iphone_safari(major: int, minor: int, device: str = "iPhone") -> str:
    os_tok = f"{major}_{minor}" if minor else f"{major}_0"
    cpu = "CPU iPhone OS" if device == "iPhone" else "CPU OS"
    return (
        f"Mozilla/5.0 ({device}; {cpu} {os_tok} like Mac OS X) {_SAFARI_WEBKIT} "
        f"Version/{major}.{minor} Mobile/15E148 Safari/604.1"
    )


_ANDROID_MODELS = [
    "SM-S918B",
    "SM-S911B",
    "SM-S928B",
    "SM-A546B",
    "SM-A556B",
    "SM-A155F",
    "SM-G991B",
    "SM-G998B",
    "SM-A525F",
    "SM-A336B",
    "SM-F946B",
    "SM-A137F",
    "Pixel 8",
    "Pixel 8 Pro",
    "Pixel 7",
    "Pixel 7a",
    "Pixel 6",
    "Pixel 9 Pro",
    "2201116SG",
    "23021RAAEG",
    "Redmi Note 12",
    "M2101K6G",
    "CPH2581",
    "CPH2449",
    "moto g54 5G",
    "moto g(30)",
    "motorola edge 40",
    "ONEPLUS A6013",
    "LE2123",
    "Nokia G21",
    "VOG-L29",
    "ELE-L29",
    "RMX3630",
    "V2207",
    "SM-T870",
    "SM-X700",
    "Lenovo TB-X606F",
]
_SAMSUNG_MODELS = [m for m in _ANDROID_MODELS if m.startswith("SM-")]
_IOS_VERSIONS = (
    [(15, m) for m in range(8)]
    + [(16, m) for m in range(8)]
    + [(17, m) for m in range(8)]
    + [(18, m) for m in range(3)]
)

_BOTS: list[tuple[str, float]] = [
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", 20),
    (
        (
            "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like"
            " Gecko) Chrome/131.0.6778.69 Mobile Safari/537.36 (compatible; Googlebot/2.1;"
            " +http://www.google.com/bot.html)"
        ),
        14,
    ),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", 10),
    ("curl/8.5.0", 6),
    ("curl/7.81.0", 4),
    ("python-requests/2.31.0", 6),
    ("python-requests/2.32.3", 4),
    ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", 6),
    ("Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)", 5),
    ("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", 3),
    ("DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)", 3),
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", 4),
    (
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko)"
            " Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)"
        ),
        3,
    ),
    (
        (
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2;"
            " +https://openai.com/gptbot)"
        ),
        3,
    ),
    ("Go-http-client/1.1", 3),
    ("Wget/1.21.4", 2),
    (
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
            " HeadlessChrome/131.0.0.0 Safari/537.36"
        ),
        3,
    ),
    ("okhttp/4.12.0", 1),
]


def _build_user_agents(rng: random.Random) -> tuple[list[str], list[float], list[str]]:
    """(~2,000 browser UAs, their Zipf-like weights, platform of each: desktop/ios/android)."""
    head: list[tuple[str, float]] = [
        (_chrome(_WIN10, 131), 12.0),
        (_iphone_safari(18, 1), 9.0),
        (_chrome("Linux; Android 10; K", 131, mobile=True), 8.0),
        (_chrome(_MAC, 131), 5.0),
        (_chrome(_WIN10, 130), 4.0),
        (_chrome(_WIN10, 131) + " Edg/131.0.0.0", 3.5),
        (f"Mozilla/5.0 ({_MAC}) {_SAFARI_WEBKIT} Version/18.1 Safari/605.1.15", 3.0),
        (_iphone_safari(17, 6), 3.0),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0", 2.5),
        (_chrome("Linux; Android 10; K", 130, mobile=True), 2.5),
    ]
    # tier 0: current, tier 1: last couple of years, tier 2: old / niche
    cands: list[tuple[int, str]] = []
    add = cands.append
    for v in range(100, 132):
        tier = 0 if v >= 124 else 1
        for os_part in (_WIN10, _MAC, _LINUX, "X11; CrOS x86_64 14541.0.0"):
            add((tier, _chrome(os_part, v)))
        add((tier + 1, _chrome("Windows NT 6.1; Win64; x64", v)))
        add((tier, _chrome("Linux; Android 10; K", v, mobile=True)))
        add((tier + 1, _chrome("Linux; Android 10; K", v)))  # tablets
        for os_part in (_WIN10, _MAC):
            add((tier, _chrome(os_part, v) + f" Edg/{_chrome_build(v)}"))
        if v >= 110:
            add(
                (
                    tier,
                    (
                        f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) {_SAFARI_WEBKIT} "
                        f"CriOS/{_chrome_build(v)} Mobile/15E148 Safari/604.1"
                    ),
                )
            )
    for v in range(100, 134):
        tier = 0 if v >= 125 else 1
        add(
            (
                tier,
                f"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
            )
        )
        add(
            (
                tier,
                f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
            )
        )
        add((tier + 1, f"Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0"))
        add(
            (
                tier + 1,
                f"Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
            )
        )
        for a in (12, 13, 14):
            add(
                (tier + 1, f"Mozilla/5.0 (Android {a}; Mobile; rv:{v}.0) Gecko/{v}.0 Firefox/{v}.0")
            )
        add(
            (
                tier + 1,
                (
                    f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) {_SAFARI_WEBKIT} "
                    f"FxiOS/{v}.0 Mobile/15E148 Safari/605.1.15"
                ),
            )
        )
    for major, minor in _IOS_VERSIONS:
        tier = 0 if major >= 17 else 1
        add((tier, _iphone_safari(major, minor)))
        add((tier, _iphone_safari(major, minor, "iPad")))
        add(
            (
                tier + 1,
                (
                    f"Mozilla/5.0 (iPhone; CPU iPhone OS {major}_{minor} like Mac OS X) "
                    f"{_SAFARI_WEBKIT} Mobile/15E148 Instagram 3{major}{minor}.0.0.28.114 "
                    f"(iPhone14,{minor % 8 + 2}; iOS {major}_{minor}; de_DE; de; scale=3.00; "
                    f"1170x2532; 5{major}{minor}21833)"
                ),
            )
        )
        add(
            (
                tier + 1,
                (
                    f"Mozilla/5.0 (iPhone; CPU iPhone OS {major}_{minor} like Mac OS X) "
                    f"{_SAFARI_WEBKIT} Mobile/15E148 [FBAN/FBIOS;FBAV/4{major}{minor}.0.0.39.93;"
                    f"FBBV/5{major}{minor}94;FBDV/iPhone15,2;FBMD/iPhone;FBSN/iOS;"
                    f"FBSV/{major}.{minor};FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]"
                ),
            )
        )
    for ver in (
        "15.6.1",
        "16.0",
        "16.1",
        "16.2",
        "16.3",
        "16.4",
        "16.5",
        "16.6",
        "17.0",
        "17.1",
        "17.2",
        "17.3",
        "17.4",
        "17.5",
        "17.6",
        "18.0",
        "18.2",
    ):
        add(
            (
                0 if ver >= "17" else 1,
                f"Mozilla/5.0 ({_MAC}) {_SAFARI_WEBKIT} Version/{ver} Safari/605.1.15",
            )
        )
    for model in _ANDROID_MODELS:
        tablet = model.startswith(("SM-T", "SM-X", "Lenovo"))
        for a in (9, 10, 11, 12, 13, 14):
            for v in range(90, 110, 3):
                add(
                    (
                        1 if a >= 12 else 2,
                        (
                            f"Mozilla/5.0 (Linux; Android {a}; {model}) {_WEBKIT} "
                            f"Chrome/{_chrome_build(v)} {'' if tablet else 'Mobile '}Safari/537.36"
                        ),
                    )
                )
            add(
                (
                    2,
                    (
                        f"Mozilla/5.0 (Linux; Android {a}; {model} Build/TP1A.220624.014; wv) {_WEBKIT} "
                        f"Version/4.0 Chrome/{_chrome_build(99 + a)} Mobile Safari/537.36"
                    ),
                )
            )
    for model in _SAMSUNG_MODELS:
        for sv, cv in (
            (20, 106),
            (21, 110),
            (22, 111),
            (23, 115),
            (24, 117),
            (25, 121),
            (26, 122),
            (27, 125),
        ):
            add(
                (
                    0 if sv >= 25 else 1,
                    (
                        f"Mozilla/5.0 (Linux; Android 14; {model}) {_WEBKIT} "
                        f"SamsungBrowser/{sv}.0 Chrome/{cv}.0.0.0 Mobile Safari/537.36"
                    ),
                )
            )
    for v in range(95, 116):
        for os_part in (_WIN10, _MAC):
            add((1, _chrome(os_part, v + 16) + f" OPR/{v}.0.0.0"))
    # old and odd
    add((2, "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko"))
    add((2, "Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko"))
    add((2, "Mozilla/5.0 (compatible; MSIE 10.0; Windows NT 6.1; Trident/6.0)"))
    for v in range(49, 100, 2):
        for os_part in (
            "Windows NT 6.1; Win64; x64",
            "Windows NT 5.1",
            _WIN10,
            "Macintosh; Intel Mac OS X 10_13_6",
        ):
            add((2, f"Mozilla/5.0 ({os_part}) {_WEBKIT} Chrome/{_chrome_build(v)} Safari/537.36"))
    for major in (12, 13, 14):
        for minor in range(8):
            add((2, _iphone_safari(major, minor)))
    for a in ("5.1.1", "6.0.1", "7.0", "8.1.0"):
        for model in ("SM-J500F", "SM-G930F", "SM-G950F", "Moto G (5)", "HUAWEI VNS-L31"):
            add(
                (
                    2,
                    (
                        f"Mozilla/5.0 (Linux; Android {a}; {model}) {_WEBKIT} "
                        f"Chrome/{_chrome_build(70 + len(a))} Mobile Safari/537.36"
                    ),
                )
            )

    head_uas = {ua for ua, _ in head}
    seen: set[str] = set()
    unique: list[tuple[int, float, str]] = []
    for tier, ua in cands:
        if ua not in seen and ua not in head_uas:
            seen.add(ua)
            unique.append((tier, rng.random(), ua))
    unique.sort()
    tail = [ua for _, _, ua in unique[: 2000 - len(head) - len(_BOTS)]]

    head_total = sum(w for _, w in head)  # 52.5
    tail_weights = [1.0 / (rank**0.9) for rank in range(11, 11 + len(tail))]
    scale = (100.0 - head_total) / sum(tail_weights)
    uas = [ua for ua, _ in head] + tail
    weights = [w for _, w in head] + [w * scale for w in tail_weights]
    kinds = [
        "ios" if ("iPhone" in ua or "iPad" in ua) else "android" if "Android" in ua else "desktop"
        for ua in uas
    ]
    return uas, weights, kinds


# ---- products, pages, searches, ... --------------------------------------------------------

_CATEGORIES: list[tuple[str, list[str], float, float]] = [
    (
        "Shoes",
        [
            "Sneaker",
            "Running Shoe",
            "Chelsea Boot",
            "Sandal",
            "Loafer",
            "Trail Shoe",
            "Hiking Boot",
        ],
        39,
        189,
    ),
    (
        "Apparel",
        [
            "T-Shirt",
            "Hoodie",
            "Puffer Jacket",
            "Slim Jeans",
            "Summer Dress",
            "Sweater",
            "Chino Shorts",
            "Rain Coat",
            "Polo Shirt",
            "Leggings",
        ],
        12,
        149,
    ),
    (
        "Electronics",
        [
            "Wireless Earbuds",
            "Bluetooth Speaker",
            "Smartwatch",
            "USB-C Charger",
            "Power Bank",
            "Headphones",
            "Webcam",
            "Mechanical Keyboard",
            "E-Reader",
        ],
        15,
        449,
    ),
    (
        "Home & Kitchen",
        [
            "Coffee Grinder",
            "Chef's Knife",
            "Cast Iron Pan",
            "Water Bottle",
            "Desk Lamp",
            "Throw Blanket",
            "Tea Kettle",
            "Bath Towel Set",
        ],
        9,
        179,
    ),
    (
        "Beauty",
        [
            "Face Serum",
            "Shampoo",
            "Lip Balm",
            "Sunscreen SPF 50",
            "Hand Cream",
            "Eau de Parfum",
            "Beard Oil",
        ],
        4,
        89,
    ),
    (
        "Sports & Outdoors",
        [
            "Yoga Mat",
            "Daypack",
            "2-Person Tent",
            "Cycling Gloves",
            "Dumbbell Set",
            "Water Filter",
            "Headlamp",
        ],
        9,
        299,
    ),
    (
        "Toys & Games",
        ["Puzzle 1000 pcs", "Board Game", "Building Blocks", "Plush Bear", "RC Car"],
        7,
        129,
    ),
    ("Books", ["Cookbook", "Novel", "Travel Guide", "Dotted Notebook", "Graphic Novel"], 5, 45),
    (
        "Accessories",
        ["Sunglasses", "Leather Wallet", "Watch Strap", "Beanie", "Tote Bag", "Belt"],
        9,
        129,
    ),
]
_ADJECTIVES = [
    "Classic",
    "Essential",
    "Pro",
    "Ultra",
    "Eco",
    "Urban",
    "Vintage",
    "Lightweight",
    "Premium",
    "Everyday",
    "Nordic",
    "Compact",
    "Deluxe",
    "Organic",
    "Active",
    "Studio",
]
_COLOURS = ["Black", "White", "Navy", "Olive", "Grey", "Red", "Sand", "Forest Green", "Crème"]

_LOCALES: list[tuple[str, float, str, str, int, int]] = [
    # locale, weight, currency, phone prefix, random digits after it (fake numbers: the US/CA
    # 555-01xx and UK 07700 900xxx ranges are reserved for fiction), utc offset in minutes for
    # the "+hh:mm" timestamps
    ("de-DE", 22, "EUR", "+49151", 8, 60),
    ("en-US", 20, "USD", "+120255501", 2, -300),
    ("fr-FR", 11, "EUR", "+33639", 6, 60),
    ("en-GB", 10, "GBP", "+447700900", 3, 0),
    ("nl-NL", 7, "EUR", "+31612", 6, 60),
    ("es-ES", 6, "EUR", "+34612", 6, 60),
    ("it-IT", 6, "EUR", "+39312", 7, 60),
    ("de-AT", 3, "EUR", "+43664", 7, 60),
    ("pl-PL", 3, "EUR", "+48512", 6, 60),
    ("de-CH", 2, "EUR", "+4179", 7, 60),
    ("en-CA", 2, "USD", "+141655501", 2, -300),
    ("sv-SE", 2, "EUR", "+46701", 6, 60),
    ("en-IE", 2, "EUR", "+35383", 7, 0),
    ("da-DK", 1.5, "EUR", "+4520", 6, 60),
    ("pt-PT", 1.5, "EUR", "+35191", 7, 0),
    ("ja-JP", 1, "USD", "+8190", 8, 540),
]
_CURRENCIES = ("EUR", "USD", "GBP")
_SHIPPING = {"EUR": 4.95, "USD": 5.99, "GBP": 3.99}
_TAX_RATE = {"EUR": 0.19, "USD": 0.08, "GBP": 0.2}
_OFFSETS = [60, 120, -300, -240, 330, 540, -420, 0]  # minutes, for non-UTC ISO timestamps

_STATIC_PAGES: list[tuple[str, str, float]] = [
    ("/", "Shop Example - Home", 30),
    ("/sale", "Sale - up to 50% off", 8),
    ("/new-arrivals", "New Arrivals", 6),
    ("/cart", "Shopping Cart", 4),
    ("/account", "My Account", 3),
    ("/account/orders", "My Orders", 2),
    ("/wishlist", "Wishlist", 2),
    ("/help/shipping", "Shipping Information", 2),
    ("/help/returns", "Returns & Refunds", 2),
    ("/help/faq", "FAQ", 1.5),
    ("/stores", "Store Finder", 1),
    ("/about", "About Us", 1),
    ("/contact", "Contact", 1),
    ("/gift-cards", "Gift Cards", 1),
]
_BLOG = [
    "how-to-choose-running-shoes",
    "spring-capsule-wardrobe",
    "best-coffee-at-home",
    "camping-checklist",
    "skincare-routine-basics",
    "gift-guide",
    "sustainable-materials",
    "home-office-setup",
    "care-for-leather",
    "kids-toys-by-age",
]

_SEARCH_EXTRA = [
    "größe 42 sneaker",
    "café crème becher",
    "chaussures running femme",
    "jacke damen winter",
    "regenjacke herren",
    "zapatillas",
    "geschenk für papa",
    "👟 sneaker",
    "black friday",
    "sale",
    "gift card",
    "returns",
    "sneakr",
    "hedphones",
    "bluetoth speaker",
    "yoga",
    "tent",
    "ps5",
    "iphone case",
    "vegan leather",
    "wallet men",
    "sonnenbrille",
    "parfum",
    "lego",
    "sneaker\x00",
    "<script>alert(1)</script>",
    "' or 1=1 --",
    "   ",
    "ok",
]

_REFERRER_SOCIAL = [
    "https://www.facebook.com/",
    ("https://l.facebook.com/l.php?u=https%3A%2F%2Fshop.example.com%2F"),
    "https://lm.facebook.com/",
    "https://www.instagram.com/",
    "https://l.instagram.com/",
    "https://t.co/",
    "https://www.pinterest.com/",
    "https://www.tiktok.com/",
    "https://www.reddit.com/r/BuyItForLife/",
    "https://www.youtube.com/",
]
_UTM_SOURCES = [
    ("google", "cpc", 30),
    ("facebook", "paid_social", 15),
    ("instagram", "paid_social", 10),
    ("newsletter", "email", 15),
    ("bing", "cpc", 5),
    ("tiktok", "paid_social", 5),
    ("awin", "affiliate", 5),
    ("pinterest", "social", 3),
    ("criteo", "display", 5),
    ("google", "display", 4),
    ("partner_blog", "referral", 3),
]
_CAMPAIGNS = [
    "black_friday",
    "summer_sale",
    "winter_clearance",
    "new_arrivals",
    "brand_search",
    "retargeting",
    "spring_launch",
    "back_to_school",
    "cyber_week",
    "loyalty_q4",
    "free_shipping",
    "welcome_series",
    "cart_reminder",
]
_COUPONS = ["WELCOME10", "SUMMER15", "FREESHIP", "BF2025", "LOYAL20", "SAVE5", "APP10"]
_REFUND_REASONS = [
    "damaged",
    "wrong_item",
    "not_as_described",
    "late_delivery",
    "changed_mind",
    "size_issue",
    "other",
]
_SIGNIN_METHODS = [("password", 60), ("google", 28), ("apple", 12)]
_PLANS = [("plus", 55, 4.99, 49.99), ("premium", 35, 9.99, 99.99), ("family", 10, 14.99, 149.99)]
_USER_PLANS = [("free", 70), ("plus", 18), ("premium", 9), ("family", 3)]
_COMPONENTS = [
    "checkout",
    "cart",
    "search",
    "product-page",
    "header",
    "payment-form",
    "recommendations",
    "login",
    "account",
    "app-shell",
]
_ERRORS: list[tuple[str, float, list[str], list[int | None]]] = [
    (
        "TypeError",
        28,
        [
            "Cannot read properties of undefined (reading 'price')",
            "Cannot read properties of null (reading 'addEventListener')",
            "undefined is not an object (evaluating 'e.items.length')",
            "t.map is not a function",
        ],
        [None],
    ),
    (
        "NetworkError",
        18,
        [
            "Failed to fetch",
            "NetworkError when attempting to fetch resource.",
            "Load failed",
            "The network connection was lost.",
        ],
        [None, None, 0],
    ),
    (
        "Timeout",
        13,
        ["Request timed out after 10000ms", "Gateway Timeout", "timeout of 8000ms exceeded"],
        [504, 408, None],
    ),
    (
        "PaymentDeclined",
        8,
        [
            "Card declined: insufficient funds",
            "Card declined: do not honor",
            "3-D Secure authentication failed",
            "Card expired",
        ],
        [402, None, 51, 5],
    ),
    (
        "ReferenceError",
        8,
        ["gtag is not defined", "Can't find variable: fbq", "dataLayer is not defined"],
        [None],
    ),
    ("ChunkLoadError", 6, ["Loading chunk 734 failed.", "Loading CSS chunk 12 failed."], [None]),
    (
        "HttpError",
        7,
        [
            "Request failed with status code 500",
            "Request failed with status code 502",
            "Too Many Requests",
        ],
        [500, 502, 503, 429],
    ),
    (
        "ValidationError",
        6,
        ["Invalid postal code", "Email address is invalid", "Quantity exceeds available stock"],
        [422, 400],
    ),
    (
        "SyntaxError",
        3,
        [
            "Unexpected token '<', \"<!DOCTYPE \"... is not valid JSON",
            "JSON.parse: unexpected end of data",
        ],
        [None],
    ),
    (
        "QuotaExceededError",
        2,
        [
            (
                "Failed to execute 'setItem' on 'Storage': Setting the value of "
                "'cart' exceeded the quota."
            )
        ],
        [None],
    ),
    (
        "SecurityError",
        1,
        [
            (
                'Blocked a frame with origin "https://shop.example.com" from '
                "accessing a cross-origin frame."
            )
        ],
        [None],
    ),
]
_IPV4_BAD_FIRST = {0, 10, 100, 127, 169, 172, 192, 198, 203}  # whole /8s containing non-global nets
_IPV6_PREFIXES = [
    # real-looking ISP allocations, all in 2000::/3 and outside the special 2001:0::/23, 2001:db8::/32
    ("2a02:8108", 12),
    ("2a02:810d", 6),
    ("2003:e2", 8),
    ("2003:f8", 6),
    ("2a01:c22", 4),
    ("2a01:cb00", 6),
    ("2a01:e0a", 5),
    ("2a00:23c5", 5),
    ("2a00:23c8", 3),
    ("2001:1c00", 4),
    ("2a02:a440", 3),
    ("2600:1700", 6),
    ("2601:18c", 6),
    ("2603:8080", 4),
    ("2607:fb90", 5),
    ("2a04:4a43", 2),
    ("2400:4050", 2),
    ("2409:8a00", 2),
    ("2804:14c", 2),
    ("2405:201", 3),
    ("2a0d:5600", 1),
    ("2a09:bac0", 1),
]
_LIBS = {
    "web": [
        ({"name": "analytics.js", "version": "4.1.0"}, 85),
        ({"name": "analytics.js", "version": "4.0.3"}, 10),
        ({"name": "analytics.js", "version": "3.9.2"}, 5),
    ],
    "ios": [
        ({"name": "analytics-ios", "version": "4.1.8"}, 80),
        ({"name": "analytics-ios", "version": "4.1.6"}, 20),
    ],
    "android": [
        ({"name": "analytics-android", "version": "4.11.3"}, 75),
        ({"name": "analytics-android", "version": "4.10.4"}, 25),
    ],
}
_LIB_BACKEND = {"name": "analytics-python", "version": "2.3.2"}
_SCREENS = {
    "page_viewed": "Home",
    "product_viewed": "Product Detail",
    "add_to_cart": "Product Detail",
    "product_list_viewed": "Category",
    "search_performed": "Search Results",
    "video_played": "Product Detail",
    "checkout_started": "Checkout",
    "error_occurred": "Checkout",
    "purchase_completed": "Order Confirmation",
    "remove_from_cart": "Cart",
    "signed_in": "Login",
    "signed_up": "Sign Up",
    "subscription_started": "Membership",
    "refund_issued": "Orders",
    "subscription_cancelled": "Membership",
}


class _Pools:
    """Everything shared by all runs, built once from a fixed seed."""

    def __init__(self) -> None:
        rng = random.Random(_POOL_SEED)

        uas, weights, kinds = _build_user_agents(rng)
        self.uas = uas
        self.ua_json = [_j(ua) for ua in uas]
        self.ua_kinds = kinds
        cum = []
        acc = 0.0
        for w in weights:
            acc += w
            cum.append(acc)
        self.ua_cum = cum
        self.bot_ua_json = _table([_j(ua) for ua, _ in _BOTS], [w for _, w in _BOTS], 1024)

        # product catalogue: (product_id, name, category, price, path, url)
        products = []
        for n in range(500):
            cat, nouns, lo, hi = _CATEGORIES[n % len(_CATEGORIES)]
            name = f"{rng.choice(_ADJECTIVES)} {rng.choice(nouns)}"
            if rng.random() < 0.5:
                name += f" - {rng.choice(_COLOURS)}"
            raw = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            if raw < 10:
                price = round(int(raw) + 0.49, 2)
            else:
                price = round(int(raw) + (0.99 if rng.random() < 0.8 else 0.0), 2)
            sku = f"sku_{10007 + n * 37:05d}"
            path = f"/p/{_slug(name)}-{sku[4:]}"
            products.append((sku, name, cat, price, path, _BASE + path))
        self.products = products
        order = list(range(len(products)))
        rng.shuffle(order)  # popularity rank -> product index
        pop = [1.0 / (rank + 3) ** 1.05 for rank in range(len(products))]
        share = [0.0] * len(products)
        total = sum(pop)
        for rank, idx in enumerate(order):
            share[idx] = pop[rank] / total
        self.product_share = share
        self.product_table = _table(order, pop, 16384)
        # JSON fragments: '"product_id":...,"name":...,"category":...,"price":...'
        self.product_frag = [
            _j({"product_id": p[0], "name": p[1], "category": p[2], "price": p[3]})[1:-1]
            for p in products
        ]
        # properties of product_viewed, per currency
        self.product_props = {
            cur: [f'{{{frag},"currency":"{cur}"}}' for frag in self.product_frag]
            for cur in _CURRENCIES
        }
        for p in products:
            _check_url(p[5])

        cats = [c[0] for c in _CATEGORIES]
        self.categories = cats
        self.category_table = _table(
            list(range(len(cats))), [14, 16, 13, 12, 10, 11, 8, 7, 9], 1024
        )
        self.list_props = [_j({"list_id": _slug(c), "category": c}) for c in cats]
        self.list_urls = [f"{_BASE}/c/{_slug(c)}" for c in cats]

        pages: list[tuple[str, str, float]] = list(_STATIC_PAGES)
        for c in cats:
            pages.append((f"/c/{_slug(c)}", f"{c} | Shop Example", 3.5))
        for b in _BLOG:
            pages.append((f"/blog/{b}", b.replace("-", " ").capitalize(), 0.6))
        self.page_table = _table(
            [
                (_j({"path": path, "title": title}), _check_url(_BASE + path))
                for path, title, _ in pages
            ],
            [w for _, _, w in pages],
        )

        queries = sorted({noun.lower() for _, nouns, _, _ in _CATEGORIES for noun in nouns})
        queries += [
            f"{a.lower()} {q}"
            for a in ("black", "cheap", "waterproof", "kids", "women", "men", "vegan", "mini")
            for q in queries[:20]
        ]
        queries += [c.lower() for c in cats] + _SEARCH_EXTRA
        self.queries = queries
        self.query_json = [_j(q) for q in queries]
        self.query_urls = [_check_url(f"{_BASE}/search?q={quote_plus(q)}") for q in queries]
        self.query_table = _table(
            list(range(len(queries))), [1.0 / (i + 2) ** 0.8 for i in range(len(queries))]
        )

        # referrers: None = absent, "" = empty, True = the user's previous page (internal)
        ext: list[tuple[Any, float]] = [(None, 28.0), ("", 4.0), (True, 38.0)]
        googles = [
            "www.google.com",
            "www.google.de",
            "www.google.co.uk",
            "www.google.fr",
            "www.google.nl",
            "www.google.es",
        ]
        for i, q in enumerate(queries[:120]):
            enc = quote_plus(q + " shop") if i % 3 == 0 else quote_plus(q)
            ext.append((f"https://{googles[i % len(googles)]}/search?q={enc}", 15.0 / 120))
            ext.append((f"https://www.bing.com/search?q={enc}&form=QBLH", 3.0 / 120))
            ext.append((f"https://duckduckgo.com/?q={enc}&ia=web", 2.0 / 120))
        for s in _REFERRER_SOCIAL:
            ext.append((s, 6.0 / len(_REFERRER_SOCIAL)))
        for i in range(40):
            token = f"{rng.getrandbits(64):016x}"
            link = (
                f"https://links.newsletter.shop.example.com/ls/click?upn={token}"
                if i % 2
                else "https://mail.google.com/"
                if i % 4 == 0
                else f"https://email.shop.example.com/c/{token}"
            )
            ext.append((link, 4.0 / 40))
        # as JSON fragments of the context object: "" (absent), True (internal), ',"referrer":".."'
        self.referrer_table = _table(
            [
                "" if r is None else r if r is True else f',"referrer":"{_check_url(r, True)}"'
                for r, _ in ext
            ],
            [w for _, w in ext],
            8192,
        )

        utm = []
        for source, medium, w in _UTM_SOURCES:
            for camp in _CAMPAIGNS:
                content = "" if rng.random() < 0.6 else f"&utm_content=v{rng.randint(1, 9)}"
                utm.append(
                    (
                        f"utm_source={source}&utm_medium={medium}&utm_campaign={camp}{content}",
                        w / len(_CAMPAIGNS),
                    )
                )
        self.utm_table = _table([_check_url(u) for u, _ in utm], [w for _, w in utm], 2048)

        self.locale_table = _table(list(_LOCALES), [loc[1] for loc in _LOCALES], 1024)
        self.ipv6_table = _table(
            [p for p, _ in _IPV6_PREFIXES], [w for _, w in _IPV6_PREFIXES], 1024
        )
        self.ipv4_first = [a for a in range(1, 224) if a not in _IPV4_BAD_FIRST]
        self.libs = {
            k: _table([_j(lib) for lib, _ in v], [w for _, w in v], 128) for k, v in _LIBS.items()
        }
        self.user_plans = _table([p for p, _ in _USER_PLANS], [w for _, w in _USER_PLANS], 128)

        self.signin_props = _table(
            [_j({"method": m}) for m, _ in _SIGNIN_METHODS], [w for _, w in _SIGNIN_METHODS], 128
        )
        subs = []
        for plan, w, monthly, yearly in _PLANS:
            for period, price, pw in (("monthly", monthly, 0.7), ("yearly", yearly, 0.3)):
                subs.append(
                    (
                        {
                            cur: _j(
                                {
                                    "plan": plan,
                                    "billing_period": period,
                                    "price": price,
                                    "currency": cur,
                                }
                            )
                            for cur in _CURRENCIES
                        },
                        w * pw,
                    )
                )
        self.sub_table = _table([s for s, _ in subs], [w for _, w in subs], 1024)

        errors = []
        for etype, w, messages, codes in _ERRORS:
            for msg in messages:
                for code in codes:
                    errors.append(((etype, msg, code), w / len(messages) / len(codes)))
        self.error_table = _table([e for e, _ in errors], [w for _, w in errors])

        self.videos = [
            (
                f"vid_{1000 + i * 7:04d}",
                rng.choice((15, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600)),
            )
            for i in range(60)
        ]
        self.event_table = _table(list(EVENT_MIX), list(EVENT_MIX.values()), 4096)
        # how late an event's timestamp is behind the event clock (ms): 80% < 200 ms,
        # 17% < 2 s, 3% < 5 s
        self.jitter_table = [
            int(x * 250)
            if x < 0.8
            else int((x - 0.8) * 11_765)
            if x < 0.97
            else int((x - 0.97) * 166_666)
            for x in ((i + 0.5) / 4096 for i in range(4096))
        ]
        self.event_field = {
            name: (f'"event":"{name}"', f'"event_name":"{name}"') for name in EVENT_MIX
        }
        self.screen_field = {name: f',"screen":{_j(screen)}' for name, screen in _SCREENS.items()}
        self.flavour_table = _table(
            list(INVALID_FLAVOURS), [w for w, _ in INVALID_FLAVOURS.values()], 1024
        )


@functools.cache
def _pools() -> _Pools:
    return _Pools()


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}  # RFC 4122 variant digit
_MS_Z = [f'.{ms:03d}Z"' for ms in range(1000)]  # '.123Z"': end of a quoted ISO timestamp


def _uuid4(n: int) -> str:
    """A version-4 UUID string from 128 random bits: ``str(uuid.UUID(int=n, version=4))``,
    ~5x faster."""
    h = n.to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class _User:
    """The state of one user (identity, device, current session, cart), created on first use."""

    __slots__ = (
        "anon_id",
        "app",
        "backend_ctx",
        "bot",
        "cart",
        "cart_id",
        "ctx",
        "currency",
        "dev_key",
        "device_id",
        "events",
        "ident",
        "idsess",
        "idx",
        "ip",
        "key",
        "last_order",
        "last_product",
        "last_t",
        "last_url",
        "left",
        "lib",
        "locale",
        "mobile_ip",
        "offset",
        "phone_digits",
        "phone_prefix",
        "session",
        "ua_json",
        "uprops",
        "user_id",
    )


_P_BACKEND = 0.22  # share of an app user's events sent by the mobile backend (device_id only)
_BOT_EVENTS = frozenset({"page_viewed", "product_viewed", "product_list_viewed"})
_NEEDS_ACCOUNT = frozenset(
    {"signed_in", "signed_up", "subscription_started", "subscription_cancelled"}
)
_SESSION_GAP_MS = 1_800_000
_YEAR_MS = 31_556_952_000


def _run(count: int, p: TrafficProfile, start_ms: int, labelled: bool) -> Iterator[Any]:
    """The generator behind :func:`generate`.

    Valid events are serialised by splicing pre-serialised JSON fragments (per user: identity,
    context; per product/page/...: properties) into one f-string: several times faster than
    building a dict and calling ``orjson.dumps`` and, because every fragment comes from orjson,
    byte-identical to ``orjson.dumps(orjson.loads(value))`` (the tests check this). Invalid
    records start from such a valid event, parsed back into a dict and then broken.
    """
    P = _pools()
    rng = random.Random(p.seed)
    rnd = rng.random
    bits = rng.getrandbits
    loads = orjson.loads
    dumps = orjson.dumps
    gmtime = time.gmtime
    GR = GeneratedRecord
    # GeneratedRecord is frozen: its dataclass __init__ goes through object.__setattr__ four
    # times (~1.5 us). Setting the slots through their descriptors is 3x cheaper.
    new = object.__new__
    set_key = GR.key.__set__  # type: ignore[attr-defined]
    set_value = GR.value.__set__  # type: ignore[attr-defined]
    set_kind = GR.kind.__set__  # type: ignore[attr-defined]
    set_event = GR.event.__set__  # type: ignore[attr-defined]

    n_users = p.users
    users: list[_User | None] = [None] * n_users
    dup_frac = p.duplicate_fraction
    bad_frac = dup_frac + p.invalid_fraction
    ipv6_frac = p.ipv6_fraction
    gap2 = 2000.0 / p.events_per_second_of_event_time  # uniform(0, gap2) has mean 1000/rate

    event_table = P.event_table
    event_field = P.event_field
    jitter_table = P.jitter_table
    screen_field = P.screen_field
    flavour_table = P.flavour_table
    products = P.products
    product_table = P.product_table
    product_props = P.product_props
    product_frag = P.product_frag
    page_table = P.page_table
    referrer_table = P.referrer_table
    utm_table = P.utm_table
    list_props = P.list_props
    list_urls = P.list_urls
    category_table = P.category_table
    query_json = P.query_json
    query_urls = P.query_urls
    query_table = P.query_table
    error_table = P.error_table
    signin_props = P.signin_props
    sub_table = P.sub_table
    videos = P.videos
    n_videos = len(videos)
    components = _COMPONENTS
    # crawlers only look: their other events become page views
    bot_event_table = [name if name in _BOT_EVENTS else "page_viewed" for name in event_table]
    needs_account = _NEEDS_ACCOUNT
    lib_backend = _j(_LIB_BACKEND)
    home_url = _BASE + "/"
    checkout_url = _BASE + "/checkout"
    confirmation_url = _BASE + "/checkout/confirmation"
    cart_url = _BASE + "/cart"
    login_url = _BASE + "/login"
    signup_url = _BASE + "/signup"
    membership_url = _BASE + "/account/membership"
    orders_url = _BASE + "/account/orders"

    ring: deque[GeneratedRecord] = deque(maxlen=1000)  # the last 1,000 valid records
    remember = ring.append
    iso_cache: dict[int, str] = {}
    ms_z = _MS_Z
    variant = _VARIANT

    # ---- helpers (closures over the RNG) ----

    def iso_prefix(sec: int) -> str:
        """'"2026-11-29T17:15:55' (opening quote included) for epoch second ``sec``, cached."""
        prefix = iso_cache.get(sec)
        if prefix is None:
            if len(iso_cache) > 8192:
                iso_cache.clear()
            tm = gmtime(sec)
            prefix = (
                f'"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}'
                f"T{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
            )
            iso_cache[sec] = prefix
        return prefix

    def iso_json(ms: int) -> str:
        """``ms`` as a quoted ISO-8601 UTC string with milliseconds, e.g. "...:55.123Z"."""
        return iso_prefix(ms // 1000) + ms_z[ms % 1000]

    def iso_offset_json(ms: int, minutes: int) -> str:
        """``ms`` as a quoted ISO-8601 local time with a non-zero UTC offset ("+02:00")."""
        if minutes == 0:
            minutes = 60
        hh, mm = divmod(abs(minutes), 60)
        sign = "+" if minutes > 0 else "-"
        return f'{iso_prefix(ms // 1000 + minutes * 60)}.{ms % 1000:03d}{sign}{hh:02d}:{mm:02d}"'

    def new_ip(v6: bool) -> str:
        if v6:  # provider prefix + random /64 subnet + random (privacy extension) interface id
            r = bits(96)
            return (
                f"{P.ipv6_table[bits(10)]}:{r >> 80:x}:{(r >> 64) & 0xFFFF:x}:"
                f"{(r >> 48) & 0xFFFF:x}:{(r >> 32) & 0xFFFF:x}:{(r >> 16) & 0xFFFF:x}:"
                f"{r & 0xFFFF:x}"
            )
        first = P.ipv4_first
        r = bits(24)
        return (
            f"{first[int(rnd() * len(first))]}.{r >> 16}.{(r >> 8) & 0xFF}.{(r & 0xFF) % 254 + 1}"
        )

    def refresh_identity(u: _User) -> None:
        parts = []
        if u.user_id is not None:
            parts.append(f'"user_id":"{u.user_id}"')
        if u.anon_id is not None:
            parts.append(f'"anonymous_id":"{u.anon_id}"')
        if u.device_id is not None:
            parts.append(f'"device_id":"{u.device_id}"')
        u.ident = ",".join(parts)
        u.idsess = f'{u.ident},"session_id":"{u.session}"'
        u.key = (u.user_id or u.anon_id or u.device_id).encode()

    def refresh_context(u: _User) -> None:
        u.ctx = f'"ip":"{u.ip}","user_agent":{u.ua_json},"locale":"{u.locale}","library":{u.lib}'
        u.backend_ctx = f'"ip":"{u.ip}","locale":"{u.locale}","library":{lib_backend}'

    def set_anonymous(u: _User) -> None:
        u.user_id = None
        u.anon_id = _uuid4(bits(128))
        u.uprops = ""
        refresh_identity(u)

    def sign_in(u: _User) -> None:
        u.user_id = f"u_{u.idx:06d}"
        if u.anon_id is None and rnd() < 0.85:
            u.anon_id = _uuid4(bits(128))
        plan = P.user_plans[bits(7)]
        if rnd() < 0.6:
            props: dict[str, Any] = {"plan": plan, "email": f"user{u.idx}@example.com"}
            if rnd() < 0.6:
                digits = u.phone_digits
                props["phone"] = f"{u.phone_prefix}{int(rnd() * 10**digits):0{digits}d}"
            u.uprops = f',"user_properties":{_j(props)}'
        else:
            u.uprops = ""
        refresh_identity(u)

    def new_user(idx: int) -> _User:
        u = _User()
        u.idx = idx
        u.bot = rnd() < 0.03
        u.app = None
        u.device_id = None
        u.dev_key = None
        u.events = bot_event_table if u.bot else event_table
        if u.bot:
            u.ua_json = P.bot_ua_json[bits(10)]
        else:
            i = min(bisect.bisect_left(P.ua_cum, rnd() * P.ua_cum[-1]), len(P.uas) - 1)
            u.ua_json = P.ua_json[i]
            kind = P.ua_kinds[i]
            if kind != "desktop" and rnd() < 0.45:
                u.app = kind
                # IDFV-style upper-case UUID on iOS, 64-bit hex Android ID on Android
                u.device_id = _uuid4(bits(128)).upper() if kind == "ios" else f"{bits(64):016x}"
                u.dev_key = u.device_id.encode()
        u.locale, _, u.currency, u.phone_prefix, u.phone_digits, u.offset = P.locale_table[bits(10)]
        u.mobile_ip = u.app is not None or rnd() < 0.2
        u.ip = new_ip(rnd() < ipv6_frac)
        u.lib = P.libs[u.app or "web"][bits(7)]
        refresh_context(u)
        u.anon_id = None
        u.session = None
        if u.bot or rnd() >= 0.38:
            set_anonymous(u)
        else:
            sign_in(u)
        u.left = 0
        u.last_t = 0
        u.last_url = None
        u.cart = {}
        u.cart_id = None
        u.last_product = -1
        u.last_order = None
        return u

    def new_session(u: _User) -> None:
        if u.session is not None:
            if u.user_id is None:
                if not u.bot and rnd() < 0.3:
                    set_anonymous(u)  # a new visitor (cleared cookies, another browser)
            elif rnd() < 0.1:
                set_anonymous(u)  # logged out
            if u.mobile_ip and rnd() < 0.5:
                u.ip = new_ip(":" in u.ip)
                refresh_context(u)
        u.session = f"s_{bits(64):016x}"
        u.idsess = f'{u.ident},"session_id":"{u.session}"'
        u.left = 20 + int(rnd() * 21)
        u.last_url = None

    def pick_product() -> int:
        return product_table[bits(14)]

    def purchase(u: _User, cur: str) -> str:
        if u.cart:
            lines = list(u.cart.items())
        else:
            lines = [
                (pick_product(), 1 if rnd() < 0.85 else 2)
                for _ in range(1 + int(rnd() * rnd() * 5))
            ]
        subtotal = 0.0
        items = []
        for pi, q in lines:
            subtotal += products[pi][3] * q
            items.append(f'{{{product_frag[pi]},"quantity":{q}}}')
        subtotal = round(subtotal, 2)
        shipping = 0.0 if subtotal >= 50 else _SHIPPING[cur]
        tax = round(subtotal * _TAX_RATE[cur], 2)
        revenue = round(subtotal + shipping + tax, 2)
        order_id = f"ord_{int(rnd() * 1e10):010d}"
        coupon = f',"coupon":"{_COUPONS[int(rnd() * len(_COUPONS))]}"' if rnd() < 0.15 else ""
        u.cart = {}
        u.cart_id = None
        u.last_order = (order_id, revenue)
        # floats: repr() is the shortest round-trip form, as orjson writes them
        return (
            f'{{"order_id":"{order_id}","revenue":{revenue!r},"currency":"{cur}",'
            f'"shipping":{shipping!r},"tax":{tax!r}{coupon},"products":[{",".join(items)}]}}'
        )

    def corrupt(
        flavour: str, value: bytes, key: bytes | None, tt: int
    ) -> tuple[bytes | None, bytes]:
        """Break the valid event ``value`` in the way ``flavour`` says: (key, value)."""
        r = rnd()
        if flavour == "truncated_json":
            return key, value[: 1 + int(rnd() * (len(value) - 2))]
        if flavour == "empty_value":
            return (key if r < 0.5 else None), b""
        if flavour == "invalid_utf8":
            if r < 0.34:  # a producer writing UTF-16 (with BOM)
                return key, b"\xff\xfe" + value.decode().encode("utf-16-le")
            if r < 0.67:  # binary junk
                return None, b"\xff\xfe" + rng.randbytes(8 + int(rnd() * 56))
            # Latin-1 text inside otherwise valid JSON
            return key, value[:-1] + b',"city":"M\xfcnchen","note":"caf\xe9"}'
        ev = loads(value)
        ename = "event_name" if "event_name" in ev else "event"
        if flavour == "not_an_object":
            if r < 0.4:
                return key, b"[" + value + b"]"
            return key, (b"[]", b"null", b"true", b"42", dumps(ev[ename]), b'"{\\"event\\":1}"')[
                int(rnd() * 6)
            ]
        if flavour == "missing_event":
            del ev[ename]
        elif flavour == "missing_identity":
            ev.pop("user_id", None)
            ev.pop("anonymous_id", None)
            ev.pop("device_id", None)
            key = None
        elif flavour == "bad_timestamp":
            if r < 0.4:
                ev["timestamp"] = (
                    "yesterday",
                    "2025-13-45T25:61:00Z",
                    "not a date",
                    "",
                    "17/03/2025 14:22",
                    "NaN",
                )[int(rnd() * 6)]
            elif r < 0.7:  # epoch seconds from the 1970s (also 1970 when read as milliseconds)
                ev["timestamp"] = int(rnd() * 315_000_000)
            elif r < 0.85:  # decades in the future, ISO
                ev["timestamp"] = iso_json(tt + (10 + int(rnd() * 60)) * _YEAR_MS)[1:-1]
            else:  # years in the future, epoch ms
                ev["timestamp"] = tt + (3 + int(rnd() * 200)) * _YEAR_MS
        elif flavour == "wrong_types":
            if r < 0.4:
                ev["properties"] = dumps(ev["properties"]).decode()  # double-encoded
            elif r < 0.7:
                ev[ename] = int(rnd() * 1000)
            else:
                ev["properties"] = [ev["properties"]]
        elif flavour == "bad_purchase":
            props = ev["properties"]
            if r < 0.35:
                props["revenue"] = -props["revenue"] - 0.01
            elif r < 0.7:
                props["revenue"] = f"{props['revenue']:.2f}"
            else:
                del props["order_id"]
        else:  # deep_nesting
            depth = 200 + int(rnd() * 100)
            ev.pop("properties", None)
            nested = b'{"child":' * depth + b"{}" + b"}" * depth
            return key, dumps(ev)[:-1] + b',"properties":' + nested + b"}"
        return key, dumps(ev)

    # ---- main loop ----

    t = float(start_ms)
    for _ in range(count):
        r = rnd()
        flavour = None
        if r < bad_frac:
            if r < dup_frac:
                if ring:
                    src = ring[int(rnd() * len(ring))]
                    rec = new(GR)
                    set_key(rec, src.key)
                    set_value(rec, src.value)
                    set_kind(rec, "duplicate")
                    set_event(rec, src.event)
                    yield (rec, None) if labelled else rec
                    continue
            else:
                flavour = flavour_table[bits(10)]

        tt = int(t)
        t += rnd() * gap2
        rr = rnd()
        u = users[int(n_users * rr * rr)]  # skewed activity: the first 1% of users make 10%
        if u is None:
            idx = int(n_users * rr * rr)
            u = users[idx] = new_user(idx)
        if u.left <= 0 or tt - u.last_t > _SESSION_GAP_MS:
            new_session(u)
        u.left -= 1
        u.last_t = tt

        if flavour == "bad_purchase":
            name = "purchase_completed"
        else:
            name = u.events[bits(12)]
        backend = u.app is not None and rnd() < _P_BACKEND
        if name in needs_account and u.user_id is None and not (u.bot or backend):
            sign_in(u)  # signing in/up, or managing a subscription: the user has an account
        cur = u.currency

        # properties (JSON text) and page
        if name == "page_viewed":
            props, url = page_table[bits(12)]
        elif name == "product_viewed":
            pi = product_table[bits(14)]
            u.last_product = pi
            props = product_props[cur][pi]
            url = products[pi][5]
        elif name == "add_to_cart":
            pi = u.last_product
            if pi < 0 or rnd() < 0.25:
                pi = pick_product()
            q = 1 if rnd() < 0.8 else 2 + int(rnd() * 3)
            props = f'{{{product_frag[pi]},"currency":"{cur}","quantity":{q}}}'
            cart = u.cart
            if pi in cart:
                cart[pi] += q
            elif len(cart) < 5:
                cart[pi] = q
            if u.cart_id is None:
                u.cart_id = f"cart_{bits(48):012x}"
            url = products[pi][5]
        elif name == "product_list_viewed":
            ci = category_table[bits(10)]
            props = list_props[ci]
            url = list_urls[ci]
        elif name == "search_performed":
            qi = query_table[bits(12)]
            rs = rnd()
            props = (
                f'{{"query":{query_json[qi]},"results":{0 if rs < 0.08 else int(1 + 240 * rs**4)}}}'
            )
            url = query_urls[qi]
        elif name == "video_played":
            vid, dur = videos[int(rnd() * n_videos)]
            props = f'{{"video_id":"{vid}","position_s":{int(rnd() * dur)},"duration_s":{dur}}}'
            url = None  # the page the user is on
        elif name == "checkout_started":
            cart = u.cart
            if not cart:
                for _n in range(1 + int(rnd() * rnd() * 3)):
                    cart[pick_product()] = 1
            if u.cart_id is None:
                u.cart_id = f"cart_{bits(48):012x}"
            amount = 0.0
            items = 0
            for pi, q in cart.items():
                amount += products[pi][3] * q
                items += q
            props = (
                f'{{"cart_id":"{u.cart_id}","value":{round(amount, 2)!r},"currency":"{cur}",'
                f'"items":{items}}}'
            )
            url = checkout_url
        elif name == "error_occurred":
            etype, msg, code = error_table[bits(12)]
            err: dict[str, Any] = {"error_type": etype, "message": msg}
            if code is not None:
                err["code"] = code
            err["fatal"] = rnd() < 0.08
            err["component"] = components[int(rnd() * len(components))]
            props = _j(err)
            url = None  # the page the user is on
        elif name == "purchase_completed":
            props = purchase(u, cur)
            url = confirmation_url
        elif name == "remove_from_cart":
            cart = u.cart
            if cart:
                keys = list(cart)
                pi = keys[int(rnd() * len(keys))]
                q = cart[pi] if rnd() < 0.7 else 1
                if q >= cart[pi]:
                    del cart[pi]
                else:
                    cart[pi] -= q
            else:
                pi = u.last_product if u.last_product >= 0 else pick_product()
                q = 1
            props = f'{{{product_frag[pi]},"currency":"{cur}","quantity":{q}}}'
            url = cart_url
        elif name == "signed_in" or name == "signed_up":
            props = signin_props[bits(7)]
            url = login_url if name == "signed_in" else signup_url
        elif name == "subscription_started" or name == "subscription_cancelled":
            props = sub_table[bits(10)][cur]
            url = membership_url
        else:  # refund_issued
            if u.last_order is not None and rnd() < 0.8:
                oid, rev = u.last_order
                amount = rev if rnd() < 0.6 else round(rev * (0.1 + 0.8 * rnd()), 2)
            else:
                oid = f"ord_{int(rnd() * 1e10):010d}"
                amount = round(5 + 195 * rnd(), 2)
            props = _j(
                {
                    "order_id": oid,
                    "amount": amount,
                    "currency": cur,
                    "reason": _REFUND_REASONS[int(rnd() * len(_REFUND_REASONS))],
                }
            )
            url = orders_url

        # timestamp: the event clock minus a jitter (mostly < 200 ms, sometimes seconds late)
        ms = tt - jitter_table[bits(12)]
        rf = rnd()
        if rf < 0.30:
            ts = str(ms)
        elif rf < 0.35:
            ts = iso_offset_json(ms, u.offset if rf < 0.33 else _OFFSETS[int(rf * 1000) % 8])
        else:
            prefix = iso_cache.get(ms // 1000)
            ts = prefix + ms_z[ms % 1000] if prefix is not None else iso_json(ms)

        h = bits(128).to_bytes(16, "big").hex()  # event_id: _uuid4, inlined
        eid = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:]}"
        ef = event_field[name][rnd() < 0.05]
        if backend:
            value = (
                f'{{"event_id":"{eid}",{ef},'
                f'"timestamp":{ts},"device_id":"{u.device_id}","properties":{props},'
                f'"context":{{{u.backend_ctx}}}}}'
            ).encode()
            key = u.dev_key
        else:
            up = u.uprops if rnd() < 0.3 else ""  # the user's traits, on some events
            if u.app is None:
                if url is None:
                    url = u.last_url or home_url
                elif rnd() < 0.15:
                    url = f"{url}{'&' if '?' in url else '?'}{utm_table[bits(11)]}"
                    rc = rnd()
                    if rc < 0.3:
                        url += (
                            "&gclid="
                            + base64.urlsafe_b64encode(bits(192).to_bytes(24, "big")).decode()
                        )
                    elif rc < 0.4:
                        url += (
                            "&fbclid=IwAR"
                            + base64.urlsafe_b64encode(bits(240).to_bytes(30, "big")).decode()
                        )
                ref = referrer_table[bits(13)]
                if ref is True:
                    ref = f',"referrer":"{u.last_url or home_url}"'
                u.last_url = url
                value = (
                    f'{{"event_id":"{eid}",{ef},'
                    f'"timestamp":{ts},{u.idsess},"properties":{props},'
                    f'"context":{{{u.ctx},"page_url":"{url}"{ref}}}{up}}}'
                ).encode()
            else:
                value = (
                    f'{{"event_id":"{eid}",{ef},'
                    f'"timestamp":{ts},{u.idsess},"properties":{props},'
                    f'"context":{{{u.ctx}{screen_field[name]}}}{up}}}'
                ).encode()
            key = u.key

        if flavour is None:
            rec = new(GR)
            set_key(rec, key)
            set_value(rec, value)
            set_kind(rec, "valid")
            set_event(rec, name)
            remember(rec)
            yield (rec, None) if labelled else rec
        else:
            key, value = corrupt(flavour, value, key, tt)
            rec = new(GR)
            set_key(rec, key)
            set_value(rec, value)
            set_kind(rec, "invalid")
            set_event(rec, None)
            yield (rec, flavour) if labelled else rec


# --------------------------------------------------------------------------------------------
# python -m pipeline.traffic [--bench] [N]: print N records (or measure the speed)
# --------------------------------------------------------------------------------------------


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import sys
    from collections import Counter

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.traffic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("count", type=int, nargs="?", default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--start-ms", type=int, default=None)
    parser.add_argument("--bench", action="store_true", help="measure records/s, print the mix")
    args = parser.parse_args(argv)
    profile = TrafficProfile(seed=args.seed, start_ms=args.start_ms)
    if not args.bench:
        out = sys.stdout.buffer
        for rec in generate(args.count, profile):
            out.write(rec.value.replace(b"\n", b"\\n") + b"\n")
        return 0
    _pools()
    began = time.perf_counter()
    n = 0
    for _rec in generate(args.count, profile):
        n += 1
    elapsed = time.perf_counter() - began
    print(f"{n} records in {elapsed:.2f}s: {n / elapsed:,.0f} records/s")
    kinds: Counter[str] = Counter()
    events: Counter[str] = Counter()
    flavours: Counter[str] = Counter()
    for rec, flavour in generate_labelled(min(args.count, 200_000), profile):
        kinds[rec.kind] += 1
        if rec.kind == "valid":
            events[rec.event or ""] += 1
        if flavour:
            flavours[flavour] += 1
    print("kinds:", dict(kinds))
    total = sum(events.values())
    print("events:", {k: round(100 * v / total, 2) for k, v in events.most_common()})
    total = sum(flavours.values()) or 1
    print("invalid flavours:", {k: round(100 * v / total, 1) for k, v in flavours.most_common()})
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
