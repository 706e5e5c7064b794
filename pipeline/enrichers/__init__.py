"""Enrichers: one module each, found by name (``enricher: geoip`` is ``pipeline.enrichers.geoip``).

Each module defines ``ENRICHER = EnricherType(...)``: a typed config (unknown keys refused) and a
``build(config, context)`` function returning an object with ``enrich(event) -> Outcome``. The
``enrich`` stage (``pipeline/stages/enrich.py``) runs one enricher per stage, so which enrichers
run, with what config and in what order lives in the topology. Adding an enricher means adding its
module and its test file, and a line in a topology: nothing else is edited.

Enrichers work on plain dicts (validated events) and never import Faust.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from pydantic import BaseModel

from pipeline.errors import PipelineError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class Outcome(StrEnum):
    """What an enricher did with one event (a metric label: keep the set small and fixed)."""

    HIT = "hit"
    """Enriched."""
    MISS = "miss"
    """Looked, found nothing (e.g. an IP not in the database)."""
    SKIPPED = "skipped"
    """Nothing to do for this event (no user agent, private IP, enricher disabled, ...)."""
    DROP = "drop"
    """The event is to be dropped (e.g. a bot, when configured so). Counted, never silent."""


class Enricher(Protocol):
    def enrich(self, event: dict[str, Any]) -> Outcome:
        """Enrich ``event`` in place. May raise on a bad event: the stage applies ``on_error``."""
        ...

    def status(self) -> str:
        """``enabled`` or ``disabled: <why>``, reported at start-up and in metrics."""
        ...

    def close(self) -> None: ...


class EnricherUnavailable(PipelineError):
    """The enricher cannot start (missing or corrupt database, missing secret, ...).

    A clear error at start-up, unless the topology marks the stage ``optional: true``, in which
    case the enricher is disabled and reports why.
    """


@dataclass(frozen=True)
class EnricherContext:
    """What an enricher may use besides its config. Injected, so tests control it."""

    env: Mapping[str, str] = field(default_factory=dict)
    """Environment variables (secrets such as a hashing key)."""
    base_dir: Path = Path(".")
    """Directory of the topology file: relative paths in configs are relative to it."""
    clock: Callable[[], float] = time.time
    stage_id: str = ""

    def resolve(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)


@dataclass(frozen=True)
class EnricherType:
    name: str
    config_model: type[BaseModel]
    build: Callable[[Any, EnricherContext], Enricher]
    description: str = ""
    protects_privacy: bool = False
    """A privacy enricher may not be ``optional``: running without it would leak personal data."""


class UnknownEnricher(LookupError):
    pass


def enricher_type(name: str) -> EnricherType:
    if not _NAME_RE.match(name):
        raise UnknownEnricher(f"{name!r} is not an enricher name (known: {', '.join(known_enrichers())})")
    module_name = f"{__name__}.{name}"
    if importlib.util.find_spec(module_name) is None:
        raise UnknownEnricher(f"unknown enricher {name!r} (known: {', '.join(known_enrichers())})")
    module = importlib.import_module(module_name)
    found = getattr(module, "ENRICHER", None)
    if not isinstance(found, EnricherType):
        raise UnknownEnricher(f"{module_name} does not define ENRICHER")
    return found


def known_enrichers() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


class DisabledEnricher:
    """Stands in for an optional enricher that could not start: skips every event, says why."""

    def __init__(self, reason: str) -> None:
        self._reason = reason

    def enrich(self, event: dict[str, Any]) -> Outcome:
        return Outcome.SKIPPED

    def status(self) -> str:
        return f"disabled: {self._reason}"

    def close(self) -> None:
        pass


def get_path(event: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``properties.email``), or None."""
    node: Any = event
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
        if node is None:
            return None
    return node


def context_of(event: dict[str, Any]) -> dict[str, Any]:
    """The event's ``context`` object (validation guarantees it is a dict)."""
    context = event.get("context")
    if not isinstance(context, dict):
        context = event["context"] = {}
    return context
