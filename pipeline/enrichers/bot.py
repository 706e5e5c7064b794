"""Bot and crawler detection: is this event from a person's browser or from a robot?

Writes::

    context.bot = {"is_bot": bool, "name": str | null,
                   "reason": "user_agent" | "crawler_list" | null}

Two signals, tried in order:

1. ``user_agent``: the ``user_agent`` enricher ran earlier in the topology and classified the
   agent as a bot (``context.device.is_bot``, i.e. uap-core's ``Spider`` device). ``name`` is the
   browser family it found (``Googlebot``, ``PingdomBot``), or ``Spider``.
2. ``crawler_list``: the user agent matches a pattern of the crawler list. ``name`` is the
   list entry's name (``Googlebot``, ``AhrefsBot``, ``python-requests``). The built-in list is
   ``pipeline/enrichers/data/crawlers.json``, the project's own copy of the MIT-licensed
   crawler-user-agents list (its header names the source commit and carries the licence),
   regenerated with ``scripts/update_crawler_list.py``. ``patterns_file`` replaces it with
   another file, in that layout or in crawler-user-agents' own (a JSON array of
   ``{"pattern": ...}``); ``extra_patterns`` adds regular expressions of your own (tried first).

Patterns are Python regular expressions, case-sensitive, searched anywhere in the user agent
(as crawler-user-agents intends). The first matching entry in list order names the bot.

Outcomes: HIT when the event is from a bot (``action: flag``, the default: the event is kept
and marked; route it with ``where: [{field: context.bot.is_bot, op: eq, value: true}]``);
DROP for a bot with ``action: drop`` (counted by the stage, never silent); MISS when it is not
a bot (``is_bot: false``); SKIPPED when the event has no user agent (absent, null, empty or
not a string): no ``bot`` key then, as with ``context.device``.

Cost: matching ~1,500 regular expressions one by one costs 0.2-0.5 ms per user agent, so
each pattern is indexed by a three-character piece of a literal it cannot match without
(``Googlebot\\/`` by a piece of ``Googlebot/``). Per user agent only the patterns whose piece
occurs in it are tried (usually none for a browser), in list order, so the answer is the same
as trying every pattern. Verdicts are cached per user agent string in an LRU of
``cache_size`` entries: real traffic repeats a few thousand agents.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from pipeline.enrichers import EnricherContext, EnricherType, EnricherUnavailable, Outcome
from pipeline.enrichers._paths import DottedPath, getter, setter
from pipeline.topology.model import Strict

BUILTIN_LIST = "crawlers.json"
"""The built-in crawler list, in ``pipeline/enrichers/data``."""

# Enum member access costs ~0.2 us in Python 3.11: the hot path uses these.
_HIT, _MISS, _SKIPPED, _DROP = Outcome.HIT, Outcome.MISS, Outcome.SKIPPED, Outcome.DROP

_GRAM = 3
# Typical browser user agents: an index piece that occurs in them would send every browser
# through that pattern's regular expression, so pieces are chosen to be rare here.
_COMMON_TEXT = " ".join(
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/18.1 Safari/605.1.15",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36 OPR/114.0.0.0",
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
    )
)
# Escapes that stand for one character class or position (anything else alphanumeric after a
# backslash, such as \x41 or a back-reference, makes the pattern "always try").
_CLASS_ESCAPES = frozenset("dDsSwWbBAZ")
_REPEAT_RE = re.compile(r"\{\d*(,\d*)?\}")
_NAME_STRIP = " \t/\\;:,()+[]{}<>\"'=_-.~*"


# --------------------------------------------------------------------------------------------
# Literal pieces of a pattern (the prefilter)
# --------------------------------------------------------------------------------------------


def _skip_class(pattern: str, i: int) -> int:
    """Index just past the character class starting at ``pattern[i] == '['``."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


def _top_level_alternatives(pattern: str) -> list[str]:
    """``a|b(c|d)`` -> ``["a", "b(c|d)"]``: split at ``|`` outside groups and classes."""
    alternatives: list[str] = []
    start = depth = i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = _skip_class(pattern, i)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            alternatives.append(pattern[start:i])
            start = i + 1
        i += 1
    alternatives.append(pattern[start:])
    return alternatives


def _literal_runs(alternative: str) -> list[str] | None:
    """The runs of literal characters that every match of ``alternative`` contains, or None
    when the alternative uses a construct this reader does not follow (then: always try it).

    Sound by construction: only characters at the top level of the sequence, not inside a
    group or class, and not under a quantifier (a quantified character ends the run before it).
    """
    runs: list[str] = []
    run: list[str] = []
    depth = 0
    i = 0
    n = len(alternative)

    def end_run() -> None:
        if run:
            runs.append("".join(run))
            run.clear()

    while i < n:
        c = alternative[i]
        if c == "\\":
            if i + 1 >= n:
                return None
            nxt = alternative[i + 1]
            if nxt.isalnum():
                if nxt not in _CLASS_ESCAPES:
                    return None  # \x41, \u00e9, \1, \N{...}: not followed here
                if depth == 0:
                    end_run()
            elif depth == 0:
                run.append(nxt)
            i += 2
            continue
        if c == "[":
            if depth == 0:
                end_run()
            i = _skip_class(alternative, i)
            continue
        if c == "(":
            if alternative.startswith("(?", i):
                return None  # inline flags, look-arounds, named groups: not followed here
            depth += 1
            end_run()
        elif c == ")":
            depth -= 1
            if depth < 0:
                return None
        elif c in "?*+{":
            repeat = _REPEAT_RE.match(alternative, i) if c == "{" else None
            if c != "{" or repeat is not None:
                if depth == 0 and run:
                    run.pop()  # the quantified character is optional or repeated
            end_run()  # (a "{" that starts no quantifier is literal: simply not indexed)
            if repeat is not None:
                i = repeat.end()
                continue
        elif c in ".^$":
            if depth == 0:
                end_run()
        elif depth == 0:
            run.append(c)
        i += 1
    end_run()
    return runs


def index_pieces(pattern: str) -> list[str] | None:
    """One ``_GRAM``-character piece per top-level alternative of ``pattern`` such that every
    match of that alternative contains it, or None when there is no such set of pieces (the
    pattern is then tried on every user agent). Pieces rare in browser user agents win."""
    pieces: list[str] = []
    for alternative in _top_level_alternatives(pattern):
        runs = _literal_runs(alternative)
        if not runs:
            return None
        best: tuple[tuple[int, int], str] | None = None
        for run in runs:
            for i in range(len(run) - _GRAM + 1):
                piece = run[i : i + _GRAM]
                score = (_COMMON_TEXT.count(piece), -len(run))
                if best is None or score < best[0]:
                    best = (score, piece)
        if best is None:
            return None  # only runs shorter than a piece
        pieces.append(best[1])
    return pieces


def crawler_name(pattern: str, instances: Iterable[str] = ()) -> str:
    """A readable name for a crawler pattern: the text it matches in an example user agent
    (``Googlebot\\/`` -> ``Googlebot``, ``[wW]get`` -> ``Wget``), else its first literal run
    of three or more characters, else the pattern itself."""
    try:
        compiled = re.compile(pattern)
    except re.error:
        return pattern
    for instance in instances:
        found = compiled.search(instance)
        if found:
            text = found.group(0).strip(_NAME_STRIP)
            if 2 <= len(text) <= 40 and any(ch.isalpha() for ch in text):
                return text
    for alternative in _top_level_alternatives(pattern):
        for run in _literal_runs(alternative) or ():
            text = run.strip(_NAME_STRIP)
            if len(text) >= 3:
                return text
    return pattern


# --------------------------------------------------------------------------------------------
# The compiled list
# --------------------------------------------------------------------------------------------


class CrawlerMatcher:
    """Crawler patterns compiled for fast search: ``match(ua)`` gives the name of the first
    entry (in list order) whose pattern is found in ``ua``, or None."""

    def __init__(self, entries: Sequence[tuple[str, str]]) -> None:
        """``entries``: (name, pattern) pairs in priority order. Raises ``ValueError`` naming
        the first pattern that is not a valid regular expression."""
        self.names: list[str] = []
        self._searches: list[Callable[[str], Any]] = []
        index: dict[str, list[int]] = {}
        always: list[int] = []
        for position, (name, pattern) in enumerate(entries):
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"pattern {pattern!r} ({name}) is not a valid regular expression: {exc}"
                ) from None
            self.names.append(name)
            self._searches.append(compiled.search)
            pieces = index_pieces(pattern)
            if pieces is None:
                always.append(position)
            else:
                for piece in dict.fromkeys(pieces):
                    index.setdefault(piece, []).append(position)
        self._index = index
        self._pieces = index.keys()
        self._always = frozenset(always)
        self.always_tried = len(always)
        """Patterns without an index piece, tried on every user agent."""

    def __len__(self) -> int:
        return len(self.names)

    def match(self, ua: str) -> str | None:
        present = {ua[i : i + _GRAM] for i in range(len(ua) - _GRAM + 1)} & self._pieces
        if not present and not self._always:
            return None
        index = self._index
        candidates = set(self._always)
        for piece in present:
            candidates.update(index[piece])
        searches = self._searches
        for position in sorted(candidates):
            if searches[position](ua):
                return self.names[position]
        return None

    def match_naive(self, ua: str) -> str | None:
        """The same answer by trying every pattern in order (for tests and benchmarks)."""
        for position, search in enumerate(self._searches):
            if search(ua):
                return self.names[position]
        return None


def parse_crawler_list(data: Any, origin: str) -> list[tuple[str, str]]:
    """(name, pattern) pairs from a parsed crawler list: this project's layout
    (``{"crawlers": [{"name", "pattern", ...}], ...header}``) or crawler-user-agents' (a JSON
    array of ``{"pattern", "instances", ...}``). Raises ``ValueError`` naming the first problem."""
    if isinstance(data, dict):
        items = data.get("crawlers")
        if not isinstance(items, list):
            raise ValueError(f'{origin}: expected a "crawlers" array')
    elif isinstance(data, list):
        items = data
    else:
        raise ValueError(f'{origin}: expected a JSON object with "crawlers" or an array')
    entries: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{origin}: crawlers[{i}] is not an object")
        pattern = item.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f'{origin}: crawlers[{i}] has no "pattern" string')
        name = item.get("name")
        if name is None:
            instances = item.get("instances")
            examples = (
                [s for s in instances if isinstance(s, str)] if isinstance(instances, list) else []
            )
            name = crawler_name(pattern, examples)
        elif not isinstance(name, str) or not name.strip():
            raise ValueError(f"{origin}: crawlers[{i}].name must be a non-empty string")
        entries.append((name, pattern))
    if not entries:
        raise ValueError(f"{origin}: the crawler list is empty")
    return entries


def load_builtin_list() -> Any:
    """The parsed built-in list (a file read: call at build time, never at import)."""
    text = (resources.files("pipeline.enrichers") / "data" / BUILTIN_LIST).read_text("utf-8")
    return json.loads(text)


# --------------------------------------------------------------------------------------------
# The enricher
# --------------------------------------------------------------------------------------------


class BotConfig(Strict):
    action: Literal["flag", "drop"] = "flag"
    """``flag``: mark the event (``context.bot``) and keep it, for a route rule to send bots
    elsewhere; ``drop``: drop events from bots (counted as ``drop`` by the stage)."""
    patterns_file: str | None = None
    """A crawler list (JSON) to use instead of the built-in one, relative to the topology
    file: this project's layout (``{"crawlers": [{"name", "pattern"}]}``) or
    crawler-user-agents' ``crawler-user-agents.json``."""
    extra_patterns: list[Annotated[str, Field(min_length=1, max_length=1000)]] = Field(
        default_factory=list, max_length=1000
    )
    """More regular expressions (Python syntax, case-sensitive), tried before the list; the
    pattern itself is the bot's ``name``. E.g. your own uptime checker's user agent."""
    device_field: DottedPath | None = "context.device"
    """Where the ``user_agent`` enricher wrote its result; its ``is_bot`` marks a bot
    (reason ``user_agent``). Null: use the crawler list only."""
    source_field: DottedPath = "context.user_agent"
    """The user agent string."""
    target_field: DottedPath = "context.bot"
    """Where the verdict is written."""
    cache_size: int = Field(default=10_000, ge=0, le=1_000_000)
    """Verdicts kept per user agent string in an LRU (0: no cache)."""
    max_length: int = Field(default=1024, ge=16, le=65_536)
    """Longer user agents are cut to this many characters before matching (and as the cache
    key), so an absurd 1 MB header cannot cost seconds."""

    @field_validator("extra_patterns")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
        return patterns


class BotEnricher:
    def __init__(self, config: BotConfig, context: EnricherContext) -> None:
        self._config = config
        if config.patterns_file:
            path = context.resolve(config.patterns_file)
            try:
                data = json.loads(Path(path).read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise EnricherUnavailable(f"patterns_file {path} does not exist") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise EnricherUnavailable(f"cannot read patterns_file {path}: {exc}") from None
            except ValueError as exc:
                raise EnricherUnavailable(f"patterns_file {path} is not JSON: {exc}") from None
            origin = str(path)
        else:
            try:
                data = load_builtin_list()
            except (OSError, ValueError) as exc:
                raise EnricherUnavailable(f"cannot load the built-in crawler list: {exc}") from None
            origin = f"built-in {BUILTIN_LIST}"
        try:
            entries = [(pattern, pattern) for pattern in config.extra_patterns]
            entries += parse_crawler_list(data, origin)
            self._matcher = CrawlerMatcher(entries)
        except ValueError as exc:
            raise EnricherUnavailable(f"bad crawler list: {exc}") from None
        self._origin = origin
        self._drop = config.action == "drop"
        self._max = config.max_length
        self._get_ua = getter(config.source_field)
        self._get_device = getter(config.device_field) if config.device_field else None
        self._put = setter(config.target_field)
        # The usual layout (context.user_agent, context.device -> context.bot) skips the helpers:
        # (parent, user agent key, device key or None, target key).
        self._shared_parent: tuple[str, str, str | None, str] | None = None
        source = config.source_field.split(".")
        target = config.target_field.split(".")
        device = config.device_field.split(".") if config.device_field else None
        if (
            len(source) == len(target) == 2
            and source[0] == target[0]
            and (device is None or (len(device) == 2 and device[0] == source[0]))
        ):
            device_key = device[1] if device is not None else None
            self._shared_parent = (source[0], source[1], device_key, target[1])
        match = self._matcher.match
        self._lookup: Callable[[str], str | None] = (
            functools.lru_cache(maxsize=config.cache_size)(match) if config.cache_size else match
        )

    def enrich(self, event: dict[str, Any]) -> Outcome:
        shared = self._shared_parent
        parent: Any = None
        if shared is not None:
            parent_key, ua_key, device_key, target_key = shared
            parent = event.get(parent_key)
            if type(parent) is not dict:
                return _SKIPPED
            ua = parent.get(ua_key)
            if type(ua) is not str or not ua:
                return _SKIPPED
            device = parent.get(device_key) if device_key is not None else None
        else:
            ua = self._get_ua(event)
            if type(ua) is not str or not ua:
                return _SKIPPED
            device = self._get_device(event) if self._get_device is not None else None
        if type(device) is dict and device.get("is_bot") is True:
            if self._drop:
                return _DROP
            name = device.get("browser_family")
            verdict = {
                "is_bot": True,
                "name": name if type(name) is str and name != "Other" else "Spider",
                "reason": "user_agent",
            }
            outcome = _HIT
        else:
            if len(ua) > self._max:
                ua = ua[: self._max]
            name = self._lookup(ua)
            if name is None:
                verdict = {"is_bot": False, "name": None, "reason": None}
                outcome = _MISS
            elif self._drop:
                return _DROP
            else:
                verdict = {"is_bot": True, "name": name, "reason": "crawler_list"}
                outcome = _HIT
        if shared is not None:
            parent[target_key] = verdict
        else:
            self._put(event, verdict)
        return outcome

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
            f"<BotEnricher {len(self._matcher)} patterns from {self._origin}, "
            f"action={self._config.action}, cache_size={self._config.cache_size}>"
        )


ENRICHER = EnricherType(
    name="bot",
    config_model=BotConfig,
    build=BotEnricher,
    description="Flags (or drops) bots: context.device.is_bot or the crawler list -> context.bot",
)
