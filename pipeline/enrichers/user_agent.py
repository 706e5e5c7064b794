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

Why not ua-parser 1.x with ua-parser-rs on misses (16-30x faster): on uap-core's corpus it
differs from ``user_agents`` in 6 of 18,213 cases. uap-core's bot rule
``^.{0,100}(bot|...|crawler|...)`` is bounded to the first 100 characters in Python's ``re``,
but the Rust engine also matches a bot word further on, so those six agents are ``Spider``
devices there and ``Other`` here.

Outcomes: HIT when anything was recognised; MISS when browser, OS and device are all ``Other``
(the device is still written); SKIPPED when there is no user agent (absent, null, empty or not
a string): then no ``device`` key is written.

Cost: ``user_agents.parse`` takes 0.3-2 ms per new string, but real traffic repeats a few
thousand agents, so results are cached per string in an LRU of ``cache_size`` entries; a hit
costs a dict copy. Agents longer than ``max_length`` are cut before parsing (the cut string is
also the cache key): uap-core's regexes take ~3 s on 100 KB of text, linearly more beyond.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from pydantic import Field

from pipeline.enrichers import EnricherContext, EnricherType, EnricherUnavailable, Outcome
from pipeline.enrichers._paths import DottedPath, getter, setter
from pipeline.topology.model import Strict

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
        try:
            # Imported here, not at module import: it compiles ~1,300 regular expressions.
            import user_agents
        except ImportError as exc:
            raise EnricherUnavailable(
                f"the user-agents package is not installed ({exc}): pip install user-agents"
            ) from None
        self._parse_ua = user_agents.parse
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
        parent: Any = None
        if shared is not None:
            parent = event.get(shared[0])
            if type(parent) is not dict:
                return _SKIPPED
            ua = parent.get(shared[1])
        else:
            ua = self._get(event)
        if type(ua) is not str or not ua:
            return _SKIPPED
        if len(ua) > self._max:
            ua = ua[: self._max]
        device, recognised = self._lookup(ua)
        if shared is not None:
            parent[shared[2]] = device.copy()
        else:
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
        return f"<UserAgentEnricher cache_size={self._config.cache_size} max_length={self._max}>"


ENRICHER = EnricherType(
    name="user_agent",
    config_model=UserAgentConfig,
    build=UserAgentEnricher,
    description="Parses context.user_agent: browser, OS, device and its type -> context.device",
)
