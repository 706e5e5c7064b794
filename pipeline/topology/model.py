"""The typed model of a topology file.

Every model forbids unknown keys so a typo in a topology is an error at load time, not a
silently ignored setting. Stage configs are validated separately, by the stage type's own
config model (see ``pipeline.stages``), so adding a stage type never edits this file.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# Kafka's own rule for topic names (kafka.common.internals.Topic).
TOPIC_NAME_RE = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
STEP_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a string such as ``500ms``, ``5m``, ``24h``, ``30d``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 24h or a number of seconds")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 30s, 5m, 24h, 30d)")


def _check_topic_name(value: Any) -> Any:
    if isinstance(value, str) and (not TOPIC_NAME_RE.match(value) or value in {".", ".."}):
        raise ValueError(
            f"{value!r} is not a valid Kafka topic name "
            "(1-249 characters of a-z, A-Z, 0-9, '.', '_', '-')"
        )
    return value


def _check_step_id(value: Any) -> Any:
    if isinstance(value, str) and not STEP_ID_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid id (lower-case letters, digits and '_', "
            "starting with a letter, at most 64 characters)"
        )
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
TopicName = Annotated[str, BeforeValidator(_check_topic_name)]
StepId = Annotated[str, BeforeValidator(_check_step_id)]


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors; instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(Strict):
    topic: TopicName
    """The topic the raw events arrive on."""
    partitions: int = Field(default=4, ge=1, le=10_000)
    """Partitions to create when the topic is missing. Keyed by user identity."""
    replication_factor: int = Field(default=1, ge=1, le=32)
    format: Literal["json"] = "json"
    """Message value format. Only JSON today."""
    config: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Topic configs used when the topic is created (e.g. retention.ms)."""


class TopicSpec(Strict):
    partitions: int = Field(default=4, ge=1, le=10_000)
    replication_factor: int = Field(default=1, ge=1, le=32)
    config: dict[str, str | int | float | bool] = Field(default_factory=dict)
    description: str = ""


class SchemasSpec(Strict):
    """Avro schemas (paths relative to the topology file) that define the contract."""

    envelope: str
    """Schema of every valid event written to an output topic."""
    dead_letter: str
    """Schema of the dead-letter record."""
    events: dict[str, str] = Field(default_factory=dict)
    """Per-event property schemas, keyed by event name."""


class DeadLetterSpec(Strict):
    topic: TopicName
    """Where events that fail go, with a reason. Must be declared under ``topics``."""
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024, le=768 * 1024)
    """The original payload is kept up to this many bytes (then truncated, with a flag),
    so a dead-letter record always stays under Kafka's default 1 MiB message limit."""


class StageSpec(BaseModel):
    """One step of the topology: an id, a type and the type's own settings.

    The settings are validated by the stage type's config model, not here.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    id: StepId
    type: str

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TopologySpec(Strict):
    name: StepId
    version: int | str
    description: str = ""
    source: SourceSpec
    schemas: SchemasSpec
    stages: list[StageSpec] = Field(min_length=1)
    topics: dict[str, TopicSpec] = Field(min_length=1)
    """Output topics (routes, dead letters) with partitions and configs."""
    dead_letter: DeadLetterSpec


class Topology:
    """A loaded, checked topology: the spec plus its compiled stage configs and schemas."""

    def __init__(
        self,
        *,
        spec: TopologySpec,
        path: Path,
        stage_configs: dict[str, BaseModel],
        schemas: dict[str, dict[str, Any]],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.path = path
        self.stage_configs = stage_configs
        """Validated config model per stage id, in topology order."""
        self.schemas = schemas
        """Parsed Avro schemas: ``envelope``, ``dead_letter`` and ``event:<name>``."""
        self.env: Mapping[str, str] = dict(env or {})
        """The environment the topology was loaded with (enrichers read secrets from it)."""
        self.clock: Callable[[], float] = time.time
        """The clock stages are built with (a Processor sets its injected clock here)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return str(self.spec.version)

    @property
    def output_topics(self) -> dict[str, TopicSpec]:
        return dict(self.spec.topics)

    def stage_config(self, stage_id: str) -> BaseModel:
        return self.stage_configs[stage_id]

    def __repr__(self) -> str:
        return f"<Topology {self.name} v{self.version} from {self.path}>"
