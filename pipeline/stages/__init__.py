"""Stage types. One module per type, found by name: ``type: validate`` is ``pipeline.stages.validate``.

Each module defines ``STAGE_TYPE``: its typed config (unknown keys refused), an optional
semantic check against the whole topology, and a ``build`` function. Adding a stage type means
adding its module and its tests: nothing else is edited.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol

from pydantic import BaseModel

if TYPE_CHECKING:
    from pipeline.core.batch import BatchContext
    from pipeline.core.records import Item, SourceMessage
    from pipeline.topology.model import Topology, TopologySpec

_TYPE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

Role = Literal["source", "middle", "sink"]


class SourceStage(Protocol):
    """Turns raw messages into items (or dead letters). Always the first stage."""

    id: str

    def decode(self, messages: list[SourceMessage], ctx: BatchContext) -> list[Item]: ...


class MiddleStage(Protocol):
    """Transforms, filters or enriches items."""

    id: str

    def process(self, items: list[Item], ctx: BatchContext) -> list[Item]: ...


class SinkStage(Protocol):
    """Emits items to output topics. Always the last stage."""

    id: str

    def emit(self, items: list[Item], ctx: BatchContext) -> None: ...


@dataclass(frozen=True)
class StageType:
    name: str
    role: Role
    config_model: type[BaseModel]
    build: Callable[[str, Any, "Topology"], Any]
    """``build(stage_id, config, topology)`` returns the stage object."""
    check: Callable[[Any, "TopologySpec"], list[tuple[str, str]]] | None = None
    """Optional cross-check against the whole topology: returns (path, message) problems."""


class UnknownStageType(LookupError):
    pass


def stage_type(name: str) -> StageType:
    """The stage type registered under ``name`` (its module in this package)."""
    if not _TYPE_NAME_RE.match(name):
        raise UnknownStageType(
            f"{name!r} is not a stage type name (known: {', '.join(known_types())})"
        )
    module_name = f"{__name__}.{name}"
    if importlib.util.find_spec(module_name) is None:
        raise UnknownStageType(f"unknown stage type {name!r} (known: {', '.join(known_types())})")
    module = importlib.import_module(module_name)
    found = getattr(module, "STAGE_TYPE", None)
    if not isinstance(found, StageType):
        raise UnknownStageType(f"{module_name} does not define STAGE_TYPE")
    return found


def known_types() -> list[str]:
    import pkgutil

    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
