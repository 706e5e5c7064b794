"""The topology loader: every bad file gives a clear problem with its file and path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.errors import Problem, TopologyError
from pipeline.stages.route import RouteConfig
from pipeline.stages.validate import ValidateConfig
from pipeline.topology import check_topologies, load_topology
from pipeline.topology.model import parse_duration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "topologies" / "ecommerce.yaml"
AVRO = REPO / "avro"


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    """The shipped topology as data, with absolute schema paths."""
    text = EXAMPLE.read_text(encoding="utf-8").replace("../avro/", f"{AVRO}/")
    data = yaml.safe_load(text)
    # These tests address stages by position: keep the two that every topology has.
    data["stages"] = [s for s in data["stages"] if s["type"] in ("validate", "route")]
    return data


@pytest.fixture
def data(base: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(base)


def write(tmp_path: Path, content: dict[str, Any] | str, name: str = "topology.yaml") -> Path:
    path = tmp_path / name
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(
    tmp_path: Path, content: dict[str, Any] | str, env: dict[str, str] | None = None
) -> list[Problem]:
    path = write(tmp_path, content)
    with pytest.raises(TopologyError) as info:
        load_topology(path, env={} if env is None else env)
    problems = info.value.problems
    assert problems, "a TopologyError must carry at least one problem"
    for problem in problems:
        assert problem.file == str(path)
        assert problem.message
        assert "Traceback" not in problem.message
    # The exception text lists every problem, one per line, with file and path.
    assert str(info.value).splitlines() == [str(p) for p in problems]
    return problems


def by_path(problems: list[Problem]) -> dict[str, str]:
    return {p.path: p.message for p in problems}


def the_problem(problems: list[Problem], path: str, *words: str) -> Problem:
    """The problem at ``path``; its message contains every word (case-insensitive)."""
    found = [p for p in problems if p.path == path]
    assert found, f"no problem at {path!r}; got {[(p.path, p.message) for p in problems]}"
    for word in words:
        assert any(word.lower() in p.message.lower() for p in found), (path, word, found)
    return found[0]


def route(data: dict[str, Any]) -> dict[str, Any]:
    return data["stages"][1]


# --------------------------------------------------------------------------- the good files


def test_shipped_example_loads_cleanly() -> None:
    topology = load_topology(EXAMPLE, env={})
    assert topology.name == "ecommerce"
    assert topology.version == "1"
    ids = [s.id for s in topology.spec.stages]
    assert ids[0] == "validate" and ids[-1] == "route" and "dedupe" in ids
    assert isinstance(topology.stage_config("validate"), ValidateConfig)
    assert isinstance(topology.stage_config("route"), RouteConfig)
    assert set(topology.output_topics) == {
        "aggregates",
        "bot_events",
        "revenue_events",
        "error_events",
        "processed_events",
        "invalid_events",
    }
    assert set(topology.schemas) == {
        "envelope",
        "dead_letter",
        "event:purchase_completed",
        "event:add_to_cart",
        "event:error_occurred",
    }
    validate = topology.stage_config("validate")
    assert validate.max_future_skew == 300.0
    assert validate.max_age == 30 * 86400.0
    assert check_topologies([EXAMPLE], env={}) == []


def test_example_with_absolute_schema_paths_loads_from_anywhere(
    tmp_path: Path, data: dict[str, Any]
) -> None:
    topology = load_topology(write(tmp_path, data), env={})
    assert topology.name == "ecommerce"


# --------------------------------------------------------------------------- file level


def test_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(TopologyError) as info:
        load_topology(missing, env={})
    [problem] = info.value.problems
    assert problem.file == str(missing)
    assert "not found" in problem.message
    assert str(missing) in str(info.value)


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    text = "name: shop\nversion: 1\nsource: {topic: raw\n  partitions: [1, 2\nstages: []\n"
    [problem] = problems_of(tmp_path, text)
    assert problem.message.startswith("invalid YAML")
    assert problem.path.startswith("line ")
    line = int(problem.path.split()[1].rstrip(","))
    assert 3 <= line <= 5


def test_invalid_yaml_tab_indentation(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, "name: shop\nsource:\n\ttopic: raw\n")
    assert "invalid YAML" in problem.message
    assert problem.path.startswith("line 3")


def test_duplicate_yaml_key_is_refused_with_its_line(tmp_path: Path, data: dict[str, Any]) -> None:
    text = yaml.safe_dump(data, sort_keys=False)
    text = text.replace("name: ecommerce\n", "name: ecommerce\nversion: 2\n", 1)
    [problem] = problems_of(tmp_path, text)
    assert "duplicate key 'version'" in problem.message
    assert problem.path == "line 3, column 1"  # the second occurrence


def test_duplicate_nested_yaml_key(tmp_path: Path) -> None:
    text = "name: shop\nsource:\n  topic: a\n  partitions: 2\n  topic: b\n"
    [problem] = problems_of(tmp_path, text)
    assert "duplicate key 'topic'" in problem.message
    assert problem.path == "line 5, column 3"


@pytest.mark.parametrize(
    "text", ["", "# only a comment\n", "- a\n- b\n", "just a string\n", "42\n"]
)
def test_not_a_mapping(tmp_path: Path, text: str) -> None:
    [problem] = problems_of(tmp_path, text)
    assert problem.message == "a topology must be a YAML mapping"


# --------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key(tmp_path: Path, data: dict[str, Any]) -> None:
    data["stagess"] = []
    problems = problems_of(tmp_path, data)
    the_problem(problems, "stagess", "unknown key")


def test_unknown_key_in_source(tmp_path: Path, data: dict[str, Any]) -> None:
    data["source"]["partitons"] = 3
    the_problem(problems_of(tmp_path, data), "source.partitons", "unknown key")


def test_unknown_key_in_a_topic(tmp_path: Path, data: dict[str, Any]) -> None:
    data["topics"]["error_events"]["retention"] = "7d"
    the_problem(problems_of(tmp_path, data), "topics.error_events.retention", "unknown key")


def test_unknown_key_in_a_stage(tmp_path: Path, data: dict[str, Any]) -> None:
    data["stages"][0]["max_dept"] = 10
    [problem] = problems_of(tmp_path, data)
    assert (problem.path, problem.message) == ("stages[0].max_dept", "unknown key")


def test_unknown_key_in_a_routing_rule(tmp_path: Path, data: dict[str, Any]) -> None:
    route(data)["rules"][1]["too"] = "error_events"
    problems = problems_of(tmp_path, data)
    the_problem(problems, "stages[1].rules[1].too", "unknown key")


def test_unknown_key_in_a_rule_when(tmp_path: Path, data: dict[str, Any]) -> None:
    route(data)["rules"][0]["when"]["events"] = ["x"]
    the_problem(problems_of(tmp_path, data), "stages[1].rules[0].when.events", "unknown key")


def test_unknown_key_in_a_predicate(tmp_path: Path, data: dict[str, Any]) -> None:
    route(data)["rules"][0]["when"]["where"] = [{"field": "a", "op": "eq", "value": 1, "x": 2}]
    the_problem(problems_of(tmp_path, data), "stages[1].rules[0].when.where[0].x", "unknown key")


def test_missing_required_keys(tmp_path: Path, data: dict[str, Any]) -> None:
    del data["source"]
    del data["dead_letter"]
    problems = problems_of(tmp_path, data)
    the_problem(problems, "source", "required key is missing")
    the_problem(problems, "dead_letter", "required key is missing")


# --------------------------------------------------------------------------- stages


def test_unknown_stage_type_lists_the_known_types(tmp_path: Path, data: dict[str, Any]) -> None:
    data["stages"][0]["type"] = "valdate"
    problem = the_problem(problems_of(tmp_path, data), "stages[0].type", "unknown stage type")
    assert "'valdate'" in problem.message
    assert "validate" in problem.message and "route" in problem.message


    assert "route" in problem.message and "validate" in problem.message


@pytest.mark.parametrize("stage_type", ["../validate", "__init__", "validate.x", ""])
def test_stage_type_cannot_escape_the_stages_package(
    tmp_path: Path, data: dict[str, Any], stage_type: str
) -> None:
    data["stages"][0]["type"] = stage_type
    the_problem(problems_of(tmp_path, data), "stages[0].type")


@pytest.mark.parametrize("bad_id", ["Validate", "1st", "has-dash", "x" * 65, ""])
def test_bad_stage_id(tmp_path: Path, data: dict[str, Any], bad_id: str) -> None:
    data["stages"][0]["id"] = bad_id
    problem = the_problem(problems_of(tmp_path, data), "stages[0].id", "not a valid id")
    assert repr(bad_id) in problem.message


def test_duplicate_stage_ids(tmp_path: Path, data: dict[str, Any]) -> None:
    route(data)["id"] = "validate"
    [problem] = problems_of(tmp_path, data)
    assert problem.path == "stages[1].id"
    assert "duplicate stage id 'validate'" in problem.message
    assert "stages[0]" in problem.message


def test_first_stage_must_be_validate(tmp_path: Path, data: dict[str, Any]) -> None:
    data["stages"] = [route(data)]
    problems = problems_of(tmp_path, data)
    the_problem(problems, "stages[0]", "first stage must be a validate")


def test_last_stage_must_be_route(tmp_path: Path, data: dict[str, Any]) -> None:
    data["stages"] = [data["stages"][0]]
    the_problem(problems_of(tmp_path, data), "stages[0]", "last stage must be a route")


def test_stages_in_the_wrong_order_give_both_problems(tmp_path: Path, data: dict[str, Any]) -> None:
    data["stages"].reverse()
    problems = problems_of(tmp_path, data)
    the_problem(problems, "stages[0]", "first stage must be a validate")
    the_problem(problems, "stages[1]", "last stage must be a route")


def test_validate_in_the_middle(tmp_path: Path, data: dict[str, Any]) -> None:
    extra = dict(data["stages"][0], id="validate_again")
    data["stages"].insert(1, extra)
    the_problem(problems_of(tmp_path, data), "stages[1]", "validate (source) stage can only be first")


def test_empty_stage_list(tmp_path: Path, data: dict[str, Any]) -> None:
    data["stages"] = []
    the_problem(problems_of(tmp_path, data), "stages")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_depth", 1),
        ("max_depth", "deep"),
        ("max_payload_bytes", 10),
        ("unknown_events", "drop"),
    ],
)
def test_bad_validate_settings(tmp_path: Path, data: dict[str, Any], key: str, value: Any) -> None:
    data["stages"][0][key] = value
    the_problem(problems_of(tmp_path, data), f"stages[0].{key}")


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize("value", ["5 parsecs", "-5m", "5mm", "", "m", True, -1, "1w"])
def test_bad_durations(tmp_path: Path, data: dict[str, Any], value: Any) -> None:
    data["stages"][0]["max_age"] = value
    problem = the_problem(problems_of(tmp_path, data), "stages[0].max_age")
    assert "duration" in problem.message


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("30d", 2_592_000.0),
        ("1.5h", 5400.0),
        (" 10 s ", 10.0),
        ("45", 45.0),
        (90, 90.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_good_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


def test_durations_in_a_topology(tmp_path: Path, data: dict[str, Any]) -> None:
    data["stages"][0]["max_future_skew"] = "90s"
    data["stages"][0]["max_age"] = 7200
    config = load_topology(write(tmp_path, data), env={}).stage_config("validate")
    assert (config.max_future_skew, config.max_age) == (90.0, 7200.0)


# --------------------------------------------------------------------------- schemas


def test_missing_schema_file(tmp_path: Path, data: dict[str, Any]) -> None:
    data["schemas"]["events"]["add_to_cart"] = "schemas/missing.avsc"
    problem = the_problem(problems_of(tmp_path, data), "schemas.events.add_to_cart", "not found")
    assert "schemas/missing.avsc" in problem.message


def test_schema_paths_are_relative_to_the_topology_file(
    tmp_path: Path, data: dict[str, Any]
) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "a.avsc").write_bytes(
        (AVRO / "events" / "add_to_cart.avsc").read_bytes()
    )
    data["schemas"]["events"]["add_to_cart"] = "schemas/a.avsc"
    topology = load_topology(write(tmp_path, data), env={})
    assert topology.schemas["event:add_to_cart"]["name"] == "AddToCart"


def test_schema_file_that_is_not_json(tmp_path: Path, data: dict[str, Any]) -> None:
    (tmp_path / "bad.avsc").write_text("{'type': 'record',", encoding="utf-8")
    data["schemas"]["envelope"] = "bad.avsc"
    problem = the_problem(problems_of(tmp_path, data), "schemas.envelope", "not JSON")
    assert "bad.avsc" in problem.message


@pytest.mark.parametrize(
    "schema",
    [
        '{"type": "nope"}',
        '{"type": "record", "fields": []}',
        '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "Missing"}]}',
        '{"type": "record", "name": "X", "fields": [{"name": "a"}]}',
        "42",
        "[1, 2]",
    ],
)
def test_schema_that_is_not_valid_avro(tmp_path: Path, data: dict[str, Any], schema: str) -> None:
    (tmp_path / "bad.avsc").write_text(schema, encoding="utf-8")
    data["schemas"]["events"]["purchase_completed"] = "bad.avsc"
    problem = the_problem(
        problems_of(tmp_path, data), "schemas.events.purchase_completed", "not a valid Avro schema"
    )
    assert "bad.avsc" in problem.message


def test_event_schema_the_checker_cannot_enforce(tmp_path: Path, data: dict[str, Any]) -> None:
    (tmp_path / "fixed.avsc").write_text(
        '{"type": "record", "name": "X", "fields": '
        '[{"name": "f", "type": {"type": "fixed", "name": "F", "size": 4}}]}',
        encoding="utf-8",
    )
    data["schemas"]["events"]["add_to_cart"] = "fixed.avsc"
    the_problem(problems_of(tmp_path, data), "schemas.events.add_to_cart", "fixed")


def test_schema_file_that_is_a_directory(tmp_path: Path, data: dict[str, Any]) -> None:
    (tmp_path / "dir.avsc").mkdir()
    data["schemas"]["dead_letter"] = "dir.avsc"
    the_problem(problems_of(tmp_path, data), "schemas.dead_letter", "dir.avsc")


# --------------------------------------------------------------------------- topics


@pytest.mark.parametrize("name", ["bad topic!", "a/b", ".", "..", "x" * 250, "ünïcode"])
def test_bad_source_topic_name(tmp_path: Path, data: dict[str, Any], name: str) -> None:
    data["source"]["topic"] = name
    the_problem(problems_of(tmp_path, data), "source.topic", "not a valid Kafka topic name")


@pytest.mark.parametrize("name", ["bad topic!", "a/b", ".."])
def test_bad_output_topic_name(tmp_path: Path, data: dict[str, Any], name: str) -> None:
    data["topics"][name] = {"partitions": 1}
    the_problem(problems_of(tmp_path, data), f"topics.{name}", "not a valid Kafka topic name")


@pytest.mark.parametrize("name", ["bad topic!", "a/b"])
def test_bad_rule_target_topic_name(tmp_path: Path, data: dict[str, Any], name: str) -> None:
    route(data)["rules"][0]["to"] = name
    the_problem(
        problems_of(tmp_path, data), "stages[1].rules[0].to", "not a valid Kafka topic name"
    )


def test_bad_default_and_dead_letter_topic_names(tmp_path: Path, data: dict[str, Any]) -> None:
    route(data)["default"] = "a/b"
    data["dead_letter"]["topic"] = "bad topic!"
    problems = problems_of(tmp_path, data)
    the_problem(problems, "stages[1].default", "not a valid Kafka topic name")
    the_problem(problems, "dead_letter.topic", "not a valid Kafka topic name")


def test_rule_to_undeclared_topic(tmp_path: Path, data: dict[str, Any]) -> None:
    route(data)["rules"][1]["to"] = "errors_typo"
    [problem] = problems_of(tmp_path, data)
    assert problem.path == "stages[1].rules[1].to"
    assert "'errors_typo' is not declared under topics" in problem.message


def test_default_undeclared(tmp_path: Path, data: dict[str, Any]) -> None:
    route(data)["default"] = "everything_else"
    [problem] = problems_of(tmp_path, data)
    assert problem.path == "stages[1].default"
    assert "'everything_else' is not declared" in problem.message


def test_routing_valid_events_to_the_dead_letter_topic(
    tmp_path: Path, data: dict[str, Any]
) -> None:
    route(data)["rules"][0]["to"] = "invalid_events"
    route(data)["default"] = "invalid_events"
    problems = problems_of(tmp_path, data)
    the_problem(problems, "stages[1].rules[0].to", "dead-letter topic")
    the_problem(problems, "stages[1].default", "dead-letter topic")


def test_dead_letter_topic_undeclared(tmp_path: Path, data: dict[str, Any]) -> None:
    data["dead_letter"]["topic"] = "dlq"
    [problem] = problems_of(tmp_path, data)
    assert problem.path == "dead_letter.topic"
    assert "'dlq' is not declared under topics" in problem.message


def test_source_topic_also_an_output(tmp_path: Path, data: dict[str, Any]) -> None:
    data["topics"]["raw_events"] = {"partitions": 4}
    [problem] = problems_of(tmp_path, data)
    assert problem.path == "topics.raw_events"
    assert "source topic cannot also be an output" in problem.message


def test_dead_letter_payload_limit_bounds(tmp_path: Path, data: dict[str, Any]) -> None:
    data["dead_letter"]["max_payload_bytes"] = 2_000_000
    the_problem(problems_of(tmp_path, data), "dead_letter.max_payload_bytes")


def test_no_output_topics(tmp_path: Path, data: dict[str, Any]) -> None:
    data["topics"] = {}
    the_problem(problems_of(tmp_path, data), "topics")


# --------------------------------------------------------------------------- routing rules


def test_route_without_default(tmp_path: Path, data: dict[str, Any]) -> None:
    del route(data)["default"]
    [problem] = problems_of(tmp_path, data)
    assert (problem.path, problem.message) == ("stages[1].default", "required key is missing")


@pytest.mark.parametrize(
    "when", [{}, {"event": []}, {"event_prefix": [], "where": []}, {"event": None}]
)
def test_rule_with_an_empty_when(tmp_path: Path, data: dict[str, Any], when: Any) -> None:
    route(data)["rules"][0]["when"] = when
    problem = the_problem(problems_of(tmp_path, data), "stages[1].rules[0].when")
    assert "a rule must match on event, event_prefix or where" in problem.message


def test_duplicate_rule_ids(tmp_path: Path, data: dict[str, Any]) -> None:
    route(data)["rules"][1]["id"] = route(data)["rules"][0]["id"]
    the_problem(problems_of(tmp_path, data), "stages[1].rules[1].id", "duplicate rule id")


@pytest.mark.parametrize(
    ("predicate", "words"),
    [
        ({"field": "properties.revenue", "op": "gt", "value": "100"}, ["'gt'", "number"]),
        ({"field": "properties.revenue", "op": "lte", "value": True}, ["'lte'", "number"]),
        ({"field": "properties.revenue", "op": "gte"}, ["'gte'", "number"]),
        ({"field": "context.locale", "op": "in", "value": "en"}, ["'in'", "list"]),
        ({"field": "context.locale", "op": "not_in", "value": []}, ["'not_in'", "list"]),
        ({"field": "user_id", "op": "exists", "value": True}, ["'exists'", "no value"]),
        ({"field": "user_id", "op": "missing", "value": 0}, ["'missing'", "no value"]),
        ({"field": "context.page_url", "op": "prefix", "value": 5}, ["'prefix'", "string"]),
        ({"field": "event", "op": "eq"}, ["'eq'", "needs a value"]),
        ({"field": "event", "op": "ne"}, ["'ne'", "needs a value"]),
    ],
)
def test_predicate_op_value_mismatch(
    tmp_path: Path, data: dict[str, Any], predicate: dict[str, Any], words: list[str]
) -> None:
    route(data)["rules"][0]["when"]["where"] = [predicate]
    the_problem(problems_of(tmp_path, data), "stages[1].rules[0].when.where[0]", *words)


@pytest.mark.parametrize("field", ["properties..revenue", "1abc", "a b", ".x", "x."])
def test_bad_predicate_field_path(tmp_path: Path, data: dict[str, Any], field: str) -> None:
    route(data)["rules"][0]["when"]["where"] = [{"field": field, "op": "exists"}]
    the_problem(problems_of(tmp_path, data), "stages[1].rules[0].when.where[0].field")


def test_unknown_predicate_op(tmp_path: Path, data: dict[str, Any]) -> None:
    route(data)["rules"][0]["when"]["where"] = [{"field": "a", "op": "contains", "value": "x"}]
    problem = the_problem(problems_of(tmp_path, data), "stages[1].rules[0].when.where[0].op")
    assert "'eq'" in problem.message  # the allowed ops are listed


# --------------------------------------------------------------------------- environment


def test_env_interpolation(tmp_path: Path, data: dict[str, Any]) -> None:
    data["source"]["topic"] = "${SOURCE_TOPIC}"
    data["description"] = "shop in ${REGION:-eu} for ${TEAM:-nobody}"
    data["stages"][0]["max_age"] = "${MAX_AGE:-7d}"
    data["version"] = "${VERSION:-1}"
    data["source"]["partitions"] = "${PARTITIONS:-8}"
    env = {"SOURCE_TOPIC": "events.raw", "TEAM": "growth", "VERSION": "2026.1"}
    topology = load_topology(write(tmp_path, data), env=env)
    assert topology.spec.source.topic == "events.raw"
    assert topology.spec.description == "shop in eu for growth"
    assert topology.stage_config("validate").max_age == 7 * 86400.0
    assert topology.version == "2026.1"
    assert topology.spec.source.partitions == 8


def test_env_value_wins_over_default(tmp_path: Path, data: dict[str, Any]) -> None:
    data["source"]["topic"] = "${SOURCE_TOPIC:-raw_events}"
    topology = load_topology(write(tmp_path, data), env={"SOURCE_TOPIC": "other"})
    assert topology.spec.source.topic == "other"


def test_empty_default_is_allowed(tmp_path: Path, data: dict[str, Any]) -> None:
    data["description"] = "x${SUFFIX:-}"
    assert load_topology(write(tmp_path, data), env={}).spec.description == "x"


def test_env_is_not_read_from_the_process_when_passed(
    tmp_path: Path, data: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_TEST_TOPIC", "from_process")
    data["source"]["topic"] = "${PIPELINE_TEST_TOPIC:-from_default}"
    path = write(tmp_path, data)
    assert load_topology(path, env={}).spec.source.topic == "from_default"
    assert load_topology(path).spec.source.topic == "from_process"


def test_missing_variable_without_default(tmp_path: Path, data: dict[str, Any]) -> None:
    data["description"] = "owned by ${OWNER}"
    data["topics"]["error_events"]["description"] = "${ERRORS_DOC}"
    problems = problems_of(tmp_path, data, env={"UNRELATED": "1"})
    the_problem(problems, "description", "OWNER", "not set")
    the_problem(problems, "topics.error_events.description", "ERRORS_DOC", "not set")
    assert len(problems) == 2


def test_missing_variable_in_a_list_item(tmp_path: Path, data: dict[str, Any]) -> None:
    route(data)["rules"][0]["when"]["event"] = ["purchase_completed", "${EXTRA_EVENT}"]
    problems = problems_of(tmp_path, data)
    the_problem(problems, "stages[1].rules[0].when.event[1]", "EXTRA_EVENT")


# --------------------------------------------------------------------------- all at once


def test_every_problem_of_a_file_is_reported_together(tmp_path: Path, data: dict[str, Any]) -> None:
    data["source"]["partitons"] = 3  # unknown key in source
    data["topics"]["error_events"]["retention"] = "7d"  # unknown key in a topic
    data["stages"][0]["max_dept"] = 10  # unknown key in a stage
    data["stages"][0]["max_age"] = "5 parsecs"  # bad duration
    route(data)["rules"][0]["when"] = {}  # empty when
    route(data)["rules"][1]["when"]["where"] = [{"field": "x", "op": "gt", "value": "1"}]
    route(data)["rules"][1]["to"] = "bad topic!"  # bad topic name
    data["description"] = "${NOT_SET}"  # missing variable
    problems = problems_of(tmp_path, data)
    found = by_path(problems)
    for path in [
        "source.partitons",
        "topics.error_events.retention",
        "stages[0].max_dept",
        "stages[0].max_age",
        "stages[1].rules[0].when",
        "stages[1].rules[1].when.where[0]",
        "stages[1].rules[1].to",
        "description",
    ]:
        assert path in found, f"{path} not reported; got {found}"


def test_every_semantic_problem_of_a_file_is_reported_together(
    tmp_path: Path, data: dict[str, Any]
) -> None:
    route(data)["rules"][0]["to"] = "nowhere"  # undeclared
    route(data)["rules"][1]["to"] = "dlq"  # the dead-letter topic
    route(data)["default"] = "elsewhere"  # undeclared
    data["topics"]["raw_events"] = {}  # source also an output
    data["topics"]["a/b"] = {}  # bad topic name
    data["dead_letter"]["topic"] = "dlq"  # undeclared
    data["schemas"]["events"]["add_to_cart"] = "missing.avsc"
    (tmp_path / "notjson.avsc").write_text("nope", encoding="utf-8")
    data["schemas"]["envelope"] = "notjson.avsc"
    data["stages"].append(dict(data["stages"][0]))  # duplicate id, and validate last
    problems = problems_of(tmp_path, data)
    the_problem(problems, "stages[1].rules[0].to", "not declared")
    the_problem(problems, "stages[1].rules[1].to", "dead-letter topic")
    the_problem(problems, "stages[1].default", "not declared")
    the_problem(problems, "topics.raw_events", "source topic")
    the_problem(problems, "topics.a/b", "not a valid Kafka topic name")
    the_problem(problems, "dead_letter.topic", "not declared")
    the_problem(problems, "schemas.events.add_to_cart", "not found")
    the_problem(problems, "schemas.envelope", "not JSON")
    the_problem(problems, "stages[2].id", "duplicate stage id")
    the_problem(problems, "stages[2]", "last stage must be a route")
    the_problem(problems, "stages[1]", "route (sink) stage can only be last")


def test_structural_and_semantic_problems_are_reported_together(
    tmp_path: Path, data: dict[str, Any]
) -> None:
    data["owner"] = "growth"  # unknown top-level key
    route(data)["rules"][0]["to"] = "nowhere"  # undeclared topic
    data["schemas"]["events"]["add_to_cart"] = "missing.avsc"  # missing schema
    data["dead_letter"]["topic"] = "dlq"  # undeclared dead-letter topic
    problems = problems_of(tmp_path, data)
    found = by_path(problems)
    for path in [
        "owner",
        "stages[1].rules[0].to",
        "schemas.events.add_to_cart",
        "dead_letter.topic",
    ]:
        assert path in found, f"{path} not reported; got {found}"


def test_check_topologies_reports_every_file(tmp_path: Path, data: dict[str, Any]) -> None:
    first = copy.deepcopy(data)
    first["stages"][0]["max_dept"] = 3
    second = copy.deepcopy(data)
    route(second)["default"] = "nowhere"
    a = write(tmp_path, first, "a.yaml")
    b = write(tmp_path, second, "b.yaml")
    c = write(tmp_path, data, "c.yaml")
    missing = tmp_path / "d.yaml"
    problems = check_topologies([a, EXAMPLE, b, c, missing], env={})
    assert {p.file for p in problems} == {str(a), str(b), str(missing)}
    assert ("stages[0].max_dept", "unknown key") in {(p.path, p.message) for p in problems}
    assert any(p.file == str(b) and p.path == "stages[1].default" for p in problems)
    # Files are reported in the order given.
    order = [p.file for p in problems]
    assert order.index(str(a)) < order.index(str(b)) < order.index(str(missing))


def test_check_topologies_empty_when_all_valid(tmp_path: Path, data: dict[str, Any]) -> None:
    assert check_topologies([EXAMPLE, write(tmp_path, data)], env={}) == []


def test_problem_str_has_file_path_and_message() -> None:
    assert str(Problem("t.yaml", "stages[0].id", "bad")) == "t.yaml: stages[0].id: bad"
    assert str(Problem("t.yaml", "", "file not found")) == "t.yaml: file not found"
