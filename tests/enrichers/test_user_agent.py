"""The user_agent enricher: context.user_agent -> context.device, exactly as user_agents says."""

from __future__ import annotations

import importlib.util
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from pipeline.core.avro_check import compile_schema
from pipeline.core.processor import Processor
from pipeline.core.records import RawMessage
from pipeline.enrichers import EnricherContext, EnricherUnavailable, Outcome, enricher_type
from pipeline.enrichers.user_agent import (
    DEVICE_KEYS,
    RuleFinder,
    UserAgentConfig,
    UserAgentEnricher,
    rust_reads_alike,
    shared_rule_finder,
)
from pipeline.errors import TopologyError
from pipeline.topology import load_topology

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
UAP_CORE = SHARED / "ua" / "uap-core"
UAP_TESTS = UAP_CORE / "tests"

CHROME_WIN = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)
ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def make(tmp_path: Path | None = None, **config: Any) -> UserAgentEnricher:
    context = EnricherContext(env={}, base_dir=tmp_path or Path("."))
    return UserAgentEnricher(UserAgentConfig(**config), context)


def device_of(enricher: UserAgentEnricher, ua: Any) -> tuple[Outcome, dict[str, Any] | None]:
    event: dict[str, Any] = {"event": "page_viewed", "context": {"user_agent": ua}}
    outcome = enricher.enrich(event)
    return outcome, event["context"].get("device")


@pytest.fixture(scope="module")
def enricher() -> UserAgentEnricher:
    return make()


# ------------------------------------------------------------------------------ behaviour


def test_desktop_browser(enricher: UserAgentEnricher) -> None:
    outcome, device = device_of(enricher, CHROME_WIN)
    assert outcome is Outcome.HIT
    assert device == {
        "browser_family": "Chrome",
        "browser_version": "131.0.0",
        "os_family": "Windows",
        "os_version": "10",
        "device_family": "Other",
        "device_brand": None,
        "device_model": None,
        "device_type": "desktop",
        "is_bot": False,
    }
    assert tuple(device) == DEVICE_KEYS


@pytest.mark.parametrize(
    ("ua", "device_type", "family", "brand"),
    [
        (IPHONE, "mobile", "iPhone", "Apple"),
        (IPAD, "tablet", "iPad", "Apple"),
        (ANDROID_PHONE, "mobile", "Samsung SM-S918B", "Samsung"),
        (ANDROID_TABLET, "tablet", "SM-X710", "Generic_Android_Tablet"),
        (GOOGLEBOT, "bot", "Spider", "Spider"),
    ],
)
def test_device_types(
    enricher: UserAgentEnricher, ua: str, device_type: str, family: str, brand: str
) -> None:
    outcome, device = device_of(enricher, ua)
    assert outcome is Outcome.HIT
    assert device is not None
    assert device["device_type"] == device_type
    assert device["device_family"] == family
    assert device["device_brand"] == brand
    assert device["is_bot"] is (device_type == "bot")


def test_bot_family_and_version(enricher: UserAgentEnricher) -> None:
    _, device = device_of(enricher, GOOGLEBOT)
    assert device is not None
    assert (device["browser_family"], device["browser_version"]) == ("Googlebot", "2.1")


def test_unknown_agent_is_a_miss_with_a_device(enricher: UserAgentEnricher) -> None:
    outcome, device = device_of(enricher, "zzzz qqqq")
    assert outcome is Outcome.MISS
    assert device == {
        "browser_family": "Other",
        "browser_version": None,
        "os_family": "Other",
        "os_version": None,
        "device_family": "Other",
        "device_brand": None,
        "device_model": None,
        "device_type": "other",
        "is_bot": False,
    }


def test_http_client_is_other(enricher: UserAgentEnricher) -> None:
    outcome, device = device_of(enricher, "curl/8.5.0")
    assert outcome is Outcome.HIT
    assert device is not None
    assert (device["browser_family"], device["browser_version"]) == ("curl", "8.5.0")
    assert device["device_type"] == "other"


@pytest.mark.parametrize("ua", [None, "", 123, 1.5, True, ["Mozilla/5.0"], {"ua": "x"}])
def test_no_user_agent_is_skipped_without_a_device_key(
    enricher: UserAgentEnricher, ua: Any
) -> None:
    assert device_of(enricher, ua) == (Outcome.SKIPPED, None)


@pytest.mark.parametrize(
    "event",
    [{}, {"context": None}, {"context": "x"}, {"context": []}, {"context": {}}],
)
def test_missing_context_is_skipped(enricher: UserAgentEnricher, event: dict[str, Any]) -> None:
    before = dict(event)
    assert enricher.enrich(event) is Outcome.SKIPPED
    assert event == before


def test_cached_results_are_copied_per_event() -> None:
    enricher = make()
    _, first = device_of(enricher, CHROME_WIN)
    assert first is not None
    first["browser_family"] = "tampered"
    _, second = device_of(enricher, CHROME_WIN)
    assert second is not None and second["browser_family"] == "Chrome"
    info = enricher.cache_info()
    assert (info.hits, info.misses) == (1, 1)


def test_the_cache_is_bounded() -> None:
    enricher = make(cache_size=2)
    for ua in (CHROME_WIN, IPHONE, IPAD, CHROME_WIN):
        device_of(enricher, ua)
    info = enricher.cache_info()
    assert info.currsize == 2 and info.maxsize == 2
    assert info.misses == 4  # CHROME_WIN was evicted by the time it came back
    enricher.close()
    assert enricher.cache_info().currsize == 0


def test_no_cache() -> None:
    enricher = make(cache_size=0)
    assert enricher.cache_info() is None
    assert device_of(enricher, IPHONE)[1] == device_of(make(), IPHONE)[1]


def test_absurdly_long_agents_are_cut_before_parsing() -> None:
    import user_agents

    enricher = make(max_length=300)
    long_ua = IPHONE + " " + "x; " * 350_000  # ~1 MB
    started = time.perf_counter()
    outcome, device = device_of(enricher, long_ua)
    assert time.perf_counter() - started < 1.0  # uncut, user_agents takes tens of seconds
    assert outcome is Outcome.HIT
    expected = make(max_length=300)
    assert device == device_of(expected, long_ua[:300])[1]
    assert device is not None and device["device_family"] == "iPhone"
    assert user_agents.parse(long_ua[:300]).device.family == "iPhone"
    # the cut string is the cache key: a different tail is a cache hit
    device_of(enricher, long_ua + "tail")
    info = enricher.cache_info()
    assert (info.hits, info.misses) == (1, 1)


def test_agent_longer_than_max_length_but_fine_is_cut_to_that_length() -> None:
    enricher = make(max_length=16)
    _, device = device_of(enricher, CHROME_WIN)
    assert device == device_of(make(), CHROME_WIN[:16])[1]


def test_custom_source_and_target_fields() -> None:
    enricher = make(source_field="properties.agent", target_field="properties.parsed.device")
    event: dict[str, Any] = {"properties": {"agent": IPHONE}, "context": {"user_agent": CHROME_WIN}}
    assert enricher.enrich(event) is Outcome.HIT
    assert event["properties"]["parsed"]["device"]["device_family"] == "iPhone"
    assert "device" not in event["context"]
    # a one-part path works too
    top = make(source_field="ua", target_field="device")
    event = {"ua": IPAD}
    assert top.enrich(event) is Outcome.HIT and event["device"]["device_type"] == "tablet"


def test_target_parent_that_is_not_an_object_raises() -> None:
    enricher = make(target_field="properties.parsed.device")
    event: dict[str, Any] = {"properties": {"parsed": "text"}, "context": {"user_agent": IPHONE}}
    event["properties"]["agent"] = IPHONE
    with pytest.raises(ValueError, match="parsed is a str"):
        enricher.enrich(event)


def test_status_and_registration() -> None:
    kind = enricher_type("user_agent")
    assert kind.config_model is UserAgentConfig and kind.build is UserAgentEnricher
    enricher = make()
    assert enricher.status() == "enabled"
    assert "cache_size=10000" in repr(enricher)


def test_config_defaults() -> None:
    config = UserAgentConfig()
    assert (config.cache_size, config.max_length) == (10_000, 1024)
    assert (config.source_field, config.target_field) == ("context.user_agent", "context.device")


@pytest.mark.parametrize(
    "config",
    [
        {"cache": 5},
        {"cache_size": -1},
        {"cache_size": "lots"},
        {"max_length": 5},
        {"max_length": "long"},
        {"source_field": ""},
        {"source_field": "context..user_agent"},
        {"target_field": "context.device!"},
        {"target_field": 3},
    ],
)
def test_bad_config_is_refused(config: dict[str, Any]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        UserAgentConfig(**config)


def test_unavailable_without_the_user_agents_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "user_agents", None)  # "import user_agents" raises
    with pytest.raises(EnricherUnavailable, match="pip install user-agents"):
        make()


# ---------------------------------------------------------------------------- in a topology


def topology_file(tmp_path: Path, stage: dict[str, Any]) -> Path:
    """The example topology (validate and route only) with ``stage`` between them."""
    text = (REPO / "tests" / "enrichers" / "base_topology.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text.replace("../avro/", f"{REPO / 'avro'}/"))
    validate = next(s for s in data["stages"] if s["type"] == "validate")
    route = next(s for s in data["stages"] if s["type"] == "route")
    data["stages"] = [validate, stage, route]
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def stage(config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "ua", "type": "enrich", "enricher": "user_agent", **extra, "config": config or {}}


def message(ua: Any) -> RawMessage:
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event": "page_viewed",
        "timestamp": int(time.time() * 1000),
        "anonymous_id": "a-1",
        "context": {"ip": "203.0.113.9"},
    }
    if ua is not None:
        event["context"]["user_agent"] = ua
    return RawMessage(orjson.dumps(event))


def test_in_a_topology(tmp_path: Path) -> None:
    topology = load_topology(topology_file(tmp_path, stage()), env={})
    processor = Processor(topology)
    [ua_stage] = processor.middle
    assert ua_stage.status() == "enabled"
    ctx = processor.process([message(IPHONE), message(None), message("zzzz"), message(GOOGLEBOT)])
    assert not ctx.dead_letters
    outputs = [orjson.loads(value) for _topic, _key, value in ctx.outputs]
    envelope = compile_schema(topology.schemas["envelope"])  # the output contract
    assert all(envelope(output, "") is None for output in outputs)
    assert [topic for topic, _, _ in ctx.outputs] == ["processed_events"] * 4
    assert outputs[0]["context"]["device"]["device_type"] == "mobile"
    assert outputs[0]["context"]["user_agent"] == IPHONE
    assert "device" not in outputs[1]["context"]
    assert outputs[2]["context"]["device"]["browser_family"] == "Other"
    assert outputs[3]["context"]["device"]["is_bot"] is True
    assert ctx.counters[("ua", "hit")] == 2
    assert ctx.counters[("ua", "miss")] == 1
    assert ctx.counters[("ua", "skipped")] == 1


def test_in_a_topology_disabled_when_optional(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "user_agents", None)
    topology = load_topology(topology_file(tmp_path, stage(optional=True)), env={})
    processor = Processor(topology)
    [ua_stage] = processor.middle
    assert ua_stage.status().startswith("disabled: the user-agents package is not installed")
    ctx = processor.process([message(IPHONE)])
    [(_topic, _key, value)] = ctx.outputs
    assert "device" not in orjson.loads(value)["context"]
    assert ctx.counters[("ua", "skipped")] == 1


def test_in_a_topology_not_optional_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "user_agents", None)
    topology = load_topology(topology_file(tmp_path, stage()), env={})
    with pytest.raises(EnricherUnavailable, match="user-agents"):
        Processor(topology)


def test_bad_config_in_a_topology_names_the_path(tmp_path: Path) -> None:
    path = topology_file(
        tmp_path,
        stage({"cache_size": "lots", "max_length": 3, "target": "x", "source_field": "a b"}),
    )
    with pytest.raises(TopologyError) as info:
        load_topology(path, env={})
    found = {p.path: p.message for p in info.value.problems}
    assert "stages[1].config.cache_size" in found
    assert "stages[1].config.max_length" in found
    assert "stages[1].config.source_field" in found
    assert found["stages[1].config.target"] == "unknown key"


# ------------------------------------------------------- conformance (uap-core test corpus)

needs_uap = pytest.mark.skipif(
    not UAP_TESTS.is_dir(),
    reason=f"uap-core test corpus not found at {UAP_TESTS} (no shared/ beside the project)",
)


def _corpus(name: str) -> list[str]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(UAP_CORE / name, "rb") as fh:
        cases = yaml.load(fh, Loader=loader)["test_cases"]
    # An empty agent is no agent (SKIPPED, no device): test_no_user_agent_is_skipped...
    return [case["user_agent_string"] for case in cases if case["user_agent_string"]]


def _expected(ua: Any) -> dict[str, Any]:
    """What user_agents says, in the enricher's layout (written out here, independently)."""
    if ua.is_bot:
        kind = "bot"
    elif ua.is_tablet:
        kind = "tablet"
    elif ua.is_mobile:
        kind = "mobile"
    elif ua.is_pc:
        kind = "desktop"
    else:
        kind = "other"
    return {
        "browser_family": ua.browser.family,
        "browser_version": ".".join(str(v) for v in ua.browser.version) or None,
        "os_family": ua.os.family,
        "os_version": ".".join(str(v) for v in ua.os.version) or None,
        "device_family": ua.device.family,
        "device_brand": ua.device.brand,
        "device_model": ua.device.model,
        "device_type": kind,
        "is_bot": ua.is_bot,
    }


UAP_FILES = [
    "tests/test_ua.yaml",
    "tests/test_os.yaml",
    "tests/test_device.yaml",
    "test_resources/additional_os_tests.yaml",
    "test_resources/firefox_user_agent_strings.yaml",
    "test_resources/opera_mini_user_agent_strings.yaml",
    "test_resources/podcasting_user_agent_strings.yaml",
]


@needs_uap
@pytest.mark.parametrize("corpus", UAP_FILES)
def test_every_corpus_case_equals_user_agents(corpus: str) -> None:
    """Every user agent of uap-core's corpus and test resources (18,826 non-empty cases, 18,411
    distinct): the enricher's device equals user_agents.parse's (with ua-parser-rs installed,
    the enricher does not call it: see test_the_fast_path_is_in_use)."""
    import user_agents

    agents = _corpus(corpus)
    enricher = make()
    assert max(map(len, agents)) <= UserAgentConfig().max_length  # nothing is cut here
    mismatches = []
    for agent in agents:
        reference = user_agents.parse(agent)
        expected = _expected(reference)
        assert expected["browser_version"] == (reference.browser.version_string or None)
        assert expected["os_version"] == (reference.os.version_string or None)
        _, device = device_of(enricher, agent)
        if device != expected:
            mismatches.append((agent, device, expected))
    assert not mismatches, f"{len(mismatches)} of {len(agents)} differ, e.g. {mismatches[:3]}"


# ------------------------------------------- the ua-parser-rs fast path gives the same answers

needs_rs = pytest.mark.skipif(
    importlib.util.find_spec("ua_parser_rs") is None, reason="ua-parser-rs is not installed"
)

# uap-core agents (test_ua.yaml) with a bot word past the 100th character. ua-parser-rs widens
# the device rule ^.{0,100}(bot|...|crawler|...) to ^.*(...), so its own answer
# (ua_parser.parse) is a Spider device; Python's re, and so user_agents, says Other.
WIDENED_BY_RS = [
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Ubuntu "
        "Chromium/61.0.3163.100 Chrome/61.0.3163.100 Safari/537.36 PingdomPageSpeed/1.0 "
        "(pingbot/2.0; +http://www.pingdom.com/)"
    ),
    (
        "Mozilla/5.0 (X11; Linux i686) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/30.0.1599.101 Safari/537.36; SSL-Crawler: http://crawler.dcsec.uni-hannover.de"
    ),
    (
        "Mozilla/5.0 (Windows; U; Windows NT 5.1; en-US; rv:1.9.2.13) Gecko/20101203 "
        "Firefox/3.6.13 (.NET CLR 1.1.4322; .NET CLR 2.0.50727; .NET CLR 3.0.4506.2152; .NET "
        "CLR 3.5.30729; msnbot/2.1) Jakarta Commons-HttpClient/3.0"
    ),
]


def _reference(agent: str) -> dict[str, Any]:
    import user_agents

    return _expected(user_agents.parse(agent))


@needs_rs
def test_the_fast_path_is_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ua-parser-rs installed, a new agent is answered without ua-parser's full scan."""
    from ua_parser import user_agent_parser

    def full_scan(*args: Any) -> None:
        raise AssertionError("the legacy full scan ran")

    monkeypatch.setattr(user_agent_parser, "Parse", full_scan)
    enricher = make()
    assert "parser=ua-parser-rs" in repr(enricher)
    agent = IPHONE + " fast-path-check"
    assert device_of(enricher, agent)[1] == device_of(enricher, IPHONE)[1]


@needs_rs
def test_where_ua_parser_rs_itself_differs_the_enricher_does_not() -> None:
    import ua_parser

    enricher = make(cache_size=0)
    for agent in WIDENED_BY_RS:
        expected = _reference(agent)
        assert expected["device_family"] == "Other"
        assert device_of(enricher, agent)[1] == expected
    # ua-parser-rs's own answer: why it only finds the rule here, and Python's re decides
    rs_devices = {ua_parser.parse(agent).with_defaults().device.family for agent in WIDENED_BY_RS}
    assert rs_devices == {"Spider"}, "ua-parser-rs no longer widens: the note in user_agent.py"


def _variants(count: int, seed: int) -> list[str]:
    """Agents built to hit what the engines do differently: long agents, padding that pushes a
    rule's text past a bounded repetition (100, 200, 300 characters), bot words anywhere."""
    rng = random.Random(seed)
    bases = [CHROME_WIN, IPHONE, IPAD, ANDROID_PHONE, ANDROID_TABLET, GOOGLEBOT, *WIDENED_BY_RS]
    words = [
        "bot",
        "Googlebot/2.1",
        "crawler",
        "spider",
        "Mobile",
        "Android 10; K",
        "iPhone",
        "Tablet",
        "CFNetwork/1.0 Darwin/20.0.0",
        "Windows NT 10.0",
        "Build/",
        " PTST/12",
    ]
    alphabet = "abcdefghij ;/.-()0123456789ABCDEFG"

    def filler(length: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(length))

    agents = []
    for _ in range(count):
        base = rng.choice(bases)
        at = rng.randrange(len(base) + 1)
        roll = rng.random()
        if roll < 0.35:
            pad = filler(rng.choice([60, 99, 100, 101, 150, 199, 200, 201, 299, 301, 400]))
            agents.append(base[:at] + pad + base[at:])
        elif roll < 0.7:
            agents.append(base[:at] + " " + rng.choice(words) + " " + base[at:])
        else:
            agents.append(filler(rng.choice([90, 110, 210, 310])) + rng.choice(words))
    return agents


@needs_rs
def test_agents_built_to_differ_get_user_agents_answers() -> None:
    enricher = make(cache_size=0)
    mismatches = [
        (agent, device)
        for agent in _variants(300, seed=2024)
        if (device := device_of(enricher, agent)[1]) != _reference(agent)
    ]
    assert not mismatches, mismatches[:3]


@pytest.mark.parametrize(
    "agent",
    [
        "Mozilla/5.0 (compatible) PTST/220609\n",  # Python's $ matches before a final newline
        "Mozilla/5.0 (Linux; Android \u0663; K) AppleWebKit/537.36 Chrome/131.0.0.0 Mobile",
        "Mozilla/5.0 (Windows NT 10.0)\x1cGooglebot/2.1",  # \s is wider in Python
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) Version/18.1 Safari caf\u00e9",
    ],
)
def test_agents_that_are_not_printable_ascii_get_user_agents_answers(agent: str) -> None:
    assert device_of(make(cache_size=0), agent)[1] == _reference(agent)


def test_a_trailing_newline_matters_as_in_user_agents() -> None:
    """The case that makes non-printable agents take user_agents' path: a rule ending in $."""
    agent = "Mozilla/5.0 (compatible) PTST/220609"
    assert device_of(make(cache_size=0), agent + "\n")[1]["device_family"] == "Spider"
    assert _reference(agent + "\n")["device_family"] == "Spider"
    if importlib.util.find_spec("ua_parser_rs") is not None:
        # Rust's $ does not match there: asked, it would find no device rule at all
        assert shared_rule_finder()._find_device(agent + "\n") is None
        assert shared_rule_finder()._find_device(agent) is not None


@pytest.fixture
def without_shared_finder() -> Any:
    shared_rule_finder.cache_clear()
    yield
    shared_rule_finder.cache_clear()


def test_without_ua_parser_rs_user_agents_parses(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, without_shared_finder: Any
) -> None:
    fast = [device_of(make(cache_size=0), agent)[1] for agent in (CHROME_WIN, *WIDENED_BY_RS)]
    shared_rule_finder.cache_clear()
    monkeypatch.setitem(sys.modules, "ua_parser_rs", None)  # "import ua_parser_rs" raises
    with caplog.at_level("WARNING", logger="pipeline.enrichers.user_agent"):
        enricher = make(cache_size=0)
    assert "parser=user-agents" in repr(enricher)
    assert "pip install ua-parser-rs" in caplog.text
    assert [device_of(enricher, agent)[1] for agent in (CHROME_WIN, *WIDENED_BY_RS)] == fast


@needs_rs
def test_rules_rust_may_read_differently_are_left_to_python(
    monkeypatch: pytest.MonkeyPatch, without_shared_finder: Any
) -> None:
    """A rule the check cannot vouch for (here: non-ASCII, an inline flag) goes to Rust as a
    pattern that matches everything, so Python's re decides it: the answers stay exact."""
    from ua_parser import user_agent_parser

    rules = [
        user_agent_parser.UserAgentParser("(Caf\u00e9)/(\\d+)"),
        user_agent_parser.UserAgentParser("(?i)(zzbrowser)/(\\d+)"),
        *user_agent_parser.USER_AGENT_PARSERS,
    ]
    monkeypatch.setattr(user_agent_parser, "USER_AGENT_PARSERS", rules)
    finder = RuleFinder()
    assert finder.python_decides == 2
    enricher = make(cache_size=0)
    for agent in ("Caf\u00e9/3", "ZZBrowser/5 (Windows NT 10.0)", IPHONE, GOOGLEBOT):
        assert device_of(enricher, agent)[1] == _reference(agent)
    assert device_of(enricher, "ZZBrowser/5")[1]["browser_family"] == "ZZBrowser"


@pytest.mark.parametrize(
    ("pattern", "alike"),
    [
        ("(Chrome)/(\\d+)\\.(\\d+)", True),
        ("^.{0,100}(bot|crawler)", True),  # widened by ua-parser-rs: matches more, never less
        ("[A-Za-z0-9 \\-_\\!\\[\\]:]{0,50}", True),
        ("[]a]b", True),
        ("a--b", True),
        ("caf\u00e9", False),
        ("(?i)x", False),
        ("(?=x)", False),
        ("(a)\\1", False),
        ("x\\Z", False),
        ("x{,5}", False),
        ("[[a]", False),
        ("[a-z&&b]", False),
        ("[a--]", False),
    ],
)
def test_which_patterns_rust_reads_alike(pattern: str, alike: bool) -> None:
    assert rust_reads_alike(pattern) is alike


@needs_rs
def test_one_rule_finder_per_process(without_shared_finder: Any) -> None:
    first, second = make(), make()
    assert first._parse_ua is second._parse_ua is shared_rule_finder()
