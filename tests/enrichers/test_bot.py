"""The bot enricher: context.device.is_bot or the crawler list -> context.bot (flag or drop)."""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.core.avro_check import compile_schema
from pipeline.core.processor import Processor
from pipeline.core.records import RawMessage
from pipeline.enrichers import EnricherContext, EnricherUnavailable, Outcome, enricher_type
from pipeline.enrichers.bot import (
    BotConfig,
    BotEnricher,
    CrawlerMatcher,
    crawler_name,
    index_pieces,
    load_builtin_list,
)
from pipeline.errors import TopologyError
from pipeline.topology import load_topology

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
CRAWLERS_DIR = SHARED / "ua" / "crawler-user-agents"
CRAWLERS_JSON = CRAWLERS_DIR / "crawler-user-agents.json"
UAP_TEST_UA = SHARED / "ua" / "uap-core" / "tests" / "test_ua.yaml"

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
NOT_A_BOT = {"is_bot": False, "name": None, "reason": None}


def make(tmp_path: Path | None = None, **config: Any) -> BotEnricher:
    return BotEnricher(BotConfig(**config), EnricherContext(env={}, base_dir=tmp_path or Path(".")))


def bot_of(
    enricher: BotEnricher, ua: Any, device: Any = None
) -> tuple[Outcome, dict[str, Any] | None]:
    context: dict[str, Any] = {"user_agent": ua}
    if device is not None:
        context["device"] = device
    outcome = enricher.enrich({"event": "page_viewed", "context": context})
    return outcome, context.get("bot")


@pytest.fixture(scope="module")
def enricher() -> BotEnricher:
    return make()


# ------------------------------------------------------------------------------ behaviour


def test_crawler_from_the_list(enricher: BotEnricher) -> None:
    assert bot_of(enricher, GOOGLEBOT) == (
        Outcome.HIT,
        {"is_bot": True, "name": "Googlebot", "reason": "crawler_list"},
    )


@pytest.mark.parametrize(
    ("ua", "name"),
    [
        ("curl/8.5.0", "curl"),
        ("python-requests/2.32.3", "python-requests"),
        ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", "AhrefsBot"),
        ("Wget/1.21.4", "wget"),  # named after the list's example, "wget/..."
    ],
)
def test_named_crawlers(enricher: BotEnricher, ua: str, name: str) -> None:
    outcome, bot = bot_of(enricher, ua)
    assert outcome is Outcome.HIT and bot is not None
    assert bot["name"] == name


@pytest.mark.parametrize("ua", [CHROME, IPHONE, "zzzz"])
def test_browsers_are_not_bots(enricher: BotEnricher, ua: str) -> None:
    assert bot_of(enricher, ua) == (Outcome.MISS, NOT_A_BOT)


@pytest.mark.parametrize("ua", [None, "", 7, False, ["Googlebot/2.1"], {"a": 1}])
def test_no_user_agent_is_skipped_without_a_bot_key(enricher: BotEnricher, ua: Any) -> None:
    assert bot_of(enricher, ua) == (Outcome.SKIPPED, None)


@pytest.mark.parametrize("event", [{}, {"context": None}, {"context": "x"}, {"context": {}}])
def test_missing_context_is_skipped(enricher: BotEnricher, event: dict[str, Any]) -> None:
    before = dict(event)
    assert enricher.enrich(event) is Outcome.SKIPPED
    assert event == before


def test_the_user_agent_enrichers_verdict_comes_first(enricher: BotEnricher) -> None:
    device = {"browser_family": "PingdomBot", "is_bot": True, "device_type": "bot"}
    assert bot_of(enricher, "whatever", device) == (
        Outcome.HIT,
        {"is_bot": True, "name": "PingdomBot", "reason": "user_agent"},
    )
    nameless = {"browser_family": "Other", "is_bot": True}
    assert bot_of(enricher, "whatever", nameless)[1] == {
        "is_bot": True,
        "name": "Spider",
        "reason": "user_agent",
    }
    # not a bot for user_agents: the list still decides
    browser = {"browser_family": "Chrome", "is_bot": False}
    assert bot_of(enricher, GOOGLEBOT, browser)[1]["reason"] == "crawler_list"  # type: ignore[index]
    assert bot_of(enricher, CHROME, browser) == (Outcome.MISS, NOT_A_BOT)


@pytest.mark.parametrize("device", ["bot", {"is_bot": "yes"}, {"is_bot": 1}, ["is_bot"]])
def test_odd_device_values_are_ignored(enricher: BotEnricher, device: Any) -> None:
    assert bot_of(enricher, CHROME, device) == (Outcome.MISS, NOT_A_BOT)


def test_device_field_null_uses_the_list_only() -> None:
    enricher = make(device_field=None)
    assert bot_of(enricher, CHROME, {"is_bot": True}) == (Outcome.MISS, NOT_A_BOT)


def test_drop_action() -> None:
    enricher = make(action="drop")
    event: dict[str, Any] = {"context": {"user_agent": GOOGLEBOT}}
    assert enricher.enrich(event) is Outcome.DROP
    assert (
        enricher.enrich({"context": {"user_agent": CHROME, "device": {"is_bot": True}}})
        is Outcome.DROP
    )
    assert bot_of(enricher, CHROME) == (Outcome.MISS, NOT_A_BOT)
    assert bot_of(enricher, None) == (Outcome.SKIPPED, None)


def test_extra_patterns() -> None:
    enricher = make(extra_patterns=[r"^AcmeProbe/\d", r"Uptime/\d"])
    assert bot_of(enricher, "AcmeProbe/3 (ops@example.com)")[1] == {
        "is_bot": True,
        "name": r"^AcmeProbe/\d",
        "reason": "crawler_list",
    }
    assert bot_of(enricher, "Mozilla AcmeProbe/3")[0] is Outcome.MISS
    # tried before the list: the list's own "Uptime" entry no longer names it
    assert bot_of(enricher, "Mozilla Uptime/1")[1]["name"] == r"Uptime/\d"  # type: ignore[index]
    assert bot_of(make(), "Mozilla Uptime/1")[1]["name"] == "Uptime"  # type: ignore[index]


def test_custom_source_and_target_fields() -> None:
    enricher = make(
        source_field="properties.agent", target_field="properties.robot", device_field=None
    )
    event: dict[str, Any] = {"properties": {"agent": GOOGLEBOT}, "context": {"user_agent": CHROME}}
    assert enricher.enrich(event) is Outcome.HIT
    assert event["properties"]["robot"]["name"] == "Googlebot"
    assert "bot" not in event["context"]


def test_device_elsewhere() -> None:
    enricher = make(device_field="properties.parsed")
    event: dict[str, Any] = {
        "properties": {"parsed": {"is_bot": True, "browser_family": "Acme"}},
        "context": {"user_agent": CHROME, "device": {"is_bot": False}},
    }
    assert enricher.enrich(event) is Outcome.HIT
    assert event["context"]["bot"] == {"is_bot": True, "name": "Acme", "reason": "user_agent"}
    assert bot_of(enricher, CHROME, {"is_bot": True}) == (Outcome.MISS, NOT_A_BOT)


def test_target_parent_that_is_not_an_object_raises() -> None:
    enricher = make(target_field="properties.robot.verdict")
    with pytest.raises(ValueError, match="robot is a list"):
        enricher.enrich({"properties": {"robot": []}, "context": {"user_agent": GOOGLEBOT}})


def test_long_agents_are_cut_before_matching() -> None:
    enricher = make(max_length=100)
    padding = "x" * 200
    started = time.perf_counter()
    assert bot_of(enricher, GOOGLEBOT + padding * 5000)[0] is Outcome.HIT  # ~1 MB
    assert bot_of(enricher, CHROME + padding * 5000)[0] is Outcome.MISS
    assert time.perf_counter() - started < 1.0
    assert bot_of(enricher, padding + GOOGLEBOT)[0] is Outcome.MISS  # beyond the cut
    info = enricher.cache_info()
    assert info.currsize == 3


def test_verdicts_are_cached_and_bounded() -> None:
    enricher = make(cache_size=2)
    for ua in (GOOGLEBOT, CHROME, GOOGLEBOT, IPHONE, "curl/8"):
        bot_of(enricher, ua)
    info = enricher.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 4, 2)
    enricher.close()
    assert enricher.cache_info().currsize == 0
    assert make(cache_size=0).cache_info() is None
    assert bot_of(make(cache_size=0), GOOGLEBOT)[1]["name"] == "Googlebot"  # type: ignore[index]


def test_each_event_gets_its_own_verdict_object(enricher: BotEnricher) -> None:
    first = bot_of(enricher, GOOGLEBOT)[1]
    assert first is not None
    first["name"] = "tampered"
    assert bot_of(enricher, GOOGLEBOT)[1]["name"] == "Googlebot"  # type: ignore[index]


def test_status_repr_and_registration(enricher: BotEnricher) -> None:
    kind = enricher_type("bot")
    assert kind.config_model is BotConfig and kind.build is BotEnricher
    assert enricher.status() == "enabled"
    assert "patterns from built-in crawlers.json" in repr(enricher)


@pytest.mark.parametrize(
    "config",
    [
        {"action": "block"},
        {"actions": "drop"},
        {"cache_size": -5},
        {"cache_size": "many"},
        {"max_length": 2},
        {"extra_patterns": ["(unclosed"]},
        {"extra_patterns": "Googlebot"},
        {"extra_patterns": [""]},
        {"device_field": "context device"},
        {"patterns_file": 5},
    ],
)
def test_bad_config_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BotConfig(**config)


# ------------------------------------------------------------------------- crawler lists


def test_the_built_in_list_carries_its_attribution_and_licence() -> None:
    data = load_builtin_list()
    assert data["source"] == "https://github.com/monperrus/crawler-user-agents"
    assert data["license"] == "MIT"
    assert data["copyright"] == "Copyright (c) 2017 Martin Monperrus"
    assert "Permission is hereby granted, free of charge" in data["license_text"]
    assert len(data["source_commit"]) == 40
    assert data["count"] == len(data["crawlers"]) > 1000
    for entry in data["crawlers"]:
        assert set(entry) <= {"name", "pattern", "url"} and entry["name"] and entry["pattern"]


def test_patterns_file_in_this_projects_layout(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "bots.json").write_text(
        json.dumps({"crawlers": [{"name": "Acme", "pattern": "Acme(Bot|Spider)"}]}),
        encoding="utf-8",
    )
    enricher = make(tmp_path, patterns_file="lists/bots.json")  # relative to the topology
    assert bot_of(enricher, "AcmeSpider/1")[1] == {
        "is_bot": True,
        "name": "Acme",
        "reason": "crawler_list",
    }
    assert bot_of(enricher, GOOGLEBOT)[0] is Outcome.MISS  # replaces the built-in list
    assert "1 patterns from" in repr(enricher)


def test_patterns_file_in_crawler_user_agents_layout(tmp_path: Path) -> None:
    path = tmp_path / "upstream.json"
    path.write_text(
        json.dumps(
            [
                {"pattern": "[wW]get", "instances": ["Wget/1.21"]},
                {"pattern": "Ahrefs(Bot|SiteAudit)", "instances": []},
            ]
        ),
        encoding="utf-8",
    )
    enricher = make(patterns_file=str(path))
    assert bot_of(enricher, "Wget/1.21.4")[1]["name"] == "Wget"  # type: ignore[index]
    assert bot_of(enricher, "AhrefsSiteAudit/6")[1]["name"] == "Ahrefs"  # type: ignore[index]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "is not JSON"),
        ('"a string"', "expected a JSON object"),
        ('{"crawlers": {}}', 'expected a "crawlers" array'),
        ('{"crawlers": []}', "is empty"),
        ('[{"url": "x"}]', 'has no "pattern"'),
        ("[7]", "is not an object"),
        ('[{"pattern": "(unclosed"}]', "not a valid regular expression"),
        ('[{"pattern": "ok", "name": ""}]', "name must be a non-empty string"),
    ],
)
def test_bad_patterns_file(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "bots.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(EnricherUnavailable, match=message):
        make(patterns_file=str(path))


def test_a_directory_as_patterns_file(tmp_path: Path) -> None:
    with pytest.raises(EnricherUnavailable, match="cannot read patterns_file"):
        make(patterns_file=str(tmp_path))


def test_crawler_names() -> None:
    assert (
        crawler_name(r"Googlebot\/", ["Googlebot/2.1 (+http://www.google.com/bot.html)"])
        == "Googlebot"
    )
    assert crawler_name("[wW]get", ["Wget/1.21"]) == "Wget"
    assert crawler_name("(^| )sentry\\/", ["sentry/9"]) == "sentry"
    assert (
        crawler_name(r"Spider[\s\S]*spider\.com", ["Spider " + "x" * 60 + " spider.com"])
        == "Spider"
    )
    assert crawler_name("S[eE][mM]rushBot") == "rushBot"  # no example: first literal run
    assert crawler_name("a.b") == "a.b"
    assert crawler_name("(unclosed") == "(unclosed"


# ------------------------------------------------------------------------------ prefilter


@pytest.mark.parametrize(
    ("pattern", "pieces"),
    [
        (r"Googlebot\/", ["Goo"]),
        ("Ahrefs(Bot|SiteAudit)", ["Ahr"]),
        ("Automaton|Newsify Feed Fetcher", ["Aut", "New"]),
        ("ab?cde", ["cde"]),
        ("a{2}bcd", ["bcd"]),
        ("(sistrix|SISTRIX) [cC]rawler", ["raw"]),
        (r"x\d+yz", None),  # "yz" is too short for a piece
        ("(?i)googlebot", None),  # inline flags: always tried
        (r"\x41bcdef", None),
        ("ab{c", None),
        ("ab", None),
        ("abc|de", None),  # one alternative has no piece: the pattern is always tried
    ],
)
def test_index_pieces(pattern: str, pieces: list[str] | None) -> None:
    assert index_pieces(pattern) == pieces


TRICKY = [
    r"Googlebot\/",
    "(?i)ROGUE",
    r"\x41cmeBot",
    "ab?cde",
    "a{2}bcd",
    "x{1,3}yzw",
    "Auto(maton|pilot)|Newsify Feed",
    r"^[Cc]url/\d",
    r"HTTP[\s\S]*Client$",
    "Lazy+?Bot",
    "ab",
    "q(?=uux)",
]
STRINGS = [
    "Googlebot/2.1",
    "googlebot/2.1",
    "rogue agent",
    "AcmeBot",
    "acdeX",
    "abcde",
    "aabcd",
    "abcd",
    "xyzw",
    "xxxyzw",
    "yzw",
    "Autopilot 1",
    "Newsify Feed",
    "Automaton",
    "curl/8",
    "Curl/x",
    "xcurl/8",
    "HTTP Java Client",
    "HTTP Client/1",
    "LazyBot",
    "LazzzzBot",
    "ab",
    "quux",
    "q",
    "",
    "Mozilla/5.0",
]


def test_the_index_gives_the_same_answer_as_trying_every_pattern() -> None:
    matcher = CrawlerMatcher([(p, p) for p in TRICKY])
    assert matcher.always_tried == 4  # (?i), \x41, ab, q(?=...)
    for text in STRINGS:
        for padded in (text, f"Mozilla/5.0 ({text}) Safari", text * 3):
            assert matcher.match(padded) == matcher.match_naive(padded), padded


_ATOMS = [
    "abca",
    "cab/",
    "bcab",
    "a",
    "b",
    "c",
    "ab",
    "abc",
    "bca",
    "\\/",
    "/",
    "[ab]",
    "[^c]",
    "(a|bc)",
    "(?:ca)",
    ".",
    "^",
    "$",
    "\\d",
    "\\s",
    "x",
]
_QUANTIFIERS = ["", "", "", "", "", "", "?", "*", "+", "{2}", "{1,2}", "+?"]


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    alternatives = []
    for _ in range(draw(st.integers(1, 3))):
        atoms = draw(
            st.lists(
                st.tuples(st.sampled_from(_ATOMS), st.sampled_from(_QUANTIFIERS)),
                min_size=1,
                max_size=6,
            )
        )
        alternatives.append("".join(atom + q for atom, q in atoms))
    return "|".join(alternatives)


@settings(max_examples=150, deadline=None)
@given(
    patterns=st.lists(_patterns(), min_size=1, max_size=5),
    texts=st.lists(st.text(alphabet="abcx/ 1", max_size=12), min_size=1, max_size=5),
)
def test_the_index_is_sound_for_random_patterns(patterns: list[str], texts: list[str]) -> None:
    import re

    usable = []
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error:
            continue
        usable.append(pattern)
    if not usable:
        return
    matcher = CrawlerMatcher([(p, p) for p in usable])
    for text in texts:
        assert matcher.match(text) == matcher.match_naive(text), (usable, text)


def test_list_order_decides_the_name() -> None:
    matcher = CrawlerMatcher([("generic", "bot"), ("specific", "Googlebot")])
    assert matcher.match(GOOGLEBOT) == "generic"
    matcher = CrawlerMatcher([("specific", "Googlebot"), ("generic", "bot")])
    assert matcher.match(GOOGLEBOT) == "specific"


# ---------------------------------------------------------------------------- in a topology


def topology_file(tmp_path: Path, stages: list[dict[str, Any]]) -> Path:
    """The example topology (validate and route only) with ``stages`` between them and a
    ``bots`` rule sending context.bot.is_bot == true to ``bot_events``."""
    text = (REPO / "tests" / "enrichers" / "base_topology.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text.replace("../avro/", f"{REPO / 'avro'}/"))
    validate = next(s for s in data["stages"] if s["type"] == "validate")
    route = next(s for s in data["stages"] if s["type"] == "route")
    route["rules"].insert(
        0,
        {
            "id": "bots",
            "when": {"where": [{"field": "context.bot.is_bot", "op": "eq", "value": True}]},
            "to": "bot_events",
        },
    )
    data["topics"]["bot_events"] = {"partitions": 1}
    data["stages"] = [validate, *stages, route]
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def bot_stage(config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "bots", "type": "enrich", "enricher": "bot", **extra, "config": config or {}}


UA_STAGE = {"id": "ua", "type": "enrich", "enricher": "user_agent", "config": {}}


def message(ua: Any, event: str = "page_viewed") -> RawMessage:
    body: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event": event,
        "timestamp": int(time.time() * 1000),
        "anonymous_id": "a-1",
        "context": {},
    }
    if ua is not None:
        body["context"]["user_agent"] = ua
    return RawMessage(orjson.dumps(body))


PINGDOM = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/61.0.3163.100 "
    "Safari/537.36 PingdomPageSpeed/1.0 (pingbot/2.0; +http://www.pingdom.com/)"
)


def test_in_a_topology_bots_are_routed(tmp_path: Path) -> None:
    topology = load_topology(topology_file(tmp_path, [UA_STAGE, bot_stage()]), env={})
    processor = Processor(topology)
    assert [s.status() for s in processor.middle] == ["enabled", "enabled"]
    ctx = processor.process(
        [
            message(GOOGLEBOT),
            message(CHROME),
            message(None),
            message("curl/8.5.0"),
            message(PINGDOM),
        ]
    )
    assert not ctx.dead_letters
    topics = [topic for topic, _, _ in ctx.outputs]
    assert topics == [
        "bot_events",
        "processed_events",
        "processed_events",
        "bot_events",
        "bot_events",
    ]
    envelope = compile_schema(topology.schemas["envelope"])  # the output contract
    for _, _, value in ctx.outputs:
        assert envelope(orjson.loads(value), "") is None
    out = [orjson.loads(value)["context"] for _, _, value in ctx.outputs]
    assert out[0]["bot"] == {"is_bot": True, "name": "Googlebot", "reason": "user_agent"}
    assert out[0]["device"]["device_type"] == "bot"
    assert out[1]["bot"] == NOT_A_BOT
    assert "bot" not in out[2] and "device" not in out[2]
    assert out[3]["bot"] == {"is_bot": True, "name": "curl", "reason": "crawler_list"}
    assert out[4]["bot"]["reason"] == "crawler_list"  # user_agents: not a Spider
    assert (ctx.counters[("bots", "hit")], ctx.counters[("bots", "miss")]) == (3, 1)
    assert ctx.counters[("bots", "skipped")] == 1


def test_in_a_topology_bots_are_dropped_and_counted(tmp_path: Path) -> None:
    topology = load_topology(topology_file(tmp_path, [bot_stage({"action": "drop"})]), env={})
    processor = Processor(topology)
    ctx = processor.process([message(GOOGLEBOT), message(CHROME), message("Wget/1.21")])
    assert [topic for topic, _, _ in ctx.outputs] == ["processed_events"]
    assert ctx.counters[("bots", "drop")] == 2
    assert not ctx.dead_letters


def test_in_a_topology_disabled_when_optional(tmp_path: Path) -> None:
    stage = bot_stage({"patterns_file": "missing.json"}, optional=True)
    processor = Processor(load_topology(topology_file(tmp_path, [stage]), env={}))
    [bots] = processor.middle
    assert bots.status() == f"disabled: patterns_file {tmp_path / 'missing.json'} does not exist"
    ctx = processor.process([message(GOOGLEBOT)])
    [(topic, _key, value)] = ctx.outputs
    assert topic == "processed_events" and "bot" not in orjson.loads(value)["context"]


def test_in_a_topology_not_optional_refuses_to_start(tmp_path: Path) -> None:
    stage = bot_stage({"patterns_file": "missing.json"})
    topology = load_topology(topology_file(tmp_path, [stage]), env={})
    with pytest.raises(EnricherUnavailable, match="missing.json does not exist"):
        Processor(topology)


def test_bad_config_in_a_topology_names_the_path(tmp_path: Path) -> None:
    stage = bot_stage(
        {"action": "block", "cache_size": "lots", "extra_patterns": ["ok", "(bad"], "patterns": []}
    )
    with pytest.raises(TopologyError) as info:
        load_topology(topology_file(tmp_path, [stage]), env={})
    found = {p.path: p.message for p in info.value.problems}
    assert "stages[1].config.action" in found
    assert "stages[1].config.cache_size" in found
    assert "not a valid regular expression" in found["stages[1].config.extra_patterns"]
    assert found["stages[1].config.patterns"] == "unknown key"


# -------------------------------------------------------------- conformance and false positives

needs_crawler_list = pytest.mark.skipif(
    not CRAWLERS_JSON.is_file(),
    reason=f"crawler-user-agents not found at {CRAWLERS_JSON} (no shared/ beside the project)",
)


def _upstream() -> list[dict[str, Any]]:
    return json.loads(CRAWLERS_JSON.read_text(encoding="utf-8"))


def _upstream_commit() -> str | None:
    path = CRAWLERS_DIR / "SOURCE_COMMIT.txt"
    return path.read_text(encoding="utf-8").split()[0] if path.is_file() else None


@needs_crawler_list
def test_every_upstream_example_is_flagged_with_the_upstream_file() -> None:
    enricher = make(patterns_file=str(CRAWLERS_JSON))
    instances = [i for entry in _upstream() for i in entry["instances"]]
    assert len(instances) > 2000
    missed = [ua for ua in instances if bot_of(enricher, ua)[0] is not Outcome.HIT]
    assert not missed, f"{len(missed)} of {len(instances)} not flagged, e.g. {missed[:3]}"


@needs_crawler_list
def test_every_upstream_example_is_flagged_with_the_built_in_list() -> None:
    commit = load_builtin_list()["source_commit"]
    if commit != _upstream_commit():
        pytest.skip(
            f"the built-in list is from commit {commit}, shared data from {_upstream_commit()}: "
            "run scripts/update_crawler_list.py"
        )
    enricher = make()
    matcher = enricher._matcher
    missed = []
    for entry in _upstream():
        for ua in entry["instances"]:
            if bot_of(enricher, ua)[0] is not Outcome.HIT:
                missed.append(ua)
            assert matcher.match(ua) == matcher.match_naive(ua)
    assert not missed, f"{len(missed)} not flagged, e.g. {missed[:3]}"


def _script() -> Any:
    spec = importlib.util.spec_from_file_location(
        "update_crawler_list", REPO / "scripts" / "update_crawler_list.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@needs_crawler_list
def test_the_built_in_list_is_what_the_script_generates() -> None:
    if load_builtin_list()["source_commit"] != _upstream_commit():
        pytest.skip("the shared crawler list is from another commit than the built-in one")
    assert _script().main([str(CRAWLERS_JSON), "--check", "--quiet"]) == 0


def test_the_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _script()
    source = tmp_path / "crawler-user-agents.json"
    source.write_text(
        json.dumps(
            [
                {"pattern": "Googlebot\\/", "url": "http://g", "instances": ["Googlebot/2.1"]},
                {"pattern": "(broken", "instances": []},
                {"pattern": "Googlebot\\/", "instances": []},
                {"pattern": "[wW]get", "instances": ["curl/8"]},
                {"url": "no pattern"},
            ]
        ),
        encoding="utf-8",
    )
    out = tmp_path / "crawlers.json"
    with pytest.raises(SystemExit, match="LICENSE is missing"):
        script.main([str(source), "-o", str(out)])
    (tmp_path / "LICENSE").write_text("MIT License\n\nCopyright (c) 2017 Someone\n", "utf-8")
    (tmp_path / "SOURCE_COMMIT.txt").write_text("abc123 2026-01-01\n", "utf-8")
    assert script.main([str(source), "-o", str(out), "--check"]) == 1  # not written yet
    assert script.main([str(source), "-o", str(out)]) == 0
    warnings = capsys.readouterr().err
    assert "not a Python regular expression" in warnings and "duplicate pattern" in warnings
    assert "does not match its example 'curl/8'" in warnings and "no pattern" in warnings
    data = json.loads(out.read_text(encoding="utf-8"))
    assert (data["source_commit"], data["license"], data["count"]) == ("abc123", "MIT", 2)
    assert data["copyright"] == "Copyright (c) 2017 Someone"
    assert data["crawlers"] == [
        {"name": "Googlebot", "pattern": "Googlebot\\/", "url": "http://g"},
        {"name": "get", "pattern": "[wW]get"},
    ]
    assert script.main([str(source), "-o", str(out), "--check"]) == 0
    enricher = make(patterns_file=str(out))  # the enricher reads what the script writes
    assert bot_of(enricher, "Wget/1")[1]["name"] == "get"  # type: ignore[index]


COMMON_FAMILIES = {
    "Chrome", "Chrome Mobile", "Chrome Mobile iOS", "Chrome Mobile WebView",
    "Firefox", "Firefox Mobile", "Firefox iOS", "Firefox Beta",
    "Safari", "Mobile Safari", "Mobile Safari UI/WKWebView",
    "Edge", "Edge Mobile", "Samsung Internet",
}  # fmt: skip

# uap-core calls this browser "Chrome", but it is Google's page-preview fetcher: a bot.
KNOWN_BOTS_AMONG_BROWSERS = {"Google Web Preview"}


@pytest.mark.skipif(not UAP_TEST_UA.is_file(), reason=f"uap-core corpus not found at {UAP_TEST_UA}")
def test_common_browsers_are_not_flagged() -> None:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    cases = yaml.load(UAP_TEST_UA.read_text(encoding="utf-8"), Loader=loader)["test_cases"]
    browsers = [c["user_agent_string"] for c in cases if c["family"] in COMMON_FAMILIES]
    assert len(browsers) >= 50
    enricher = make()
    flagged = {ua: bot_of(enricher, ua)[1]["name"] for ua in browsers}  # type: ignore[index]
    flagged = {ua: name for ua, name in flagged.items() if name is not None}
    false_positives = {ua: n for ua, n in flagged.items() if n not in KNOWN_BOTS_AMONG_BROWSERS}
    assert not false_positives, f"{len(false_positives)} of {len(browsers)}: {false_positives}"
    assert len(flagged) <= 1  # 1 of 54 at uap-core e3c5e63: Google Web Preview


def test_generated_traffic_flags_exactly_its_crawlers() -> None:
    from pipeline import traffic
    from pipeline.traffic import TrafficProfile, generate

    bots = {ua for ua, _weight in traffic._BOTS}  # the generator's crawler pool
    agents: set[str] = set()
    for record in generate(5000, TrafficProfile(seed=3)):
        if record.kind == "valid":
            ua = orjson.loads(record.value).get("context", {}).get("user_agent")
            if isinstance(ua, str):
                agents.add(ua)
    assert len(agents & bots) >= 5
    enricher = make()
    flagged = {ua for ua in agents if bot_of(enricher, ua)[0] is Outcome.HIT}
    assert flagged == agents & bots
