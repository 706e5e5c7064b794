"""The campaign enricher: UTM parameters and click ids of ``context.page_url``.

Parsing rules, inference from click ids, odd URLs, config errors (directly and through
``load_topology``), a run through a topology, and generated traffic. The per-event cost
(against ``urlsplit`` + ``parse_qs`` in the same process) is printed by
``python -m tests.enrichers.test_campaign``.
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
from pydantic import ValidationError

from pipeline.core.avro_check import compile_schema
from pipeline.core.processor import Processor
from pipeline.core.records import RawMessage
from pipeline.enrichers import EnricherContext, Outcome, enricher_type
from pipeline.enrichers.campaign import CampaignConfig, CampaignEnricher
from pipeline.errors import TopologyError
from pipeline.topology import load_topology
from pipeline.traffic import TrafficProfile, generate
from tests.enrichers.topologies import topology_file

REPO = Path(__file__).resolve().parents[2]
NOW = 1_795_000_000.0
_ids = itertools.count()
KEYS = ["source", "medium", "name", "term", "content", "id", "click_id", "click_id_type"]


def make(**config: Any) -> CampaignEnricher:
    return CampaignEnricher(CampaignConfig(**config), EnricherContext())


def run(url: Any, enricher: CampaignEnricher | None = None) -> tuple[Outcome, dict | None]:
    event = {"context": {"page_url": url}}
    outcome = (enricher or make()).enrich(event)
    return outcome, event["context"].get("campaign")


def test_registered_by_name() -> None:
    kind = enricher_type("campaign")
    assert kind.config_model is CampaignConfig
    assert kind.build is CampaignEnricher


def test_utm_parameters_fill_every_key() -> None:
    outcome, campaign = run(
        "https://shop.example.com/p/1?utm_source=Newsletter&utm_medium=Email"
        "&utm_campaign=Black%20Friday&utm_term=red+shoes&utm_content=v2&utm_id=c-42"
    )
    assert outcome is Outcome.HIT
    assert list(campaign) == KEYS
    assert campaign == {
        "source": "newsletter",  # source and medium lower-cased by default
        "medium": "email",
        "name": "Black Friday",  # other values keep their case
        "term": "red shoes",
        "content": "v2",
        "id": "c-42",
        "click_id": None,
        "click_id_type": None,
    }


def test_absent_values_are_null_and_the_schema_is_stable() -> None:
    _, campaign = run("https://s.example/?utm_campaign=spring")
    assert list(campaign) == KEYS
    assert campaign["name"] == "spring"
    assert all(campaign[k] is None for k in KEYS if k != "name")


def test_no_campaign_parameters_no_key() -> None:
    assert run("https://shop.example.com/p/1") == (Outcome.MISS, None)
    assert run("https://shop.example.com/search?q=shoes&page=2") == (Outcome.MISS, None)
    assert run("https://shop.example.com/?utm_source=&utm_medium=%20") == (Outcome.MISS, None)


def test_parameter_names_are_case_insensitive_and_may_be_encoded() -> None:
    _, campaign = run(
        "https://s.example/?UTM_SOURCE=Google&Utm_Medium=CPC&utm%5Fcampaign=x&GCLID=abc"
    )
    assert campaign["source"] == "google"
    assert campaign["medium"] == "cpc"
    assert campaign["name"] == "x"
    assert (campaign["click_id"], campaign["click_id_type"]) == ("abc", "gclid")


def test_first_non_empty_occurrence_wins() -> None:
    _, campaign = run("https://s.example/?utm_source=&utm_source=first&utm_source=second")
    assert campaign["source"] == "first"


def test_values_are_decoded_trimmed_and_cleaned() -> None:
    _, campaign = run(
        "https://s.example/?utm_campaign=%20%20caf%C3%A9%2Bcr%C3%A8me%20"
        "&utm_term=a%00b%0A&utm_content=%E2%9C%93"
    )
    assert campaign["name"] == "café+crème"
    assert campaign["term"] == "ab"  # control characters removed
    assert campaign["content"] == "✓"
    # invalid UTF-8 and broken escapes do not raise
    _, campaign = run("https://s.example/?utm_campaign=%FF%FEok%&utm_term=%zz")
    assert campaign["name"] == "\ufffd\ufffdok%"
    assert campaign["term"] == "%zz"


def test_values_are_capped() -> None:
    long = "x" * 3000
    _, campaign = run(f"https://s.example/?utm_campaign={long}&gclid={long}")
    assert len(campaign["name"]) == 256
    assert len(campaign["click_id"]) == 256
    _, campaign = run(f"https://s.example/?utm_campaign={long}", make(max_value_length=10))
    assert campaign["name"] == "x" * 10
    # the cap counts decoded characters, not escapes
    _, campaign = run("https://s.example/?utm_campaign=" + "%C3%A9" * 20, make(max_value_length=5))
    assert campaign["name"] == "ééééé"


def test_click_id_infers_source_and_medium_when_untagged() -> None:
    for param, source, medium in [
        ("gclid", "google", "cpc"),
        ("gbraid", "google", "cpc"),
        ("wbraid", "google", "cpc"),
        ("dclid", "google", "display"),
        ("msclkid", "bing", "cpc"),
        ("fbclid", "facebook", "social"),
        ("ttclid", "tiktok", "paid_social"),
        ("twclid", "twitter", "paid_social"),
        ("li_fat_id", "linkedin", "paid_social"),
        ("yclid", "yandex", "cpc"),
        ("ScCid", "snapchat", "paid_social"),
        ("mc_cid", "mailchimp", "email"),
    ]:
        outcome, campaign = run(f"https://s.example/landing?{param}=ID123")
        assert outcome is Outcome.HIT, param
        assert campaign["click_id"] == "ID123"
        assert campaign["click_id_type"] == param.lower()
        assert (campaign["source"], campaign["medium"]) == (source, medium), param
        assert campaign["name"] is None


def test_no_inference_when_the_url_is_tagged() -> None:
    _, campaign = run("https://s.example/?utm_source=newsletter&gclid=abc")
    assert (campaign["source"], campaign["medium"]) == ("newsletter", None)
    _, campaign = run("https://s.example/?utm_medium=cpc&gclid=abc")
    assert (campaign["source"], campaign["medium"]) == (None, "cpc")
    _, campaign = run("https://s.example/?gclid=abc", make(infer_source_medium=False))
    assert (campaign["source"], campaign["medium"], campaign["click_id"]) == (None, None, "abc")


def test_click_id_precedence_follows_the_configured_order() -> None:
    _, campaign = run("https://s.example/?fbclid=F&gclid=G")
    assert campaign["click_id_type"] == "gclid"  # gclid is listed before fbclid
    custom = make(
        click_ids=[
            {"param": "fbclid", "source": "meta", "medium": "paid_social"},
            {"param": "gclid"},
        ]
    )
    _, campaign = run("https://s.example/?gclid=G&fbclid=F", custom)
    assert (campaign["click_id_type"], campaign["source"]) == ("fbclid", "meta")
    _, campaign = run("https://s.example/?gclid=G", custom)
    assert (campaign["click_id_type"], campaign["source"], campaign["medium"]) == (
        "gclid",
        None,
        None,
    )
    # an empty list turns click ids off
    assert run("https://s.example/?gclid=G", make(click_ids=[])) == (Outcome.MISS, None)


def test_custom_click_id() -> None:
    enricher = make(click_ids=[{"param": "My_Click", "source": "partner", "medium": "affiliate"}])
    _, campaign = run("https://s.example/?my_click=1", enricher)
    assert (campaign["click_id_type"], campaign["source"]) == ("my_click", "partner")


def test_fragment_is_ignored_unless_configured() -> None:
    url = "https://s.example/#/product?utm_source=spa&utm_campaign=x"
    assert run(url) == (Outcome.MISS, None)
    outcome, campaign = run(url, make(read_fragment=True))
    assert outcome is Outcome.HIT and campaign["source"] == "spa"
    # the query string wins over the fragment; a '#' ends the query
    url = "https://s.example/?utm_source=query#x?utm_source=frag&utm_medium=m"
    assert run(url)[1]["source"] == "query" and run(url)[1]["medium"] is None
    assert run(url, make(read_fragment=True))[1]["medium"] == "m"
    assert run("https://s.example/?utm_source=a#utm_medium=b")[1]["medium"] is None


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "http://[::1?utm_source=x",
        "http://example.com]/?utm_source=x",  # unbalanced bracket
        "http://[not-an-ip]/?utm_source=x",
        "http://ex\uff03ample.com/?utm_source=x",  # a host that normalises into URL syntax
        "?" + "x" * 10_000,
        "https://s.example/?utm_source=" + "y" * 10_000,  # longer than max_url_length
        "",
        "   ",
        "\x00\x01?&&&==&=&utm_source",
    ],
)
def test_unparsable_or_junk_urls_give_no_campaign_and_no_exception(url: str) -> None:
    outcome, campaign = run(url)
    assert campaign is None
    assert outcome in (Outcome.SKIPPED, Outcome.MISS)


def test_junk_with_a_query_is_skipped() -> None:
    assert run("http://[::1?utm_source=x")[0] is Outcome.SKIPPED
    assert run("x" * 9000 + "?utm_source=a")[0] is Outcome.SKIPPED
    assert run("x" * 9000 + "?utm_source=a", make(max_url_length=20_000))[0] is Outcome.HIT


def test_unicode_hosts_and_relative_urls_work() -> None:
    _, campaign = run("https://bücher.example/?utm_source=idn")
    assert campaign["source"] == "idn"
    _, campaign = run("/landing?utm_source=relative")
    assert campaign["source"] == "relative"


@pytest.mark.parametrize(
    "value", [None, 42, 1.5, True, ["https://s.example/?utm_source=x"], {"u": 1}]
)
def test_non_string_page_url_is_skipped(value: Any) -> None:
    assert run(value) == (Outcome.SKIPPED, None)


def test_missing_context_or_page_url_is_skipped() -> None:
    enricher = make()
    assert enricher.enrich({}) is Outcome.SKIPPED
    assert enricher.enrich({"context": "nope"}) is Outcome.SKIPPED
    event: dict[str, Any] = {"context": {"screen": "Home"}}
    assert enricher.enrich(event) is Outcome.SKIPPED
    assert event == {"context": {"screen": "Home"}}


def test_existing_campaign_is_replaced() -> None:
    event = {"context": {"page_url": "https://s.example/?utm_source=a", "campaign": {"junk": 1}}}
    make().enrich(event)
    assert list(event["context"]["campaign"]) == KEYS


def test_cache_is_bounded_and_keyed_by_url() -> None:
    enricher = make(cache_size=2)
    urls = ["https://s.example/?utm_source=a", "https://s.example/?utm_source=b"]
    for url in [*urls, urls[0], "https://s.example/?utm_source=c", "https://s.example/x"]:
        run(url, enricher)
    info = enricher.cache_info()
    # URLs without a query never reach the cache; a third tagged URL evicts the oldest
    assert (info.hits, info.misses, info.currsize, info.maxsize) == (1, 3, 2, 2)
    enricher.close()
    assert enricher.cache_info().currsize == 0
    assert make(cache_size=0).cache_info() is None


def test_cached_results_are_copied_per_event() -> None:
    enricher = make()
    url = "https://s.example/?utm_source=Google&gclid=abc"
    _, first = run(url, enricher)
    assert first is not None
    first["source"] = "tampered"
    _, second = run(url, enricher)
    assert second is not None and second["source"] == "google"
    assert enricher.cache_info().hits == 1


def test_long_urls_bypass_the_cache() -> None:
    enricher = make()
    url = "https://s.example/?utm_source=a&x=" + "y" * 1100
    assert run(url, enricher)[1] == run(url, make(cache_size=0))[1]
    assert enricher.cache_info().currsize == 0
    # a URL over max_url_length is skipped, with or without the cache
    assert run(url, make(max_url_length=100)) == (Outcome.SKIPPED, None)
    assert run(url[:900], make(max_url_length=100)) == (Outcome.SKIPPED, None)


def test_cached_and_uncached_results_are_identical() -> None:
    """Every outcome and campaign object, on generated traffic with repeated URLs and on odd
    URLs (each twice, so the second answer comes from the cache)."""
    odd = [
        "http://[::1?utm_source=x",
        "https://s.example/#/p?utm_source=frag",
        "https://s.example/?UTM_Source=%20Mixed%20&utm%5Fmedium=Email",
        "https://s.example/?gclid=&fbclid=f1&gclid=g1",
        "https://s.example/?utm_campaign=%FF%FE",
        "https://bücher.example/?utm_source=x",
    ]
    for config in ({}, {"read_fragment": True}):
        cached, uncached = make(**config), make(cache_size=0, **config)
        events = traffic(3000)
        events += [{"context": {"page_url": url}} for url in odd + odd]
        copies = copy.deepcopy(events)
        assert [cached.enrich(e) for e in events] == [uncached.enrich(e) for e in copies]
        assert events == copies
        assert cached.cache_info().hits > len(odd)  # the second round of odd URLs, at least


def test_lowercase_can_be_turned_off() -> None:
    _, campaign = run("https://s.example/?utm_source=Google", make(lowercase_source_medium=False))
    assert campaign["source"] == "Google"


def test_status_close_and_repr() -> None:
    enricher = make()
    assert enricher.status() == "enabled"
    assert "CampaignEnricher" in repr(enricher) and "cache_size=10000" in repr(enricher)
    enricher.close()


@pytest.mark.parametrize(
    "config, where",
    [
        ({"max_value_length": 0}, "max_value_length"),
        ({"max_value_length": "long"}, "max_value_length"),
        ({"max_url_length": 10}, "max_url_length"),
        ({"click_ids": "gclid"}, "click_ids"),
        ({"click_ids": [{"param": "bad name"}]}, "click_ids.0.param"),
        ({"click_ids": [{"param": "utm_source"}]}, "click_ids.0.param"),
        ({"click_ids": [{"param": "gclid", "colour": "red"}]}, "click_ids.0.colour"),
        ({"click_ids": [{"param": "gclid"}, {"param": "GCLID"}]}, ""),
        ({"infer": True}, "infer"),
        ({"cache_size": -1}, "cache_size"),
        ({"cache_size": "many"}, "cache_size"),
    ],
)
def test_bad_config_is_refused(config: dict, where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CampaignConfig.model_validate(config)
    locs = [".".join(str(p) for p in e["loc"]) for e in caught.value.errors()]
    assert where in locs


def test_defaults_cover_the_common_click_ids() -> None:
    params = [c.param for c in CampaignConfig().click_ids]
    for expected in (
        "gclid",
        "gbraid",
        "wbraid",
        "dclid",
        "fbclid",
        "msclkid",
        "ttclid",
        "twclid",
        "li_fat_id",
        "yclid",
        "mc_cid",
    ):
        assert expected in params
    assert len(params) == len(set(params))


# ------------------------------------------------------------------------------------------
# Through a topology
# ------------------------------------------------------------------------------------------


STAGE = """  - id: campaign
    type: enrich
    enricher: campaign
    on_error: dead_letter
    config:
      max_value_length: 32"""


def message(page_url: Any, **extra: Any) -> RawMessage:
    event = {
        "event_id": f"e-{next(_ids)}",  # distinct: the topology dedupes
        "event": "page_viewed",
        "timestamp": int(NOW * 1000),
        "anonymous_id": "a-1",
        "properties": {"path": "/"},
        "context": {"page_url": page_url, **extra},
    }
    return RawMessage(orjson.dumps(event), key=b"a-1")


def test_in_a_topology(tmp_path: Path) -> None:
    topology = load_topology(topology_file(tmp_path, STAGE)[0], env={})
    processor = Processor(topology, clock=lambda: NOW)
    ctx = processor.process(
        [
            message(
                "https://shop.example.com/?utm_source=Bing&utm_medium=cpc&utm_campaign=" + "z" * 99
            ),
            message("https://shop.example.com/?gclid=abc"),
            message("https://shop.example.com/"),
            message("http://[::1?utm_source=x"),
            message(None),
        ]
    )
    assert [t for t, _, _ in ctx.outputs] == ["processed_events"] * 5
    events = [orjson.loads(v) for _, _, v in ctx.outputs]
    first = events[0]["context"]["campaign"]
    assert (first["source"], first["medium"], first["name"]) == ("bing", "cpc", "z" * 32)
    assert events[1]["context"]["campaign"]["click_id_type"] == "gclid"
    assert all("campaign" not in e["context"] for e in events[2:])
    assert ctx.counters[("campaign", "hit")] == 2
    assert ctx.counters[("campaign", "miss")] == 1
    assert ctx.counters[("campaign", "skipped")] == 2
    assert ctx.counters[("campaign", "error")] == 0
    envelope = compile_schema(topology.schemas["envelope"])
    assert all(envelope(e, "") is None for e in events)


def test_bad_config_in_a_topology_names_the_path(tmp_path: Path) -> None:
    stage = """  - id: campaign
    type: enrich
    enricher: campaign
    config:
      max_value_length: -1
      click_ids: [{param: gclid, sauce: x}]
      colour: blue"""
    path, i = topology_file(tmp_path, stage)
    with pytest.raises(TopologyError) as caught:
        load_topology(path, env={})
    paths = {p.path: p.message for p in caught.value.problems}
    assert f"stages[{i}].config.max_value_length" in paths
    assert paths[f"stages[{i}].config.colour"] == "unknown key"
    assert any(p.startswith(f"stages[{i}].config.click_ids") and "sauce" in p for p in paths)


def test_optional_flag_is_accepted(tmp_path: Path) -> None:
    # campaign never fails to start (no files, no secrets): optional changes nothing
    stage = STAGE.replace("on_error: dead_letter", "optional: true")
    processor = Processor(
        load_topology(topology_file(tmp_path, stage)[0], env={}), clock=lambda: NOW
    )
    assert next(s for s in processor.middle if s.id == "campaign").status() == "enabled"


# ------------------------------------------------------------------------------------------
# Generated traffic
# ------------------------------------------------------------------------------------------


def traffic(count: int = 5000) -> list[dict[str, Any]]:
    events = []
    for record in generate(count, TrafficProfile(seed=11)):
        if record.kind == "valid":
            event = orjson.loads(record.value)
            event["context"] = event.get("context") or {}
            events.append(event)
    return events


def test_generated_traffic() -> None:
    enricher = make()
    events = traffic()
    outcomes = [enricher.enrich(e) for e in events]
    for event, outcome in zip(events, outcomes):
        url = event["context"].get("page_url")
        if url is None:
            assert outcome is Outcome.SKIPPED
        elif "utm_" in url or "clid=" in url:
            assert outcome is Outcome.HIT
            campaign = event["context"]["campaign"]
            assert campaign["source"] and campaign["medium"]
            if "gclid=" in url or "fbclid=" in url:
                assert campaign["click_id_type"] in ("gclid", "fbclid")
        else:
            assert outcome is Outcome.MISS and "campaign" not in event["context"]
    assert outcomes.count(Outcome.HIT) > 100


# ------------------------------------------------------------------------------------------
# Cost: python -m tests.enrichers.test_campaign
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
    from urllib.parse import parse_qs, urlsplit

    def baseline(event: dict[str, Any]) -> None:
        url = event["context"].get("page_url")
        if url is not None:
            parse_qs(urlsplit(url).query)

    enricher = make()
    events = traffic(count)
    with_url = [e for e in events if e["context"].get("page_url")]
    hits = [
        e
        for e in with_url
        if "utm_" in e["context"]["page_url"] or "clid=" in e["context"]["page_url"]
    ]
    print(
        f"{len(events)} valid events, {len(with_url)} with a page URL, "
        f"{len(hits)} with campaign parameters"
    )
    for label, subset in [("all events", events), ("campaign URLs", hits)]:
        ours = _per_event_us(enricher.enrich, subset)
        base = _per_event_us(baseline, subset)
        print(
            f"{label:15s} campaign {ours:6.2f} µs/event   "
            f"urlsplit+parse_qs {base:6.2f} µs/event   ratio {ours / base:.2f}"
        )


if __name__ == "__main__":
    bench()
