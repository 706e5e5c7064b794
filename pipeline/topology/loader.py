"""Load topology files and report every problem at once, with its file and path."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Iterable, Mapping

import fastavro
import orjson
import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from pipeline.core.avro_check import SchemaCompileError, compile_schema
from pipeline.errors import Problem, TopologyError
from pipeline.stages import UnknownStageType, stage_type
from pipeline.topology.model import TOPIC_NAME_RE, Topology, TopologySpec

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _interpolate(
    value: Any, env: Mapping[str, str], path: str, problems: list[tuple[str, str]]
) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string value."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append((path, f"environment variable {name} is not set and has no default"))
            return ""

        if "${" not in value:
            return value
        replaced = _VAR_RE.sub(substitute, value)
        return replaced
    if isinstance(value, dict):
        return {k: _interpolate(v, env, f"{path}.{k}" if path else str(k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _loc_to_path(loc: Iterable[Any], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _validation_problems(file: str, exc: ValidationError, prefix: str = "") -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        problems.append(Problem(file, _loc_to_path(loc, prefix), message))
    return problems


def load_topology(path: str | Path, *, env: Mapping[str, str] | None = None) -> Topology:
    """Load and check one topology file. Raises ``TopologyError`` listing every problem."""
    path = Path(path)
    file = str(path)
    env = os.environ if env is None else env
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError([Problem(file, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError([Problem(file, "", f"cannot read: {exc}")]) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        detail = getattr(exc, "problem", None) or str(exc)
        raise TopologyError([Problem(file, where, f"invalid YAML: {detail}")]) from None
    if not isinstance(raw, dict):
        raise TopologyError([Problem(file, "", "a topology must be a YAML mapping")])

    env_problems: list[tuple[str, str]] = []
    raw = _interpolate(raw, env, "", env_problems)
    problems = [Problem(file, p, m) for p, m in env_problems]

    try:
        spec = TopologySpec.model_validate(raw)
        complete = True
    except ValidationError as exc:
        problems.extend(_validation_problems(file, exc))
        # Keep checking the sections that are valid on their own, so one run reports as much
        # as possible (a typo at the top must not hide a bad route further down).
        spec = TopologySpec.model_construct(**_valid_sections(raw))
        complete = False

    stage_configs: dict[str, BaseModel] = {}
    stages = spec.__dict__.get("stages") or []
    seen_ids: dict[str, int] = {}
    for i, stage in enumerate(stages):
        if stage.id in seen_ids:
            problems.append(
                Problem(file, f"stages[{i}].id", f"duplicate stage id {stage.id!r} (first at stages[{seen_ids[stage.id]}])")
            )
        seen_ids.setdefault(stage.id, i)
        cross_check = "topics" in spec.__dict__ and "dead_letter" in spec.__dict__
        stage_problems = _stage_problems(file, i, stage.model_dump(), spec if cross_check else None)
        problems.extend(stage_problems)
        if not stage_problems:
            kind = stage_type(stage.type)
            stage_configs[stage.id] = kind.config_model.model_validate(stage.settings)
    if stages:
        problems.extend(_role_problems(file, stages))
    if all(k in spec.__dict__ for k in ("topics", "source", "dead_letter")):
        problems.extend(_topic_problems(file, spec))
    schemas: dict[str, Any] = {}
    if "schemas" in spec.__dict__:
        schemas, schema_problems = _load_schemas(file, path.parent, spec)
        problems.extend(schema_problems)
    if problems or not complete:
        raise TopologyError(problems)
    return Topology(spec=spec, path=path, stage_configs=stage_configs, schemas=schemas, env=env)


def _valid_sections(raw: dict[str, Any]) -> dict[str, Any]:
    """The top-level sections of a topology that are valid on their own."""
    sections = {}
    for name, field in TopologySpec.model_fields.items():
        if name not in raw:
            continue
        try:
            annotation = field.annotation
            if field.metadata:
                annotation = Annotated[(annotation, *field.metadata)]  # type: ignore[valid-type]
            adapter = TypeAdapter(annotation)
            sections[name] = adapter.validate_python(raw[name])
        except ValidationError:
            continue
    return sections


def _stage_problems(
    file: str, index: int, stage: dict[str, Any], spec: TopologySpec | None
) -> list[Problem]:
    prefix = f"stages[{index}]"
    try:
        kind = stage_type(stage["type"])
    except UnknownStageType as exc:
        return [Problem(file, f"{prefix}.type", str(exc))]
    settings = {k: v for k, v in stage.items() if k not in ("id", "type")}
    try:
        config = kind.config_model.model_validate(settings)
    except ValidationError as exc:
        return _validation_problems(file, exc, prefix)
    if kind.check is not None and spec is not None:
        return [Problem(file, f"{prefix}.{p}", m) for p, m in kind.check(config, spec)]
    return []


def _role_problems(file: str, stages: list[Any]) -> list[Problem]:
    problems = []
    roles = []
    for i, stage in enumerate(stages):
        try:
            roles.append((i, stage_type(stage.type).role))
        except UnknownStageType:
            return []  # already reported
    if roles[0][1] != "source":
        problems.append(Problem(file, "stages[0]", "the first stage must be a validate (source) stage"))
    if roles[-1][1] != "sink" or len(roles) < 2:
        problems.append(Problem(file, f"stages[{len(roles) - 1}]", "the last stage must be a route (sink) stage"))
    for i, role in roles[1:-1]:
        if role == "source":
            problems.append(Problem(file, f"stages[{i}]", "a validate (source) stage can only be first"))
        elif role == "sink":
            problems.append(Problem(file, f"stages[{i}]", "a route (sink) stage can only be last"))
    return problems


def _topic_problems(file: str, spec: TopologySpec) -> list[Problem]:
    problems = []
    for name in spec.topics:
        if not TOPIC_NAME_RE.match(name) or name in {".", ".."}:
            problems.append(Problem(file, f"topics.{name}", f"{name!r} is not a valid Kafka topic name"))
    if spec.source.topic in spec.topics:
        problems.append(Problem(file, f"topics.{spec.source.topic}", "the source topic cannot also be an output topic"))
    if spec.dead_letter.topic not in spec.topics:
        problems.append(Problem(file, "dead_letter.topic", f"topic {spec.dead_letter.topic!r} is not declared under topics"))
    return problems


def _read_schema(base: Path, rel: str) -> Any:
    schema_path = (base / rel).resolve()
    data = orjson.loads(schema_path.read_bytes())
    fastavro.parse_schema(data, _write_hint=False)
    return data


def _load_schemas(file: str, base: Path, spec: TopologySpec) -> tuple[dict[str, Any], list[Problem]]:
    schemas: dict[str, Any] = {}
    problems: list[Problem] = []
    wanted = [("envelope", spec.schemas.envelope, "schemas.envelope"),
              ("dead_letter", spec.schemas.dead_letter, "schemas.dead_letter")]
    wanted += [(f"event:{name}", rel, f"schemas.events.{name}") for name, rel in spec.schemas.events.items()]
    for key, rel, where in wanted:
        try:
            schemas[key] = _read_schema(base, rel)
            if key.startswith("event:"):
                compile_schema(schemas[key])
        except FileNotFoundError:
            problems.append(Problem(file, where, f"schema file {rel!r} not found (relative to {base})"))
        except orjson.JSONDecodeError as exc:
            problems.append(Problem(file, where, f"schema file {rel!r} is not JSON: {exc}"))
        except (SchemaCompileError, fastavro.schema.SchemaParseException, ValueError, KeyError, TypeError) as exc:
            problems.append(Problem(file, where, f"schema file {rel!r} is not a valid Avro schema: {exc}"))
        except OSError as exc:
            problems.append(Problem(file, where, f"cannot read schema file {rel!r}: {exc}"))
    return schemas, problems


def check_topologies(paths: Iterable[str | Path], *, env: Mapping[str, str] | None = None) -> list[Problem]:
    """Every problem in every file (empty when all are valid)."""
    problems: list[Problem] = []
    for path in paths:
        try:
            load_topology(path, env=env)
        except TopologyError as exc:
            problems.extend(exc.problems)
    return problems
