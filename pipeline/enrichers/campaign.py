"""Campaign attribution from the page URL: UTM parameters and ad-platform click ids.

Reads ``context.page_url`` and, when its query string carries any campaign parameter, writes::

    context.campaign = {"source", "medium", "name", "term", "content", "id",
                        "click_id", "click_id_type"}

(every key present, null when absent), from ``utm_source``, ``utm_medium``, ``utm_campaign``
(→ ``name``), ``utm_term``, ``utm_content``, ``utm_id`` (→ ``id``) and the first click id of
``click_ids`` found in the URL (``click_id`` is its value, ``click_id_type`` its parameter name,
lower-case, e.g. ``gclid``). A URL with no such parameter gets no ``campaign`` key.

Parsing rules
-------------
* Parameter names are case-insensitive (``UTM_Source`` = ``utm_source``) and may be
  percent-encoded (``utm%5Fsource``). The first occurrence with a non-empty value wins.
* Values are URL-decoded (``%xx`` and ``+``; invalid UTF-8 becomes U+FFFD), control characters
  removed, whitespace trimmed and capped at ``max_value_length`` characters. A value that is
  empty after that counts as absent. ``source`` and ``medium`` are lower-cased unless
  ``lowercase_source_medium: false`` (so ``Google``/``google`` do not split a report).
* Only the query string is read (``?...`` up to ``#``). Single-page apps that put parameters in
  the fragment (``/#/page?utm_source=x``) need ``read_fragment: true``.
* Source/medium inference: when a click id is found and the URL has *neither* ``utm_source`` nor
  ``utm_medium``, both are taken from the click id's ``source``/``medium`` (``gclid`` →
  google/cpc). When either is present the URL was tagged by hand, and mixing a hand-written
  source with a guessed medium would make up a pair nobody chose, so nothing is inferred.
  ``fbclid`` infers facebook/**social**, not paid: Facebook appends it to every outbound link,
  organic posts included (paid Meta traffic carries UTM tags when advertisers set them).

Outcomes: HIT when a ``campaign`` object was written; MISS when the page URL is a string
without campaign parameters; SKIPPED when there is no page URL (mobile events), it is not a
string, it is longer than ``max_url_length``, or it carries campaign parameters but cannot be
parsed as a URL (e.g. ``http://[::1?utm_source=x``: the URL is only fully parsed, with
``urllib.parse.urlsplit``, when it has something to extract). No exception for odd input.

Privacy: click ids identify one ad click (and so, at the ad platform, a person). Hash or drop
``context.campaign.click_id`` with the ``pii`` enricher (placed after this one) when they must
not be stored in clear.

Cost: a URL without ``?`` costs a substring test; a query is split by hand and only the wanted
values are decoded (about half the cost of ``urlsplit`` + ``parse_qs``, still 3-9 µs; ``python
-m tests.enrichers.test_campaign`` measures it). The result for a URL with a query (or, with
``read_fragment``, a fragment) is kept in an LRU of ``cache_size`` entries keyed by the URL
(URLs of up to 1,024 characters): landing pages repeat (40% of tagged URLs in generated traffic,
fewer with click ids, which make a URL unique), and a hit costs a dict copy while a miss costs
the cache well under a microsecond.
"""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

from pydantic import Field, field_validator, model_validator

from pipeline.enrichers import EnricherContext, EnricherType, Outcome
from pipeline.topology.model import Strict

# Enum member access costs ~0.2 us in Python 3.11: the hot path uses these.
_HIT, _MISS, _SKIPPED = Outcome.HIT, Outcome.MISS, Outcome.SKIPPED

_PARAM_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_UTM_FIELDS = {
    "utm_source": "source",
    "utm_medium": "medium",
    "utm_campaign": "name",
    "utm_term": "term",
    "utm_content": "content",
    "utm_id": "id",
}
_CLICK = "\x00click"  # internal marker field for click ids (cannot collide with a utm field)
# C0 and C1 control characters and DEL: removed from values (they break CSVs and terminals).
_CONTROL = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)])


class ClickId(Strict):
    """One click-id parameter and what it says about the traffic when nothing else does."""

    param: str
    """Query parameter name (matched case-insensitively), e.g. ``gclid``."""
    source: str | None = None
    """``source`` to infer when the URL has neither ``utm_source`` nor ``utm_medium``."""
    medium: str | None = None
    """``medium`` to infer in the same case."""

    @field_validator("param")
    @classmethod
    def _param_name(cls, value: str) -> str:
        if not _PARAM_RE.match(value):
            raise ValueError(f"{value!r} is not a query parameter name (1-64 of A-Z a-z 0-9 _ . -)")
        if value.lower() in _UTM_FIELDS:
            raise ValueError(f"{value!r} is a UTM parameter, not a click id")
        return value.lower()


DEFAULT_CLICK_IDS: tuple[ClickId, ...] = (
    ClickId(param="gclid", source="google", medium="cpc"),  # Google Ads
    ClickId(param="gbraid", source="google", medium="cpc"),  # Google Ads, iOS app-to-web
    ClickId(param="wbraid", source="google", medium="cpc"),  # Google Ads, iOS web-to-app
    ClickId(param="dclid", source="google", medium="display"),  # Campaign Manager / DV360
    ClickId(param="msclkid", source="bing", medium="cpc"),  # Microsoft Advertising
    ClickId(param="yclid", source="yandex", medium="cpc"),  # Yandex Direct
    ClickId(param="ttclid", source="tiktok", medium="paid_social"),  # TikTok Ads only
    ClickId(param="twclid", source="twitter", medium="paid_social"),  # X (Twitter) Ads
    ClickId(param="li_fat_id", source="linkedin", medium="paid_social"),  # LinkedIn Ads
    ClickId(param="epik", source="pinterest", medium="paid_social"),  # Pinterest Ads
    ClickId(param="sccid", source="snapchat", medium="paid_social"),  # Snapchat Ads
    ClickId(param="fbclid", source="facebook", medium="social"),  # every outbound Facebook link
    ClickId(param="mc_cid", source="mailchimp", medium="email"),  # Mailchimp campaign id
    ClickId(param="irclickid", source="impact", medium="affiliate"),  # impact.com
    ClickId(param="awc", source="awin", medium="affiliate"),  # Awin
)
"""Default click ids, in order of precedence when a URL carries several."""


class CampaignConfig(Strict):
    click_ids: list[ClickId] = Field(default_factory=lambda: list(DEFAULT_CLICK_IDS))
    """Click-id parameters to recognise, first match wins (replaces the default list; an
    empty list turns click ids off). Defaults: gclid, gbraid, wbraid, dclid, msclkid, yclid,
    ttclid, twclid, li_fat_id, epik, sccid, fbclid, mc_cid, irclickid, awc."""
    infer_source_medium: bool = True
    """Fill source/medium from the click id when the URL has neither utm_source nor utm_medium."""
    lowercase_source_medium: bool = True
    """Lower-case ``source`` and ``medium`` (other values keep their case)."""
    max_value_length: int = Field(default=256, ge=1, le=4096)
    """Longest value kept, in characters, after decoding; longer values are cut."""
    max_url_length: int = Field(default=8192, ge=64, le=1_048_576)
    """Longer page URLs are not read (SKIPPED): they are junk or an attack, not a landing page."""
    read_fragment: bool = False
    """Also read parameters after ``#`` (hash-routed single-page apps); the query string wins."""
    cache_size: int = Field(default=10_000, ge=0, le=1_000_000)
    """Results kept per page URL with a query string in an LRU (0: no cache); URLs longer than
    1,024 characters are never kept (so under ~2 KB an entry)."""

    @model_validator(mode="after")
    def _unique_params(self) -> "CampaignConfig":
        seen: set[str] = set()
        for i, click in enumerate(self.click_ids):
            if click.param in seen:
                raise ValueError(f"click_ids[{i}]: parameter {click.param!r} is listed twice")
            seen.add(click.param)
        return self


_CACHED_LENGTH = 1024
"""Page URLs up to this many characters are cached (so the cache holds at most ~10 MB of keys)."""
_NOTHING_MISSED: tuple[Outcome, None] = (_MISS, None)
_NOTHING_SKIPPED: tuple[Outcome, None] = (_SKIPPED, None)


class CampaignEnricher:
    def __init__(self, config: CampaignConfig, context: EnricherContext) -> None:
        self._config = config
        self._cap = config.max_value_length
        self._max_url = config.max_url_length
        self._fragment = config.read_fragment
        self._lower_sm = config.lowercase_source_medium
        self._infer = config.infer_source_medium
        # parameter name (lower-case) -> output field, or a click id's rank
        wanted: dict[str, Any] = dict(_UTM_FIELDS)
        self._clicks = config.click_ids
        for rank, click in enumerate(config.click_ids):
            wanted[click.param] = rank
        self._wanted = wanted
        self._parse = (
            functools.lru_cache(maxsize=config.cache_size)(self._parse_uncached)
            if config.cache_size
            else self._parse_uncached
        )

    def enrich(self, event: dict[str, Any]) -> Outcome:
        context = event.get("context")
        if type(context) is not dict:
            return _SKIPPED
        url = context.get("page_url")
        if type(url) is not str:
            return _SKIPPED
        if "?" not in url and (not self._fragment or "#" not in url):
            return _MISS  # most page URLs (``in`` costs less than ``find`` with its arguments)
        q = url.find("?")
        h = url.find("#")
        # no query string (a "?" after "#" belongs to the fragment), and no fragment to read
        if (q < 0 or 0 <= h < q) and (not self._fragment or h < 0):
            return _MISS
        # Long URLs bypass the cache: as keys they would hold memory (and they are rare).
        outcome, campaign = (
            self._parse(url) if len(url) <= _CACHED_LENGTH else self._parse_uncached(url)
        )
        if campaign is not None:
            context["campaign"] = campaign.copy()  # cached dicts are shared: each event its own
        return outcome

    def _parse_uncached(self, url: str) -> tuple[Outcome, dict[str, Any] | None]:
        """(outcome, the ``campaign`` object or None) of a page URL with a query or fragment."""
        if len(url) > self._max_url:
            return _NOTHING_SKIPPED
        q = url.find("?")
        h = url.find("#")
        found: dict[str, str] = {}
        click_rank = -1
        if q >= 0 and not (0 <= h < q):
            click_rank = self._scan(url[q + 1 : h] if h > q else url[q + 1 :], found, click_rank)
        if self._fragment and h >= 0:
            fq = url.find("?", h + 1)
            if fq >= 0:
                click_rank = self._scan(url[fq + 1 :], found, click_rank)
        if not found:
            return _NOTHING_MISSED
        # urlsplit only fails on a bad bracketed (IPv6) host or on a non-ASCII host that
        # normalises into URL syntax: ask it only then (it costs more than the rest of a hit).
        head = url[:q] if q >= 0 else url
        if "[" in head or "]" in head or not head.isascii():
            try:
                urlsplit(url)
            except ValueError:
                return _NOTHING_SKIPPED
        source = found.get("source")
        medium = found.get("medium")
        click_value = found.get(_CLICK)
        click_type = None
        if click_value is not None:
            click = self._clicks[click_rank]
            click_type = click.param
            if self._infer and source is None and medium is None:
                source, medium = click.source, click.medium
        if self._lower_sm:
            if source is not None:
                source = source.lower()
            if medium is not None:
                medium = medium.lower()
        return _HIT, {
            "source": source,
            "medium": medium,
            "name": found.get("name"),
            "term": found.get("term"),
            "content": found.get("content"),
            "id": found.get("id"),
            "click_id": click_value,
            "click_id_type": click_type,
        }

    def cache_info(self) -> Any:
        """``functools`` cache statistics (hits, misses, currsize), or None without a cache."""
        info = getattr(self._parse, "cache_info", None)
        return info() if info is not None else None

    def _scan(self, query: str, found: dict[str, str], click_rank: int) -> int:
        """Add the wanted parameters of ``query`` to ``found``; returns the best click id rank."""
        wanted = self._wanted
        for part in query.split("&"):
            eq = part.find("=")
            if eq <= 0:
                continue
            key = part[:eq]
            target = wanted.get(key)
            if target is None:
                key = key.lower()
                if "%" in key:
                    key = unquote(key).lower()
                target = wanted.get(key)
                if target is None:
                    continue
            if type(target) is int:
                if 0 <= click_rank <= target:
                    continue
                value = self._value(part[eq + 1 :])
                if value is not None:
                    found[_CLICK] = value
                    click_rank = target
            elif target not in found:
                value = self._value(part[eq + 1 :])
                if value is not None:
                    found[target] = value
        return click_rank

    def _value(self, raw: str) -> str | None:
        if "%" in raw or "+" in raw:
            raw = unquote_plus(raw)
        if not raw.isprintable():
            raw = raw.translate(_CONTROL)
        raw = raw.strip()
        if not raw:
            return None
        if len(raw) > self._cap:
            raw = raw[: self._cap].rstrip()
        return raw

    def status(self) -> str:
        return "enabled"

    def close(self) -> None:
        clear = getattr(self._parse, "cache_clear", None)
        if clear is not None:
            clear()

    def __repr__(self) -> str:
        return (
            f"<CampaignEnricher click_ids={len(self._clicks)} max_value_length={self._cap} "
            f"cache_size={self._config.cache_size}>"
        )


ENRICHER = EnricherType(
    name="campaign",
    config_model=CampaignConfig,
    build=CampaignEnricher,
    description="UTM parameters and ad click ids of context.page_url -> context.campaign",
)
