"""Every topology's outputs conform to the Avro contracts it declares (conventions §9)."""

from __future__ import annotations

from pathlib import Path

import fastavro
import orjson
import pytest

from pipeline.core.avro_check import compile_schema
from pipeline.embedded import run_file
from pipeline.stages.aggregate import AggregateConfig
from pipeline.topology import load_topology
from pipeline.traffic import TrafficProfile, generate

REPO = Path(__file__).resolve().parents[1]
TOPOLOGIES = sorted((REPO / "topologies").glob("*.yaml"))
JSON_FIELDS = ("properties", "user_properties")


def to_avro_form(event: dict) -> dict:
    """The Avro encoding of an output event: free-form JSON fields become JSON text."""
    record = {k: v for k, v in event.items()}
    for field in JSON_FIELDS:
        record[field] = orjson.dumps(record[field]).decode()
    context = dict(record["context"])
    if "library" in context and context["library"] is not None:
        context["library"] = orjson.dumps(context["library"]).decode()
    record["context"] = context
    return record


@pytest.mark.parametrize("path", TOPOLOGIES, ids=[p.stem for p in TOPOLOGIES])
def test_outputs_conform_to_declared_schemas(path: Path, tmp_path: Path) -> None:
    topology = load_topology(path)
    events = tmp_path / "events.jsonl"
    profile = TrafficProfile(seed=3, invalid_fraction=0.1, duplicate_fraction=0.01)
    records = list(generate(3000, profile))
    resent = sum(1 for r in records if r.kind == "duplicate")
    events.write_bytes(b"\n".join(r.value.replace(b"\n", b" ") for r in records) + b"\n")
    out = tmp_path / "out"
    summary = run_file(topology, events, out)
    assert summary.input == 3000

    envelope = compile_schema(topology.schemas["envelope"])
    envelope_avro = fastavro.parse_schema(topology.schemas["envelope"])
    dead_letter = compile_schema(topology.schemas["dead_letter"])
    dead_letter_avro = fastavro.parse_schema(topology.schemas["dead_letter"])
    dl_topic = topology.spec.dead_letter.topic
    aggregate_schema = orjson.loads((REPO / "avro" / "aggregate.avsc").read_bytes())
    aggregate = compile_schema(aggregate_schema)
    aggregate_avro = fastavro.parse_schema(aggregate_schema)
    aggregate_topics = {
        config.output.topic
        for config in topology.stage_configs.values()
        if isinstance(config, AggregateConfig)
    }
    checked = 0
    for topic in topology.spec.topics:
        for line in (out / f"{topic}.jsonl").read_bytes().splitlines():
            record = orjson.loads(line)
            if topic in aggregate_topics:
                assert aggregate(record, "") is None
                assert fastavro.validation.validate(record, aggregate_avro)
                continue  # derived records, not one per input event
            if topic == dl_topic:
                assert dead_letter(record, "") is None
                assert fastavro.validation.validate(record, dead_letter_avro)
            else:
                assert envelope(record, "") is None
                assert fastavro.validation.validate(to_avro_form(record), envelope_avro)
            checked += 1
    assert checked == 3000 - resent, "every input once, resent events dropped by dedupe"
    assert sum(summary.aggregates.values()) > 0 or not aggregate_topics


@pytest.mark.parametrize("path", TOPOLOGIES, ids=[p.stem for p in TOPOLOGIES])
def test_declared_schemas_are_valid_avro(path: Path) -> None:
    topology = load_topology(path)
    for name, schema in topology.schemas.items():
        fastavro.parse_schema(schema)
        compile_schema(schema)
