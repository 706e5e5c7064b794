"""The referrer enricher: mediums, sources and search terms from ``context.referrer``.

The built-in list, host matching (subdomains, ``name.*`` country domains, paths, Android apps,
IDN), internal traffic, the extra list file, odd referrers, config errors, the cache, a run
through a topology and generated traffic. The per-event cost (against ``urlsplit`` + ``parse_qs``
in the same process, cached and uncached) is printed by ``python -m tests.enrichers.test_referrer``.
"""

from __future__ import annotations

import copy
import itertools
import json
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
from pipeline.enrichers.referrer import (
    MEDIUMS,
    ReferrerConfig,
    ReferrerEnricher,
    ReferrerList,
    load_builtin_list,
)
from pipeline.errors import TopologyError
from pipeline.topology import load_topology
from pipeline.traffic import TrafficProfile, generate
from tests.enrichers.topologies import topology_file

REPO = Path(__file__).resolve().parents[2]
NOW = 1_795_000_000.0
PAGE = "https://shop.example.com/p/1"
KEYS = ["host", "medium", "source", "search_term"]
_ids = itertools.count()


@pytest.fixture(scope="module")
def enricher() -> ReferrerEnricher:
    return ReferrerEnricher(ReferrerConfig(), EnricherContext())


def make(tmp_path: Path | None = None, **config: Any) -> ReferrerEnricher:
    return ReferrerEnricher(
        ReferrerConfig(**config), EnricherContext(base_dir=tmp_path or Path("."))
    )


def run(enricher: ReferrerEnricher, referrer: Any, page: Any = PAGE) -> tuple[Outcome, dict | None]:
    event = {"context": {"referrer": referrer, "page_url": page}}
    outcome = enricher.enrich(event)
    return outcome, event["context"].get("referrer_info")


def info(enricher: ReferrerEnricher, referrer: Any, page: Any = PAGE) -> tuple:
    _, found = run(enricher, referrer, page)
    assert found is not None and list(found) == KEYS
    return found["medium"], found["source"], found["search_term"]


def test_registered_by_name() -> None:
    kind = enricher_type("referrer")
    assert kind.config_model is ReferrerConfig and kind.build is ReferrerEnricher


def test_builtin_list_is_valid_and_broad() -> None:
    data = load_builtin_list()
    referrers = ReferrerList()
    referrers.add(data, "built-in")
    assert {k for k in data if not k.startswith("_")} <= set(MEDIUMS)
    for medium in ("search", "social", "email", "paid"):
        assert len(data[medium]) >= 5, medium
    for name, entry in data["search"].items():
        assert entry.get("parameters"), f"search engine {name} has no query parameter"


@pytest.mark.parametrize(
    "referrer, medium, source, term",
    [
        ("https://www.google.com/search?q=red+shoes", "search", "Google", "red shoes"),
        ("https://www.google.co.uk/search?q=caf%C3%A9", "search", "Google", "café"),
        ("https://www.google.de/", "search", "Google", None),
        ("https://google.com.au/search?q=x", "search", "Google", "x"),
        ("https://www.google.fr/url?sa=t&q=&esrc=s", "search", "Google", None),
        ("https://images.google.co.jp/", "search", "Google", None),
        ("https://www.bing.com/search?q=laptop&form=QBLH", "search", "Bing", "laptop"),
        ("https://duckduckgo.com/?q=privacy&ia=web", "search", "DuckDuckGo", "privacy"),
        ("https://search.yahoo.com/search?p=yahoo+query", "search", "Yahoo!", "yahoo query"),
        ("https://uk.search.yahoo.com/search?p=tea", "search", "Yahoo!", "tea"),
        ("https://yandex.ru/search/?text=%D0%BA%D0%BE%D1%82", "search", "Yandex", "кот"),
        ("https://yandex.com.tr/search/?text=kedi", "search", "Yandex", "kedi"),
        ("https://www.baidu.com/s?wd=%E7%8C%AB", "search", "Baidu", "猫"),
        ("https://www.ecosia.org/search?q=trees", "search", "Ecosia", "trees"),
        ("https://www.qwant.com/?q=q1", "search", "Qwant", "q1"),
        ("https://search.brave.com/search?q=b", "search", "Brave", "b"),
        ("https://www.startpage.com/do/search?query=s", "search", "Startpage", "s"),
        ("android-app://com.google.android.googlequicksearchbox/", "search", "Google", None),
        ("https://www.facebook.com/", "social", "Facebook", None),
        (
            "https://l.facebook.com/l.php?u=https%3A%2F%2Fshop.example.com%2F",
            "social",
            "Facebook",
            None,
        ),
        ("https://m.facebook.com/story.php", "social", "Facebook", None),
        ("https://lm.facebook.com/", "social", "Facebook", None),
        ("https://www.instagram.com/", "social", "Instagram", None),
        ("https://l.instagram.com/?u=x", "social", "Instagram", None),
        ("https://t.co/abc", "social", "X (Twitter)", None),
        ("https://twitter.com/someone", "social", "X (Twitter)", None),
        ("https://x.com/someone", "social", "X (Twitter)", None),
        ("https://www.linkedin.com/feed/", "social", "LinkedIn", None),
        ("https://lnkd.in/abc", "social", "LinkedIn", None),
        ("https://www.reddit.com/r/BuyItForLife/", "social", "Reddit", None),
        ("https://www.pinterest.com/", "social", "Pinterest", None),
        ("https://www.pinterest.de/pin/1", "social", "Pinterest", None),
        ("https://www.youtube.com/", "social", "YouTube", None),
        ("https://m.youtube.com/watch?v=1", "social", "YouTube", None),
        ("https://www.tiktok.com/", "social", "TikTok", None),
        ("android-app://com.facebook.katana/", "social", "Facebook", None),
        ("https://mail.google.com/", "email", "Gmail", None),
        ("android-app://com.google.android.gm/", "email", "Gmail", None),
        ("https://outlook.live.com/mail/0/", "email", "Outlook.com", None),
        ("https://mail.yahoo.com/d/folders/1", "email", "Yahoo! Mail", None),
        ("https://mail.yahoo.co.jp/", "email", "Yahoo! Mail", None),
        ("https://www.icloud.com/mail/", "email", "iCloud Mail", None),
        ("https://www.googleadservices.com/pagead/aclk?sa=L", "paid", "Google Ads", None),
        ("https://www.google.com/aclk?sa=l&q=shoes", "paid", "Google Ads", None),
        ("https://ad.doubleclick.net/ddm/clk/1", "paid", "DoubleClick", None),
        ("https://tpc.googlesyndication.com/", "paid", "Google AdSense", None),
        ("https://www.bing.com/aclk?ld=x", "paid", "Microsoft Advertising", None),
    ],
)
def test_known_referrers(
    enricher: ReferrerEnricher, referrer: str, medium: str, source: str, term: str | None
) -> None:
    assert info(enricher, referrer) == (medium, source, term)
    assert run(enricher, referrer)[0] is Outcome.HIT


def test_host_is_lower_case_and_keeps_www(enricher: ReferrerEnricher) -> None:
    _, found = run(enricher, "https://WWW.Google.DE./search?q=x")
    assert found["host"] == "www.google.de"
    assert found["source"] == "Google"
    _, found = run(enricher, "https://user:pw@www.bing.com:8443/search?q=y")
    assert (found["host"], found["source"], found["search_term"]) == ("www.bing.com", "Bing", "y")


def test_google_services_that_are_not_search_are_unknown(enricher: ReferrerEnricher) -> None:
    for referrer in (
        "https://docs.google.com/document/d/1",
        "https://accounts.google.com/",
        "https://notgoogle.com/",
    ):
        assert info(enricher, referrer) == ("unknown", None, None), referrer
    # google.<something that is not a country domain>
    assert info(enricher, "https://google.example/")[0] == "unknown"


def test_unknown_referrer_is_a_miss(enricher: ReferrerEnricher) -> None:
    outcome, found = run(enricher, "https://blog.example.org/post?id=3")
    assert outcome is Outcome.MISS
    assert found == {
        "host": "blog.example.org",
        "medium": "unknown",
        "source": None,
        "search_term": None,
    }


def test_internal_by_page_host(enricher: ReferrerEnricher) -> None:
    assert info(enricher, "https://shop.example.com/c/shoes") == ("internal", None, None)
    assert run(enricher, "https://shop.example.com/c/shoes")[0] is Outcome.HIT
    # www. is ignored on either side, as are case, ports and credentials
    assert (
        info(enricher, "https://www.shop.example.com/", "https://shop.example.com/x")[0]
        == "internal"
    )
    assert (
        info(enricher, "https://shop.example.com/", "https://WWW.Shop.Example.com:443/x")[0]
        == "internal"
    )
    assert (
        info(enricher, "https://shop.example.com/", "https://u@shop.example.com/")[0] == "internal"
    )
    assert info(enricher, "http://[::1]/a", "http://[::1]:8080/b")[0] == "internal"
    assert info(enricher, "https://shop.example.com/", "//shop.example.com/x")[0] == "internal"
    # another subdomain of the same site is not the same host
    assert info(enricher, "https://email.shop.example.com/c/1")[0] == "unknown"
    # internal wins over the list: a search engine's own pages
    assert (
        info(enricher, "https://www.google.com/search?q=x", "https://www.google.com/maps")[0]
        == "internal"
    )


def test_internal_hosts_config(tmp_path: Path) -> None:
    enricher = make(
        internal_hosts=["Example-Checkout.com", "*.partner.example", "www.other.example"]
    )
    assert info(enricher, "https://example-checkout.com/pay")[0] == "internal"
    assert info(enricher, "https://secure.example-checkout.com/pay")[0] == "internal"
    assert info(enricher, "https://a.partner.example/")[0] == "internal"
    assert info(enricher, "https://partner.example/")[0] == "internal"
    assert info(enricher, "https://other.example/")[0] == "internal"
    assert info(enricher, "https://notexample-checkout.com/")[0] == "unknown"


def test_email_by_utm_medium_in_the_referrer(enricher: ReferrerEnricher) -> None:
    assert info(
        enricher, "https://view.newsletter.example/?utm_medium=Email&utm_source=weekly"
    ) == (
        "email",
        "weekly",
        None,
    )
    assert info(enricher, "https://x.example/?UTM_MEDIUM=e-mail")[:2] == ("email", None)
    assert info(enricher, "https://x.example/?utm_medium=cpc&utm_source=y")[0] == "unknown"
    # the list wins over the parameter
    assert info(enricher, "https://t.co/x?utm_medium=email")[0] == "social"


def test_search_terms_are_decoded_capped_and_optional(tmp_path: Path) -> None:
    enricher = make(max_term_length=5)
    assert info(enricher, "https://www.google.com/search?q=%20abcdefgh%20")[2] == "abcde"
    assert info(enricher, "https://www.google.com/search?q=a%00b%0Ac")[2] == "abc"
    assert info(enricher, "https://www.google.com/search?q=%FF%FE")[2] == "\ufffd\ufffd"
    assert info(enricher, "https://www.google.com/search?q=+++")[2] is None
    assert info(enricher, "https://www.google.com/search?q=&q=second")[2] == "secon"
    assert info(enricher, "https://search.yahoo.com/search?q=fallback")[2] == "fallb"  # p, then q
    off = make(search_terms=False)
    assert info(off, "https://www.google.com/search?q=secret") == ("search", "Google", None)


def test_idn_hosts(enricher: ReferrerEnricher) -> None:
    _, found = run(enricher, "https://яндекс.рф/search/?text=test")
    assert (found["host"], found["medium"], found["source"], found["search_term"]) == (
        "яндекс.рф",
        "search",
        "Yandex",
        "test",
    )
    assert info(enricher, "https://xn--d1acpjx3f.xn--p1ai/")[1] == "Yandex"
    # internal across Unicode and punycode spellings of the same host
    assert (
        info(enricher, "https://bücher.example/a", "https://xn--bcher-kva.example/b")[0]
        == "internal"
    )
    assert (
        info(enricher, "https://xn--bcher-kva.example/a", "https://Bücher.example/b")[0]
        == "internal"
    )
    # a host the IDNA codec refuses still works as a plain string
    assert info(enricher, "https://" + "ü" * 70 + ".example/")[0] == "unknown"


@pytest.mark.parametrize(
    "referrer",
    [
        "http://[::1",
        "http://[not-an-ip]/",
        "direct",
        "(none)",
        "/relative/path",
        "https://",
        "https://./",
        "\x00\x01\x02",
        "https://" + "a" * 10_000 + ".com/",
        "https://www.google.com/search?q=" + "x" * 10_000,
    ],
)
def test_unparsable_referrers_are_a_marked_miss(enricher: ReferrerEnricher, referrer: str) -> None:
    outcome, found = run(enricher, referrer)
    assert outcome is Outcome.MISS
    assert found == {"host": None, "medium": "unknown", "source": None, "search_term": None}


@pytest.mark.parametrize("referrer", [None, "", 42, 1.5, True, ["https://t.co/"], {"u": 1}])
def test_no_referrer_no_key(enricher: ReferrerEnricher, referrer: Any) -> None:
    assert run(enricher, referrer) == (Outcome.SKIPPED, None)


@pytest.mark.parametrize("page", [None, 42, "", "not a url", "http://[::1", "x" * 20_000])
def test_odd_page_urls_only_disable_the_internal_check(
    enricher: ReferrerEnricher, page: Any
) -> None:
    assert info(enricher, "https://t.co/x", page)[0] == "social"
    assert info(enricher, "https://shop.example.com/", page)[0] == "unknown"


def test_missing_context(enricher: ReferrerEnricher) -> None:
    assert enricher.enrich({}) is Outcome.SKIPPED
    assert enricher.enrich({"context": []}) is Outcome.SKIPPED


def test_extra_file_extends_and_overrides(tmp_path: Path) -> None:
    extra = {
        "_comment": "ours",
        "social": {"Mastodon (ours)": {"domains": ["social.example"]}},
        "search": {"Intranet": {"domains": ["search.corp.example/find"], "parameters": ["term"]}},
        "paid": {"Facebook Ads": {"domains": ["l.facebook.com"]}},
        "unknown": {"Partner": {"domains": ["partner.example"]}},
    }
    (tmp_path / "refs.json").write_text(json.dumps(extra), encoding="utf-8")
    enricher = make(tmp_path, extra_referrers_file="refs.json")
    assert info(enricher, "https://social.example/@me") == ("social", "Mastodon (ours)", None)
    assert info(enricher, "https://search.corp.example/find?term=x") == ("search", "Intranet", "x")
    assert info(enricher, "https://search.corp.example/other?term=x")[0] == "unknown"
    assert info(enricher, "https://l.facebook.com/l.php") == ("paid", "Facebook Ads", None)
    assert info(enricher, "https://www.facebook.com/") == ("social", "Facebook", None)
    # a named source of no particular medium: medium unknown, but the source is kept
    outcome, found = run(enricher, "https://partner.example/")
    assert (outcome, found["source"]) == (Outcome.MISS, "Partner")
    only = make(tmp_path, extra_referrers_file=str(tmp_path / "refs.json"), builtin_list=False)
    assert info(only, "https://www.google.com/search?q=x")[0] == "unknown"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("{not json", "is not JSON"),
        (b"\xff\xfe", "cannot read"),
        ("[]", "expected a JSON object"),
        ('{"video": {}}', "unknown medium 'video'"),
        ('{"search": []}', "expected an object of sources"),
        ('{"search": {"X": {"domain": ["x.com"]}}}', 'expected {"domains"'),
        (
            '{"search": {"X": {"domains": ["x.com"], "parameters": "q"}}}',
            "parameters must be a list",
        ),
        ('{"search": {"X": {"domains": ["not a domain"]}}}', "is not a domain"),
        ('{"search": {"X": {"domains": ["*.x.com"]}}}', "is not a domain"),
        ('{"search": {"X": {"domains": [7]}}}', "is not a string"),
        (
            '{"search": {"X": {"domains": ["x.com"]}}, "social": {"Y": {"domains": ["x.com"]}}}',
            "also listed under search.X",
        ),
        ('{"search": {"": {"domains": ["x.com"]}}}', "source name"),
    ],
)
def test_bad_extra_file_makes_the_enricher_unavailable(
    tmp_path: Path, content: Any, message: str
) -> None:
    path = tmp_path / "refs.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(EnricherUnavailable) as caught:
        make(tmp_path, extra_referrers_file="refs.json")
    assert message in str(caught.value)


def test_an_empty_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EnricherUnavailable, match="empty"):
        make(builtin_list=False)


def test_list_is_loaded_at_build_time_not_import(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.enrichers.referrer as module

    calls = []
    real = module.load_builtin_list
    monkeypatch.setattr(module, "load_builtin_list", lambda: calls.append(1) or real())
    make()
    make()
    assert len(calls) == 2


def test_cache(tmp_path: Path) -> None:
    enricher = make(cache_size=2)
    for referrer in ["https://t.co/a", "https://t.co/a", "https://t.co/b", "https://t.co/a"]:
        run(enricher, referrer)
    stats = enricher._classify.cache_info()
    assert (stats.hits, stats.currsize) == (2, 2)
    # the internal check is not cached: it depends on the page
    assert info(enricher, "https://shop.example.com/")[0] == "internal"
    assert info(enricher, "https://shop.example.com/", "https://other.example/")[0] == "unknown"
    # long referrers are classified without the cache
    long = "https://t.co/" + "x" * 2000
    before = enricher._classify.cache_info()
    assert info(enricher, long)[0] == "social"
    assert enricher._classify.cache_info() == before
    enricher.close()
    assert enricher._classify.cache_info().currsize == 0
    uncached = make(cache_size=0)
    assert info(uncached, "https://t.co/a")[0] == "social"
    uncached.close()


def test_page_host_cache_is_bounded() -> None:
    enricher = make(cache_size=2)
    referrer = "https://shop.example.com/"
    pages = ["https://shop.example.com/a", "https://shop.example.com/b"]
    for page in [*pages, pages[0], "https://shop.example.com/c", "https://other.example/"]:
        run(enricher, referrer, page)
    stats = enricher._page_host.cache_info()
    # a page that cannot contain the referrer's host is never parsed, so never cached
    assert (stats.hits, stats.misses, stats.currsize, stats.maxsize) == (1, 3, 2, 2)
    long_page = "https://shop.example.com/" + "p" * 1100
    assert info(enricher, referrer, long_page)[0] == "internal"
    assert enricher._page_host.cache_info().currsize == 2  # long pages bypass the cache
    enricher.close()
    assert enricher._page_host.cache_info().currsize == 0


def test_cached_and_uncached_results_are_identical() -> None:
    cached, uncached = make(), make(cache_size=0)
    events = traffic(3000)
    odd_pages = [
        "HTTPS://WWW.Shop.Example.COM./x",
        "https://user@shop.example.com:8080/",
        "//shop.example.com",
        "https://[::1]/",
        "https://xn--bcher-kva.example/",
        "https://bücher.example/",
    ]
    for referrer in ["https://shop.example.com/", "https://www.bücher.example/", "http://[::1]/"]:
        for page in odd_pages + odd_pages:
            events.append({"context": {"referrer": referrer, "page_url": page}})
    copies = copy.deepcopy(events)
    assert [cached.enrich(e) for e in events] == [uncached.enrich(e) for e in copies]
    assert events == copies
    assert cached._page_host.cache_info().hits > len(odd_pages)


def test_existing_referrer_info_is_replaced(enricher: ReferrerEnricher) -> None:
    event = {"context": {"referrer": "https://t.co/", "referrer_info": {"junk": True}}}
    enricher.enrich(event)
    assert list(event["context"]["referrer_info"]) == KEYS


def test_status_and_repr(enricher: ReferrerEnricher) -> None:
    assert enricher.status() == "enabled"
    assert "domains" in repr(enricher)


@pytest.mark.parametrize(
    "config, where",
    [
        ({"internal_hosts": ["not a host"]}, "internal_hosts"),
        ({"internal_hosts": "shop.example.com"}, "internal_hosts"),
        ({"max_term_length": 0}, "max_term_length"),
        ({"cache_size": -1}, "cache_size"),
        ({"cache_size": "big"}, "cache_size"),
        ({"search_terms": "maybe"}, "search_terms"),
        ({"extra_referrers": "x.json"}, "extra_referrers"),
    ],
)
def test_bad_config_is_refused(config: dict, where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ReferrerConfig.model_validate(config)
    assert where in [".".join(str(p) for p in e["loc"]) for e in caught.value.errors()]


# ------------------------------------------------------------------------------------------
# Through a topology
# ------------------------------------------------------------------------------------------


def message(referrer: Any) -> RawMessage:
    event = {
        "event_id": f"e-{next(_ids)}",
        "event": "page_viewed",
        "timestamp": int(NOW * 1000),
        "anonymous_id": "a-1",
        "properties": {"path": "/"},
        "context": {"page_url": PAGE, "referrer": referrer},
    }
    return RawMessage(orjson.dumps(event), key=b"a-1")


def test_in_a_topology(tmp_path: Path) -> None:
    (tmp_path / "refs.json").write_text('{"social": {"Ours": {"domains": ["ours.example"]}}}')
    stage = """  - id: referrer
    type: enrich
    enricher: referrer
    config:
      extra_referrers_file: refs.json
      internal_hosts: [checkout.example]"""
    topology = load_topology(topology_file(tmp_path, stage)[0], env={})
    processor = Processor(topology, clock=lambda: NOW)
    ctx = processor.process(
        [
            message("https://www.google.de/search?q=schuhe"),
            message("https://ours.example/"),
            message("https://checkout.example/done"),
            message("https://elsewhere.example/"),
            message(None),
        ]
    )
    events = [orjson.loads(v) for t, _, v in ctx.outputs]
    assert [t for t, _, _ in ctx.outputs] == ["processed_events"] * 5
    infos = [e["context"].get("referrer_info") for e in events]
    assert infos[0] == {
        "host": "www.google.de",
        "medium": "search",
        "source": "Google",
        "search_term": "schuhe",
    }
    assert infos[1]["source"] == "Ours"
    assert infos[2]["medium"] == "internal"
    assert infos[3]["medium"] == "unknown"
    assert infos[4] is None
    assert (
        ctx.counters[("referrer", "hit")],
        ctx.counters[("referrer", "miss")],
        ctx.counters[("referrer", "skipped")],
    ) == (3, 1, 1)
    envelope = compile_schema(topology.schemas["envelope"])
    assert all(envelope(e, "") is None for e in events)


def test_missing_extra_file_in_a_topology(tmp_path: Path) -> None:
    stage = """  - id: referrer
    type: enrich
    enricher: referrer
    optional: {optional}
    config:
      extra_referrers_file: missing.json"""
    path, _ = topology_file(tmp_path, stage.format(optional="false"))
    with pytest.raises(EnricherUnavailable, match="missing.json does not exist"):
        Processor(load_topology(path, env={}), clock=lambda: NOW)
    path, _ = topology_file(tmp_path, stage.format(optional="true"))
    processor = Processor(load_topology(path, env={}), clock=lambda: NOW)
    stage_obj = next(s for s in processor.middle if s.id == "referrer")
    assert stage_obj.status().startswith("disabled: extra_referrers_file")
    ctx = processor.process([message("https://t.co/")])
    ((_, _, value),) = ctx.outputs
    assert "referrer_info" not in orjson.loads(value)["context"]
    assert ctx.counters[("referrer", "skipped")] == 1


def test_bad_config_in_a_topology_names_the_path(tmp_path: Path) -> None:
    stage = """  - id: referrer
    type: enrich
    enricher: referrer
    config:
      internal_hosts: ["bad host"]
      cache_size: lots
      colour: blue"""
    path, i = topology_file(tmp_path, stage)
    with pytest.raises(TopologyError) as caught:
        load_topology(path, env={})
    paths = {p.path: p.message for p in caught.value.problems}
    assert "is not a host name" in paths[f"stages[{i}].config.internal_hosts"]
    assert f"stages[{i}].config.cache_size" in paths
    assert paths[f"stages[{i}].config.colour"] == "unknown key"


# ------------------------------------------------------------------------------------------
# Generated traffic
# ------------------------------------------------------------------------------------------


def traffic(count: int = 5000) -> list[dict[str, Any]]:
    events = []
    for record in generate(count, TrafficProfile(seed=5)):
        if record.kind == "valid":
            event = orjson.loads(record.value)
            event["context"] = event.get("context") or {}
            events.append(event)
    return events


def test_generated_traffic(enricher: ReferrerEnricher) -> None:
    events = traffic()
    outcomes = [enricher.enrich(e) for e in events]
    by_medium: dict[str, int] = {}
    for event, outcome in zip(events, outcomes):
        referrer = event["context"].get("referrer")
        found = event["context"].get("referrer_info")
        if not referrer:
            assert outcome is Outcome.SKIPPED and found is None
            continue
        by_medium[found["medium"]] = by_medium.get(found["medium"], 0) + 1
        if "?q=" in referrer and not referrer.startswith("https://shop.example.com/"):
            assert found["medium"] == "search" and found["search_term"], referrer
        if referrer.startswith("https://shop.example.com/"):
            assert found["medium"] == "internal"
    assert set(by_medium) == {"search", "social", "email", "internal", "unknown"}
    assert by_medium["internal"] > by_medium["search"] > by_medium["social"] > by_medium["email"]


# ------------------------------------------------------------------------------------------
# Cost: python -m tests.enrichers.test_referrer
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
        referrer = event["context"].get("referrer")
        if referrer:
            parts = urlsplit(referrer)
            _ = parts.hostname
            parse_qs(parts.query)

    cached = make()
    uncached = make(cache_size=0)
    events = traffic(count)
    with_referrer = [e for e in events if e["context"].get("referrer")]
    print(f"{len(events)} valid events, {len(with_referrer)} with a referrer")
    for label, subset in [("all events", events), ("with referrer", with_referrer)]:
        ours = _per_event_us(cached.enrich, subset)
        cold = _per_event_us(uncached.enrich, subset)
        base = _per_event_us(baseline, subset)
        print(
            f"{label:14s} referrer cached {ours:6.2f} µs/event, uncached {cold:6.2f}; "
            f"urlsplit+hostname+parse_qs {base:6.2f}; ratio cached/baseline {ours / base:.2f}"
        )
    print("cache:", cached._classify.cache_info())


if __name__ == "__main__":
    bench()
