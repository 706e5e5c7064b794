"""The ``route`` stage: each valid event goes to exactly one output topic.

Rules are tried in order and the first match wins; an event no rule matches goes to
``default``. A rule matches when every condition it names holds: the event name is in
``event``, or starts with one of ``event_prefix``, and every ``where`` predicate is true.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Literal

import orjson
from pydantic import Field, model_validator

from pipeline.core.batch import BatchContext
from pipeline.core.deadletter import RECORD_SIZE_LIMIT, fits
from pipeline.core.reasons import Reason
from pipeline.core.records import Item
from pipeline.stages import StageType
from pipeline.topology.model import StepId, Strict, TopicName, Topology, TopologySpec

Op = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "missing", "prefix"]
_ORDERING_OPS = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
_MISSING = object()


class Predicate(Strict):
    field: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
    """Dotted path into the event, e.g. ``properties.revenue`` or ``context.locale``."""
    op: Op
    value: Any = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> "Predicate":
        if self.op in ("exists", "missing"):
            if self.value is not None:
                raise ValueError(f"op {self.op!r} takes no value")
        elif self.op in ("in", "not_in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"op {self.op!r} needs a non-empty list as value")
        elif self.op in _ORDERING_OPS:
            if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
                raise ValueError(f"op {self.op!r} needs a number as value")
        elif self.op == "prefix":
            if not isinstance(self.value, str):
                raise ValueError("op 'prefix' needs a string as value")
        elif self.value is None:
            raise ValueError(f"op {self.op!r} needs a value")
        return self


class Match(Strict):
    event: list[str] | None = None
    """Exact event names."""
    event_prefix: list[str] | None = None
    """Event name prefixes, e.g. ``subscription_``."""
    where: list[Predicate] = Field(default_factory=list)
    """Predicates on event fields; all must hold."""

    @model_validator(mode="after")
    def _not_empty(self) -> "Match":
        if not self.event and not self.event_prefix and not self.where:
            raise ValueError("a rule must match on event, event_prefix or where")
        return self


class Rule(Strict):
    id: StepId
    when: Match
    to: TopicName


class RouteConfig(Strict):
    rules: list[Rule] = Field(default_factory=list)
    default: TopicName
    """Where valid events that no rule matches go. Required, so no event is ever unrouted."""


def _check(config: RouteConfig, spec: TopologySpec) -> list[tuple[str, str]]:
    problems = []
    declared = set(spec.topics)
    seen: set[str] = set()
    for i, rule in enumerate(config.rules):
        if rule.id in seen:
            problems.append((f"rules[{i}].id", f"duplicate rule id {rule.id!r}"))
        seen.add(rule.id)
        if rule.to not in declared:
            problems.append((f"rules[{i}].to", f"topic {rule.to!r} is not declared under topics"))
        if rule.to == spec.dead_letter.topic:
            problems.append((f"rules[{i}].to", "valid events cannot be routed to the dead-letter topic"))
    if config.default not in declared:
        problems.append(("default", f"topic {config.default!r} is not declared under topics"))
    if config.default == spec.dead_letter.topic:
        problems.append(("default", "valid events cannot be routed to the dead-letter topic"))
    return problems


def _getter(path: str) -> Callable[[dict[str, Any]], Any]:
    parts = path.split(".")
    if len(parts) == 3:
        # The common depth (``context.bot.is_bot``), unrolled: this runs for most events.
        first, second, third = parts

        def get3(event: dict[str, Any]) -> Any:
            node = event.get(first)
            if type(node) is not dict:
                return _MISSING
            node = node.get(second)
            if type(node) is not dict:
                return _MISSING
            return node.get(third, _MISSING)

        return get3

    def get(event: dict[str, Any]) -> Any:
        node: Any = event
        for part in parts:
            if type(node) is not dict:
                return _MISSING
            node = node.get(part, _MISSING)
            if node is _MISSING:
                return _MISSING
        return node

    return get


def _same(a: Any, b: Any) -> bool:
    """Equality where booleans are not numbers (Python says True == 1)."""
    return a == b and (type(a) is bool) == (type(b) is bool)


def _compile_predicate(p: Predicate) -> Callable[[dict[str, Any]], bool]:
    get = _getter(p.field)
    value = p.value
    if p.op == "exists":
        return lambda e: get(e) not in (_MISSING, None)
    if p.op == "missing":
        return lambda e: get(e) in (_MISSING, None)
    if p.op in ("eq", "ne"):
        # _same, without its call where the value's type allows: an equality runs for most
        # events (``context.bot.is_bot eq true`` in the example topology).
        if type(value) is bool:
            # Only the boolean itself is _same as a boolean (1 == True, but 1 is no boolean).
            same = lambda e: get(e) is value
        elif type(value) is str:
            # Only an equal string is _same as a string (a boolean or a number never equals one).
            same = lambda e: get(e) == value
        else:
            same = lambda e: _same(get(e), value)
        return same if p.op == "eq" else lambda e: not same(e)
    if p.op == "in":
        members = list(value)

        def is_member(e: dict[str, Any]) -> bool:
            v = get(e)
            return any(_same(v, m) for m in members)

        return is_member
    if p.op == "not_in":
        members = list(value)

        def not_member(e: dict[str, Any]) -> bool:
            v = get(e)
            return not any(_same(v, m) for m in members)

        return not_member
    if p.op == "prefix":
        return lambda e: isinstance(v := get(e), str) and v.startswith(value)
    compare = _ORDERING_OPS[p.op]

    def ordered(e: dict[str, Any]) -> bool:
        v = get(e)
        return isinstance(v, (int, float)) and not isinstance(v, bool) and compare(v, value)

    return ordered


class _CompiledRule:
    __slots__ = ("id", "topic", "names", "prefixes", "predicates")

    def __init__(self, rule: Rule) -> None:
        self.id = rule.id
        self.topic = rule.to
        self.names = frozenset(rule.when.event) if rule.when.event else None
        self.prefixes = tuple(rule.when.event_prefix) if rule.when.event_prefix else None
        self.predicates = [_compile_predicate(p) for p in rule.when.where]

    def matches_name(self, name: str) -> bool:
        if self.names is None and self.prefixes is None:
            return True
        if self.names is not None and name in self.names:
            return True
        return self.prefixes is not None and name.startswith(self.prefixes)


# How an event of one name is routed: the rules with predicates to try in order, each with its
# topic, then the topic to use when none of them matches.
_Plan = tuple[tuple[tuple[Callable[[dict[str, Any]], bool], ...], str], ...]


class RouteStage:
    def __init__(
        self, stage_id: str, config: RouteConfig, *, pipeline_meta: dict[str, str] | None = None
    ) -> None:
        self.id = stage_id
        # Stamped on every routed event: which pipeline and topology made it.
        self._meta = pipeline_meta or {}
        self._rules = [_CompiledRule(r) for r in config.rules]
        self._default = config.default
        # Which rules can apply depends only on the event name: plan once per name, so each
        # event evaluates only the predicates of the rules its name can reach.
        self._plans: dict[str, tuple[_Plan, str]] = {}

    def _plan(self, name: str) -> tuple[_Plan, str]:
        steps = []
        for rule in self._rules:
            if not rule.matches_name(name):
                continue
            if not rule.predicates:
                return tuple(steps), rule.topic  # first match wins: later rules are unreachable
            steps.append((tuple(rule.predicates), rule.topic))
        return tuple(steps), self._default

    def topic_for(self, event: dict[str, Any]) -> str:
        name = event["event"]
        plan = self._plans.get(name)
        if plan is None:
            plan = self._plan(name)
            if len(self._plans) < 100_000:  # names are few in practice; memory must be bounded
                self._plans[name] = plan
        steps, fallback = plan
        for predicates, topic in steps:
            for predicate in predicates:
                if not predicate(event):
                    break
            else:
                return topic
        return fallback

    def emit(self, items: list[Item], ctx: BatchContext) -> None:
        topic_for = self.topic_for
        emit = ctx.emit
        dumps = orjson.dumps
        now_ms = ctx.now_ms
        meta = self._meta
        for item in items:
            event = item.event
            event["processed_at"] = now_ms
            event["pipeline"] = meta
            # The source key is usually the user id: an event stripped for lack of consent must
            # not carry it in its Kafka key either.
            key = None if event.get("consent_stripped") else item.message.key
            value = dumps(event)
            if len(value) > OUTPUT_CHECK_BYTES and not fits(key, value):
                # Enrichment made it too big for Kafka: producing it would fail the batch.
                ctx.dead_letter(
                    item.message, reason=Reason.OUTPUT_TOO_LARGE, stage=self.id,
                    detail=f"the routed event is {len(value)} bytes (key {len(key or b'')}); "
                    f"a record may be {RECORD_SIZE_LIMIT}",
                    event=event,
                )
                continue
            emit(topic_for(event), key, value)


OUTPUT_CHECK_BYTES = RECORD_SIZE_LIMIT // 2
"""Below this a value cannot be too large whatever its key (keys of dead letters are capped;
a routed event's key is the source key, checked with the value): skips the check for almost
every event."""


def _build(stage_id: str, config: RouteConfig, topology: Topology) -> RouteStage:
    from pipeline import __version__

    meta = {"version": __version__, "topology": topology.name, "topology_version": topology.version}
    return RouteStage(stage_id, config, pipeline_meta=meta)


STAGE_TYPE = StageType(
    name="route", role="sink", config_model=RouteConfig, build=_build, check=_check
)
