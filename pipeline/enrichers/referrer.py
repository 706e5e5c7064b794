"""Referrer classification: where did the visitor come from?

Reads ``context.referrer`` (and ``context.page_url``, to recognise internal navigation) and
writes::

    context.referrer_info = {"host", "medium", "source", "search_term"}

* ``host``: the referrer's host name, lower-case, as written (``www.`` kept, trailing dot
  removed; an IDN host stays in Unicode). Null when the referrer cannot be parsed.
* ``medium``: ``internal`` (the page's own host, ignoring a leading ``www.``, or one of
  ``internal_hosts``), else from the referrer list: ``search``, ``social``, ``email``, ``paid``;
  else ``email`` when the referrer URL itself carries ``utm_medium=email`` (e-mail, e_mail);
  else ``unknown``.
* ``source``: the engine/network name from the list (``Google``, ``Facebook``, ``Gmail``); for
  the ``utm_medium=email`` rule the referrer's ``utm_source``; null for internal and unlisted
  hosts.
* ``search_term``: for ``search`` only, the first non-empty value of the engine's query
  parameters (``q``; ``p`` for Yahoo!, ``text`` for Yandex, ``wd`` for Baidu, ...), URL-decoded,
  trimmed and capped at ``max_term_length``. Mostly null in practice: browsers send only the
  origin of cross-site referrers (``strict-origin-when-cross-origin``). ``search_terms: false``
  never extracts it (search terms can contain personal data).

No ``referrer_info`` key when the event has no referrer (absent, null, empty, not a string).

The list
--------
``pipeline/enrichers/data/referrers.json`` (loaded when the enricher is built, not on import),
in the layout of Snowplow's referer-parser list: ``{medium: {source name: {"domains": [...],
"parameters": [...]}}}``, so an existing referer-parser file works as ``extra_referrers_file``.
Its entries override the built-in ones for the same domain. A domain matches itself and its
subdomains (``facebook.com`` matches ``l.facebook.com``; the longest listed match wins, so
``mail.google.com`` is e-mail while ``google.*`` is search); ``name.*`` matches ``name`` or
``www.name`` under any country domain (``google.de``, ``google.co.uk``, ``google.com.au``) but
not other subdomains (``docs.google.com`` is not a search engine); ``host/path`` matches only
below that path (``google.com/aclk`` is a paid click). Android app ids are hosts too
(``android-app://com.google.android.gm/`` is Gmail). Hosts are compared in their ASCII (IDNA)
form, so ``яндекс.рф`` matches ``xn--d1acpjx3f.xn--p1ai``.

Outcomes: HIT when the medium is known (internal included); MISS when it is ``unknown``,
including a referrer that cannot be parsed or is longer than ``max_url_length`` (written with
``host: null`` as the marker); SKIPPED when there is no referrer.

Cost: the classification of a referrer URL (everything but the internal check, which depends on
the page) is cached in an LRU of ``cache_size`` entries (referrers of up to 1,024 characters):
referrers repeat a lot (1,342 distinct in 9,863 generated ones). The internal check extracts the
page's host only when the page URL contains the referrer's host, and keeps it in a second LRU of
``cache_size`` page URLs (up to 1,024 characters): internal navigation is most referrers.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from pydantic import Field, field_validator

from pipeline.enrichers import EnricherContext, EnricherType, EnricherUnavailable, Outcome
from pipeline.topology.model import Strict

# Enum member access costs ~0.2 us in Python 3.11: the hot path uses these.
_HIT, _MISS, _SKIPPED = Outcome.HIT, Outcome.MISS, Outcome.SKIPPED

MEDIUMS = ("search", "social", "email", "paid", "unknown")
"""Mediums a referrer list may use (``unknown``: a named source of no particular medium)."""

_HOST_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$")
_DOMAIN_RE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*(\.\*|(/[^\s?#]*)?)$")
# Second-level labels under which country domains register names: google.co.uk, google.com.au
_COUNTRY_SLD = frozenset(
    {"co", "com", "net", "org", "ac", "edu", "gov", "gob", "ne", "or", "go", "gen", "web", "nic"}
)
_EMAIL_MEDIUMS = frozenset({"email", "e-mail", "e_mail", "e mail"})
_CONTROL = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)])


def _ascii_host(host: str) -> str:
    """The IDNA (punycode) form of a host, or the host itself when it is ASCII or not encodable."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def _strip_www(host: str) -> str:
    return host.removeprefix("www.")


def _clean(raw: str, cap: int) -> str | None:
    """URL-decode, drop control characters, trim and cap a query value; None when empty."""
    if "%" in raw or "+" in raw:
        raw = unquote_plus(raw)
    if not raw.isprintable():
        raw = raw.translate(_CONTROL)
    raw = raw.strip()
    if not raw:
        return None
    return raw[:cap].rstrip() if len(raw) > cap else raw


def _query_values(query: str, names: tuple[str, ...] | frozenset[str]) -> dict[str, str]:
    """Raw (undecoded) first values of the named parameters; names matched case-sensitively,
    then lower-cased."""
    out: dict[str, str] = {}
    for part in query.split("&"):
        eq = part.find("=")
        if eq <= 0:
            continue
        key = part[:eq]
        if key not in names:
            key = key.lower()
            if key not in names:
                continue
        if key not in out and part[eq + 1 :]:
            out[key] = part[eq + 1 :]
    return out


@dataclass(frozen=True, slots=True)
class Source:
    """One named referrer source."""

    medium: str
    name: str
    parameters: tuple[str, ...] = ()


class ReferrerList:
    """A compiled referrer list: exact hosts (with optional path prefixes) and ``name.*`` bases."""

    def __init__(self) -> None:
        self.exact: dict[str, list[tuple[str, Source]]] = {}
        """host -> [(path prefix or "", source)], longest prefix first."""
        self.wildcard: dict[str, Source] = {}
        """base name (``google``, ``mail.yahoo``) -> source, for ``name.*`` domains."""

    def __len__(self) -> int:
        return sum(len(v) for v in self.exact.values()) + len(self.wildcard)

    def add(self, data: Any, origin: str) -> None:
        """Add the entries of one parsed file; later files override earlier ones per domain.

        Raises ``ValueError`` naming the first problem (``origin`` says which file)."""
        if not isinstance(data, dict):
            raise ValueError(f"{origin}: expected a JSON object of mediums")
        exact: dict[str, dict[str, Source]] = {}
        wildcard: dict[str, Source] = {}
        seen: dict[str, str] = {}
        for medium, sources in data.items():
            if not isinstance(medium, str) or medium.startswith("_"):
                continue  # metadata such as "_about"
            if medium not in MEDIUMS:
                raise ValueError(
                    f"{origin}: unknown medium {medium!r} (known: {', '.join(MEDIUMS)})"
                )
            if not isinstance(sources, dict):
                raise ValueError(f"{origin}: {medium}: expected an object of sources")
            for name, entry in sources.items():
                where = f"{origin}: {medium}.{name}"
                if not name.strip() or len(name) > 100:
                    raise ValueError(f"{where}: a source name must be 1-100 characters")
                if not isinstance(entry, dict) or not isinstance(entry.get("domains"), list):
                    raise ValueError(f'{where}: expected {{"domains": [...]}}')
                params = entry.get("parameters", [])
                if not isinstance(params, list) or not all(
                    isinstance(p, str) and 0 < len(p) <= 64 for p in params
                ):
                    raise ValueError(f"{where}: parameters must be a list of parameter names")
                source = Source(medium, name, tuple(params))
                for domain in entry["domains"]:
                    if not isinstance(domain, str):
                        raise ValueError(f"{where}: domain {domain!r} is not a string")
                    key = domain.strip().lower()
                    if not key.isascii():
                        host, slash, path = key.partition("/")
                        key = _ascii_host(host) + slash + path
                    if not _DOMAIN_RE.match(key) or len(key) > 300:
                        raise ValueError(
                            f"{where}: {domain!r} is not a domain, name.* or host/path"
                        )
                    other = seen.get(key)
                    if other is not None and other != f"{medium}.{name}":
                        raise ValueError(f"{where}: domain {domain!r} is also listed under {other}")
                    seen[key] = f"{medium}.{name}"
                    if key.endswith(".*"):
                        wildcard[_strip_www(key[:-2])] = source
                    else:
                        host, _, path = key.partition("/")
                        exact.setdefault(host, {})["/" + path if path else ""] = source
        for host, by_path in exact.items():
            merged = dict(self.exact.get(host, ()))
            merged.update(by_path)
            self.exact[host] = sorted(merged.items(), key=lambda item: -len(item[0]))
        self.wildcard.update(wildcard)

    def lookup(self, host: str, path: str) -> Source | None:
        """The source of an ASCII lower-case ``host`` (and URL ``path``), or None."""
        exact = self.exact
        candidate = host
        while True:
            entries = exact.get(candidate)
            if entries is not None:
                for prefix, source in entries:
                    if not prefix or path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                        return source
            dot = candidate.find(".")
            if dot < 0:
                break
            candidate = candidate[dot + 1 :]
        wildcard = self.wildcard
        if wildcard:
            bare = _strip_www(host)
            labels = bare.rsplit(".", 2)
            if len(labels) == 3 and labels[1] in _COUNTRY_SLD and len(labels[2]) == 2:
                found = wildcard.get(labels[0])
                if found is not None:
                    return found
            dot = bare.rfind(".")
            if dot > 0 and 2 <= len(bare) - dot - 1 <= 3:
                return wildcard.get(bare[:dot])
        return None


def load_builtin_list() -> Any:
    """The parsed built-in list (a file read: call at build time, never at import)."""
    text = (resources.files("pipeline.enrichers") / "data" / "referrers.json").read_text("utf-8")
    return json.loads(text)


class ReferrerConfig(Strict):
    internal_hosts: list[str] = Field(default_factory=list)
    """Hosts that count as internal besides the page's own host (other domains of the same
    site, a checkout or payment provider that sends visitors back). Each matches itself and its
    subdomains: ``example.com`` covers ``shop.example.com``."""
    extra_referrers_file: str | None = None
    """A JSON file in the same layout (Snowplow referer-parser's works), relative to the
    topology file. Its entries override the built-in ones for the same domain."""
    builtin_list: bool = True
    """Use the built-in list. ``false`` with ``extra_referrers_file``: use only that file."""
    search_terms: bool = True
    """Extract ``search_term`` from search-engine referrers; false: always null."""
    max_term_length: int = Field(default=256, ge=1, le=4096)
    """Longest search term kept, in characters, after decoding."""
    max_url_length: int = Field(default=8192, ge=64, le=1_048_576)
    """Longer referrers are not parsed (MISS, ``host: null``)."""
    cache_size: int = Field(default=20_000, ge=0, le=1_000_000)
    """Classified referrer URLs kept in an LRU (0: no cache), and as many page URLs' hosts (for
    the internal check) in another. Referrers are high-cardinality (search URLs carry the
    query): the generated demo traffic has ~7,000 distinct ones per 200k events; a 20,000-entry
    LRU holds them at a few MB."""

    @field_validator("internal_hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        cleaned = []
        for host in hosts:
            key = _ascii_host(host.strip().lower().rstrip(".")).removeprefix("*.").removeprefix(".")
            if not _HOST_RE.match(key):
                raise ValueError(f"{host!r} is not a host name")
            cleaned.append(_strip_www(key))
        return cleaned


_CACHED_LENGTH = 1024
"""Referrers up to this many characters are cached (so the cache holds at most ~4 MB of keys)."""
_NO_HOST = (None, "", "unknown", None, None)
"""Classification of a referrer that cannot be parsed: host null, medium unknown."""


class ReferrerEnricher:
    def __init__(self, config: ReferrerConfig, context: EnricherContext) -> None:
        self._config = config
        referrers = ReferrerList()
        if config.builtin_list:
            try:
                referrers.add(load_builtin_list(), "built-in referrers.json")
            except (OSError, ValueError) as exc:
                raise EnricherUnavailable(
                    f"cannot load the built-in referrer list: {exc}"
                ) from None
        if config.extra_referrers_file:
            path = context.resolve(config.extra_referrers_file)
            try:
                data = json.loads(Path(path).read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise EnricherUnavailable(f"extra_referrers_file {path} does not exist") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise EnricherUnavailable(
                    f"cannot read extra_referrers_file {path}: {exc}"
                ) from None
            except ValueError as exc:
                raise EnricherUnavailable(
                    f"extra_referrers_file {path} is not JSON: {exc}"
                ) from None
            try:
                referrers.add(data, str(path))
            except ValueError as exc:
                raise EnricherUnavailable(f"bad referrer list: {exc}") from None
        if not len(referrers):
            raise EnricherUnavailable(
                "the referrer list is empty (builtin_list: false and no extra file)"
            )
        self._list = referrers
        self._internal = frozenset(config.internal_hosts)
        self._internal_suffixes = tuple("." + h for h in config.internal_hosts)
        self._max_url = config.max_url_length
        self._term_cap = config.max_term_length
        self._terms = config.search_terms
        self._classify = (
            functools.lru_cache(maxsize=config.cache_size)(self._classify_uncached)
            if config.cache_size
            else self._classify_uncached
        )
        self._page_host = (
            functools.lru_cache(maxsize=config.cache_size)(_page_host)
            if config.cache_size
            else _page_host
        )

    def _classify_uncached(
        self, referrer: str
    ) -> tuple[str | None, str, str, str | None, str | None]:
        """(host, bare ASCII host, medium, source, search term) of one referrer URL."""
        if len(referrer) > self._max_url:
            return _NO_HOST
        try:
            parts = urlsplit(referrer)
            host = parts.hostname
        except ValueError:
            return _NO_HOST
        if not host:
            return _NO_HOST
        host = host.rstrip(".")
        if not host:
            return _NO_HOST
        match = _ascii_host(host)
        bare = _strip_www(match)
        found = self._list.lookup(match, parts.path)
        if found is not None:
            term = None
            if found.medium == "search" and self._terms and found.parameters and parts.query:
                values = _query_values(parts.query, found.parameters)
                for name in found.parameters:
                    raw = values.get(name)
                    if raw is not None:
                        term = _clean(raw, self._term_cap)
                        if term is not None:
                            break
            return (host, bare, found.medium, found.name, term)
        if parts.query and "utm_" in parts.query.lower():
            values = _query_values(parts.query, ("utm_medium", "utm_source"))
            medium = _clean(values.get("utm_medium", ""), 64)
            if medium is not None and medium.lower() in _EMAIL_MEDIUMS:
                return (host, bare, "email", _clean(values.get("utm_source", ""), 256), None)
        return (host, bare, "unknown", None, None)

    def _is_internal(self, bare: str, context: dict[str, Any]) -> bool:
        if bare in self._internal or (
            self._internal_suffixes and bare.endswith(self._internal_suffixes)
        ):
            return True
        page = context.get("page_url")
        if type(page) is not str or len(page) > self._max_url:
            return False
        # Cheap test first: an ASCII page URL whose host is ``bare`` contains it, in lower case.
        if page.isascii() and bare not in page and bare not in page.lower():
            return False
        if len(page) > _CACHED_LENGTH:  # as keys, long URLs would hold memory
            return _page_host(page) == bare
        return self._page_host(page) == bare

    def enrich(self, event: dict[str, Any]) -> Outcome:
        context = event.get("context")
        if type(context) is not dict:
            return _SKIPPED
        referrer = context.get("referrer")
        if type(referrer) is not str or not referrer:
            return _SKIPPED
        # Long referrers bypass the cache: they are rare, and as keys they would hold memory.
        classify = self._classify if len(referrer) <= _CACHED_LENGTH else self._classify_uncached
        host, bare, medium, source, term = classify(referrer)
        if host is not None and self._is_internal(bare, context):
            medium, source, term = "internal", None, None
        context["referrer_info"] = {
            "host": host,
            "medium": medium,
            "source": source,
            "search_term": term,
        }
        return _MISS if medium == "unknown" else _HIT

    def status(self) -> str:
        return "enabled"

    def close(self) -> None:
        for cache in (self._classify, self._page_host):
            clear = getattr(cache, "cache_clear", None)
            if clear is not None:
                clear()

    def __repr__(self) -> str:
        return f"<ReferrerEnricher {len(self._list)} domains, cache_size={self._config.cache_size}>"


_PAGE_HOST_RE = re.compile(
    r"(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//(?:[^@/?#]*@)?(\[[^\]/?#]*\]|[^:/?#]*)"
)


def _page_host(url: str) -> str | None:
    """The bare ASCII host of a page URL (no ``www.``): one regex, as this runs on most events."""
    match = _PAGE_HOST_RE.match(url)
    if match is None:
        return None
    host = match.group(1).lower().rstrip(".")
    if host.startswith("["):
        return host[1:-1] or None
    if not host:
        return None
    return _strip_www(_ascii_host(host))


ENRICHER = EnricherType(
    name="referrer",
    config_model=ReferrerConfig,
    build=ReferrerEnricher,
    description="Classifies context.referrer (search, social, email, internal, paid)"
    " -> context.referrer_info",
)
