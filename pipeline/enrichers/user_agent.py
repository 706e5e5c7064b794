"""User-agent parsing: browser, operating system and device of the event's user agent.

Reads ``context.user_agent`` and writes::

    context.device = {"browser_family", "browser_version", "os_family", "os_version",
                      "device_family", "device_brand", "device_model",
                      "device_type": "mobile" | "tablet" | "desktop" | "bot" | "other",
                      "is_bot": bool}

The answers are those of the ``user-agents`` library (``user_agents.parse``, uap-core's
regexes), exactly: families as it names them (``Chrome Mobile``, ``Mac OS X``, ``Other`` when
unknown); versions as its ``version_string`` (numeric parts as integers, so ``08`` is ``8``; at
most three parts), null instead of an empty string; ``device_type`` from its flags, the first
that holds of ``is_bot`` -> ``bot``, ``is_tablet`` -> ``tablet``, ``is_mobile`` -> ``mobile``,
``is_pc`` -> ``desktop``, else ``other``; ``is_bot`` is its ``is_bot`` (uap-core's ``Spider``
device). The test suite checks this against ``user_agents.parse`` on every case of uap-core's
test corpus.

How it is fast and still exact: ``user_agents.parse`` runs ua-parser's legacy pure-Python
parser, which tries uap-core's ~1,270 regular expressions one by one until one matches (0.3-2 ms
per new string). When ``ua-parser-rs`` is installed (the ``ua-parser[regex]`` extra), its
prefiltered Rust matcher finds, per domain (browser, OS, device), the first rule that can match,
and Python's ``re`` then runs only that rule with the legacy code (its ``Parse``), so the values
are the legacy ones by construction (10-20x faster per new string; see :class:`RuleFinder`).
ua-parser-rs is not used for the values themselves (``ua_parser.parse``): it widens uap-core's
bounded repetitions (``.{0,100}`` -> ``.*``) and on uap-core's corpus differs in 6 of the 18,411
agents (bot words past the 100th character: a ``Spider`` device there, ``Other`` here).
Without ua-parser-rs (or for agents that are not printable ASCII) ``user_agents.parse`` itself
runs. The test suite holds the fast path to ``user_agents.parse`` on all of uap-core's corpus
and on agents built to differ.

Outcomes: HIT when anything was recognised; MISS when browser, OS and device are all ``Other``
(the device is still written); SKIPPED when there is no user agent (absent, null, empty or not
a string): then no ``device`` key is written.

Cost: a new string costs 50-100 µs with ua-parser-rs (0.3-2 ms without), and real traffic
repeats a few thousand agents, so results are cached per string in an LRU of ``cache_size``
entries; a hit costs a dict copy. Agents longer than ``max_length`` are cut before parsing (the
cut string is also the cache key): uap-core's regexes take ~3 s on 100 KB of text in Python,
linearly more beyond.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field

from pipeline.enrichers import EnricherContext, EnricherType, EnricherUnavailable, Outcome
from pipeline.enrichers._paths import DottedPath, getter, setter
from pipeline.topology.model import Strict

log = logging.getLogger(__name__)

# Enum member access costs ~0.2 us in Python 3.11: the hot path uses these.
_HIT, _MISS, _SKIPPED = Outcome.HIT, Outcome.MISS, Outcome.SKIPPED

DEVICE_KEYS = (
    "browser_family",
    "browser_version",
    "os_family",
    "os_version",
    "device_family",
    "device_brand",
    "device_model",
    "device_type",
    "is_bot",
)
"""The keys of ``context.device``, in order."""


def device_type(ua: Any) -> str:
    """``bot``, ``tablet``, ``mobile``, ``desktop`` or ``other`` of a ``user_agents.UserAgent``."""
    if ua.is_bot:
        return "bot"
    if ua.is_tablet:
        return "tablet"
    if ua.is_mobile:
        return "mobile"
    if ua.is_pc:
        return "desktop"
    return "other"


def describe(ua: Any) -> dict[str, Any]:
    """The ``context.device`` object of a parsed ``user_agents.UserAgent``."""
    return {
        "browser_family": ua.browser.family,
        "browser_version": ua.browser.version_string or None,
        "os_family": ua.os.family,
        "os_version": ua.os.version_string or None,
        "device_family": ua.device.family,
        "device_brand": ua.device.brand,
        "device_model": ua.device.model,
        "device_type": device_type(ua),
        "is_bot": bool(ua.is_bot),
    }


_SAME_ESCAPES = frozenset("dDwWsSbB")
"""Letter escapes that match the same characters in both engines on printable ASCII text."""


def rust_reads_alike(pattern: str) -> bool:
    """Whether ua-parser-rs's engine matches ``pattern`` wherever Python's ``re`` does, on
    printable-ASCII text. Conservative: False for any construct this check does not follow.

    ua-parser-rs rewrites a pattern before compiling it only in ways that match *more*: bounded
    repetitions of 100 or more (``x{0,100}``, ``x{1,300}``) become ``x*`` / ``x+``, and ``\\d``
    / ``\\w`` become their ASCII classes (the same on ASCII text). What remains to rule out is
    what Rust's ``regex`` reads differently from Python's ``re``: non-ASCII text (case folding,
    Unicode classes), ``(?...)`` groups other than ``(?:`` (look-arounds, flags), escapes such
    as back-references, ``{,n}``, and ``[``, ``&&``, ``--``, ``~~`` inside a class (nested
    classes and set operations in Rust, literal characters in Python).
    """
    if not pattern.isascii() or "{," in pattern:
        return False
    in_class = False
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            escaped = pattern[i + 1 : i + 2]
            if escaped.isalnum() and escaped not in _SAME_ESCAPES:
                return False
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            elif c == "[" or pattern.startswith(("&&", "--", "~~"), i):
                return False
        elif c == "[":
            in_class = True
            i += 1
            if pattern.startswith("^", i):
                i += 1
            if pattern.startswith("]", i):  # a literal "]" first in a class (in both engines)
                i += 1
            continue
        elif pattern.startswith("(?", i) and not pattern.startswith("(?:", i):
            return False
        i += 1
    return True


class RuleFinder:
    """``user_agents.parse(ua)``, exactly, with ua-parser-rs finding the rules that apply.

    The legacy parser (``ua_parser.user_agent_parser``, what ``user_agents`` calls) answers each
    domain with the first rule of its list whose ``Parse`` gives a non-empty family (else the
    last rule's values, usually none). Here one ua-parser-rs extractor per domain is built from
    the very same rule list, with each rule's index as its "family", so ``extract`` returns the
    index of the first rule the Rust engine matches. Then the legacy rules themselves run in
    Python from that index on: normally the first one answers, exactly as in the full scan.

    No rule before that index can answer in Python: on printable-ASCII agents, Rust matches
    every rule wherever Python does (:func:`rust_reads_alike`; a rule that check cannot vouch
    for is given to Rust as the empty pattern, which matches everything, so Python decides it).
    Agents with other characters (where Python's ``\\d`` and ``\\s`` are wider, and ``$``
    also matches before a final newline) go to ``user_agents.parse`` itself.
    """

    def __init__(self) -> None:
        import ua_parser_rs  # ImportError: not installed (the caller falls back)
        from ua_parser import user_agent_parser as legacy
        from user_agents.parsers import (
            UserAgent,
            parse_browser,
            parse_device,
            parse_operating_system,
        )

        self._browsers: Sequence[Any] = legacy.USER_AGENT_PARSERS
        self._systems: Sequence[Any] = legacy.OS_PARSERS
        self._devices: Sequence[Any] = legacy.DEVICE_PARSERS
        self.python_decides = 0
        """Rules given to Rust as the empty pattern (none of uap-core's, today)."""
        self._find_browser = ua_parser_rs.UserAgentExtractor(
            (self._pattern(r), str(i), None, None, None, None) for i, r in enumerate(self._browsers)
        ).extract
        self._find_os = ua_parser_rs.OSExtractor(
            (self._pattern(r), str(i), None, None, None, None) for i, r in enumerate(self._systems)
        ).extract
        self._find_device = ua_parser_rs.DeviceExtractor(
            (
                self._pattern(r),
                "i" if r.user_agent_re.flags & re.IGNORECASE else None,
                str(i),
                None,
                None,
            )
            for i, r in enumerate(self._devices)
        ).extract
        self._user_agent_class = UserAgent
        self._browser = parse_browser
        self._os = parse_operating_system
        self._device = parse_device
        self._fallback = legacy_parse()

    def _pattern(self, rule: Any) -> str:
        pattern: str = rule.user_agent_re.pattern
        if rust_reads_alike(pattern):
            return pattern
        self.python_decides += 1
        return ""

    @staticmethod
    def _first(found: Any, rules: Sequence[Any], ua: str, none: tuple[None, ...]) -> Any:
        """What the legacy loop over ``rules`` ends with, given Rust's first match ``found``."""
        if found is None:
            return none  # no rule matches: the last rule's Parse gives nothing either
        result: Any = none
        for i in range(int(found.family), len(rules)):
            result = rules[i].Parse(ua)
            if result[0]:
                break
        return result

    def __call__(self, ua: str) -> Any:
        if not (ua.isascii() and ua.isprintable()):
            return self._fallback(ua)
        first = self._first
        family, v1, v2, v3 = first(self._find_browser(ua), self._browsers, ua, (None,) * 4)
        os, os_v1, os_v2, os_v3, os_v4 = first(self._find_os(ua), self._systems, ua, (None,) * 5)
        device, brand, model = first(self._find_device(ua), self._devices, ua, (None,) * 3)
        # What user_agents.UserAgent.__init__ does with user_agent_parser.Parse's dict (whose
        # _ParseUserAgent, _ParseOS and _ParseDevice normalise the values like this).
        parsed = self._user_agent_class.__new__(self._user_agent_class)
        parsed.ua_string = ua
        parsed.os = self._os(os or "Other", os_v1, os_v2, os_v3, os_v4)
        parsed.browser = self._browser(family or "Other", v1 or None, v2 or None, v3 or None)
        parsed.device = self._device("Other" if device is None else device, brand, model)
        return parsed


def legacy_parse() -> Callable[[str], Any]:
    """``user_agents.parse`` (raises ``EnricherUnavailable`` when user-agents is missing)."""
    try:
        # Imported here, not at module import: it compiles ~1,300 regular expressions.
        import user_agents
    except ImportError as exc:
        raise EnricherUnavailable(
            f"the user-agents package is not installed ({exc}): pip install user-agents"
        ) from None
    return user_agents.parse


@functools.cache
def shared_rule_finder() -> RuleFinder:
    """One :class:`RuleFinder` per process (it holds no state; building one takes ~0.3 s).
    Raises when it cannot be built (not cached then)."""
    return RuleFinder()


def best_parser() -> tuple[Callable[[str], Any], str]:
    """(a parser giving ``user_agents.parse``'s answers, its name for ``repr``)."""
    fallback = legacy_parse()
    try:
        return shared_rule_finder(), "ua-parser-rs"
    except ImportError:
        log.warning(
            "user_agent: ua-parser-rs is not installed, so new user agents cost 0.3-2 ms "
            "instead of ~0.1 ms (same answers): pip install ua-parser-rs"
        )
    except Exception as exc:  # noqa: BLE001 - any surprise in an optional accelerator: do without
        log.warning(
            "user_agent: ua-parser-rs cannot be used (%s: %s); parsing with user-agents alone",
            type(exc).__name__,
            exc,
        )
    return fallback, "user-agents"


class UserAgentConfig(Strict):
    cache_size: int = Field(default=10_000, ge=0, le=1_000_000)
    """Parsed user agents kept in an LRU (0: no cache; every event pays a full parse)."""
    max_length: int = Field(default=1024, ge=16, le=65_536)
    """Longer user agents are cut to this many characters before parsing (and as the cache key).
    Real ones are under 500 characters."""
    source_field: DottedPath = "context.user_agent"
    """The user agent string."""
    target_field: DottedPath = "context.device"
    """Where the result is written."""


class UserAgentEnricher:
    def __init__(self, config: UserAgentConfig, context: EnricherContext) -> None:
        self._config = config
        self._parse_ua, self._parser_name = best_parser()
        self._max = config.max_length
        self._get = getter(config.source_field)
        self._put = setter(config.target_field)
        source, target = config.source_field.split("."), config.target_field.split(".")
        # The usual layout (context.user_agent -> context.device) skips the path helpers.
        self._shared_parent = (
            (source[0], source[1], target[1])
            if len(source) == len(target) == 2 and source[0] == target[0]
            else None
        )
        self._lookup: Callable[[str], tuple[dict[str, Any], bool]] = (
            functools.lru_cache(maxsize=config.cache_size)(self._parse)
            if config.cache_size
            else self._parse
        )

    def _parse(self, ua: str) -> tuple[dict[str, Any], bool]:
        """(the device object, whether anything was recognised). Cached: never handed out
        as is (each event gets a copy)."""
        device = describe(self._parse_ua(ua))
        recognised = not (
            device["browser_family"] == "Other"
            and device["os_family"] == "Other"
            and device["device_family"] == "Other"
        )
        return device, recognised

    def enrich(self, event: dict[str, Any]) -> Outcome:
        shared = self._shared_parent
        if shared is not None:
            parent_key, source_key, target_key = shared
            parent = event.get(parent_key)
            if type(parent) is not dict:
                return _SKIPPED
            ua = parent.get(source_key)
            if type(ua) is not str or not ua:
                return _SKIPPED
            if len(ua) > self._max:
                ua = ua[: self._max]
            device, recognised = self._lookup(ua)
            parent[target_key] = device.copy()
            return _HIT if recognised else _MISS
        ua = self._get(event)
        if type(ua) is not str or not ua:
            return _SKIPPED
        if len(ua) > self._max:
            ua = ua[: self._max]
        device, recognised = self._lookup(ua)
        self._put(event, device.copy())
        return _HIT if recognised else _MISS

    def cache_info(self) -> Any:
        """``functools`` cache statistics (hits, misses, currsize), or None without a cache."""
        info = getattr(self._lookup, "cache_info", None)
        return info() if info is not None else None

    def status(self) -> str:
        return "enabled"

    def close(self) -> None:
        clear = getattr(self._lookup, "cache_clear", None)
        if clear is not None:
            clear()

    def __repr__(self) -> str:
        return (
            f"<UserAgentEnricher cache_size={self._config.cache_size} max_length={self._max} "
            f"parser={self._parser_name}>"
        )


ENRICHER = EnricherType(
    name="user_agent",
    config_model=UserAgentConfig,
    build=UserAgentEnricher,
    description="Parses context.user_agent: browser, OS, device and its type -> context.device",
)
