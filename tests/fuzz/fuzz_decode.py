"""Fuzz decode + validate (atheris): raw bytes through the shipped topology's whole Processor.

    .venv/bin/python tests/fuzz/fuzz_decode.py [--write-seeds DIR] [libFuzzer flags] [CORPUS_DIR ...]

Each input is one message value, processed alone by the ``Processor`` of
``topologies/ecommerce.yaml`` (validate, dedupe, the enrichers, the aggregates, route) with the
clock fixed. The invariant, checked on every input (any failure is a crash for the fuzzer):

* ``Processor.process`` raises nothing, and no stage raises on the way (no ``stage_error`` dead
  letter, no enricher ``error`` counter);
* the input ends up in exactly one place: one routed output keyed like the input, or one
  dead-letter record that validates against ``avro/dead_letter.avsc``, has a known reason
  code, the input's ``source`` position and key, its payload (or a prefix of it), and the
  reason the validate stage gives the value on its own.

``--write-seeds DIR`` first writes a seed corpus into DIR: records from
``pipeline.traffic.generate`` (valid and invalid, timestamps around the fixed clock) and a few
hand-written hostile values. tests/test_fuzz.py runs a fixed number of iterations with
``-seed=1``; ``make fuzz`` runs for 10 minutes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FIXED = 1_795_000_000.0
"""The injected "now" (seconds), as in tests/conftest.py."""
NOW_MS = int(FIXED * 1000)
TOPOLOGY = REPO / "topologies" / "ecommerce.yaml"
SOURCE, DEAD_LETTER, AGGREGATES = "raw_events", "invalid_events", "aggregates"
KEY = b"fuzz-key"
PARTITION, OFFSET = 3, 4242

HOSTILE_SEEDS = [
    b"",
    b"null",
    b"[1,2,3]",
    b'"page_viewed"',
    b"NaN",
    b'{"event":"x","v":Infinity}',
    b'{"event":"page_viewed","event":42}',
    b'{"event":"a\\u0000b","timestamp":"2026-11-18T11:00:00Z","user_id":"u"}',
    b'{"event":"page_viewed","timestamp":' + str(NOW_MS).encode() + b',"user_id":"\\ud800"}',
    b'{"event":"page_viewed","timestamp":"9999-12-31T23:59:59Z","user_id":"u"}',
    b'{"event":"page_viewed","timestamp":-99999999999999999999,"user_id":"u"}',
    b"\xff\xfe" + '{"event":"x"}'.encode("utf-16-le"),
    b'{"a":' * 1100 + b"1" + b"}" * 1100,
    b"\x00" * 64,
    b"\x02\x0cpage_viewed\x02u",  # Avro-ish bytes on a JSON topic
]


def write_seeds(directory: Path, count: int = 80) -> int:
    """A realistic seed corpus: generated traffic (40% invalid) plus hand-written hostile values."""
    from pipeline.traffic import TrafficProfile, generate

    directory.mkdir(parents=True, exist_ok=True)
    profile = TrafficProfile(
        seed=3, invalid_fraction=0.4, duplicate_fraction=0.0, start_ms=NOW_MS - 3_600_000
    )
    written = 0
    for index, record in enumerate(generate(count, profile)):
        (directory / f"gen-{index:03d}-{record.kind}").write_bytes(record.value)
        written += 1
    for index, value in enumerate(HOSTILE_SEEDS):
        (directory / f"hostile-{index:03d}").write_bytes(value)
        written += 1
    return written


class Harness:
    def __init__(self) -> None:
        from pipeline.core.avro_check import compile_schema
        from pipeline.core.processor import Processor
        from pipeline.core.reasons import Reason
        from pipeline.stages.dedupe import DedupeStage
        from pipeline.topology import load_topology

        env = {"PIPELINE_PII_KEY": os.environ.get("PIPELINE_PII_KEY", "fuzz-only-pii-key-0123456789abcdef")}
        topology = load_topology(TOPOLOGY, env=env)
        self.processor = Processor(topology, clock=lambda: FIXED)
        self.dedupe = [s for s in self.processor.middle if isinstance(s, DedupeStage)]
        self.schema = compile_schema(topology.schemas["dead_letter"])
        self.routes = set(topology.output_topics) - {DEAD_LETTER, AGGREGATES}
        self.reasons = {r.value for r in Reason}

    def check(self, data: bytes) -> None:
        import orjson

        from pipeline.core.deadletter import decode_payload
        from pipeline.core.dedupe_store import MemoryDedupeStore
        from pipeline.core.records import RawMessage
        from pipeline.stages.validate import _Invalid

        for stage in self.dedupe:  # every input is new: nothing may be dropped as a duplicate
            stage.store = MemoryDedupeStore()
        message = RawMessage(
            value=data, key=KEY, topic=SOURCE, partition=PARTITION, offset=OFFSET, timestamp=NOW_MS
        )
        ctx = self.processor.process([message])
        outputs = [o for o in ctx.outputs if o[0] != AGGREGATES]
        assert len(outputs) == 1, f"{len(outputs)} outputs for one input: {outputs!r:.2000}"
        errors = {k: n for k, n in ctx.counters.items() if k[1] == "error" and n}
        assert not errors, f"a stage raised and skipped the event: {errors}"
        topic, key, value = outputs[0]
        record = orjson.loads(value)
        try:
            self.processor.source.check(data, NOW_MS)
            expected = None
        except _Invalid as bad:
            expected = bad
        if topic != DEAD_LETTER:
            assert expected is None, f"invalid ({expected.reason}) but routed to {topic}"
            assert topic in self.routes, topic
            assert key == KEY or (key is None and record.get("consent_stripped") is True)
            assert type(record["timestamp"]) is int
            return
        assert self.schema(record, "") is None, record
        assert record["reason"] in self.reasons and record["reason"] != "stage_error", record
        assert expected is not None, f"a valid value was dead-lettered: {record}"
        assert record["reason"] == expected.reason.value and record["stage"] == "validate", record
        assert record["source"] == {
            "topic": SOURCE, "partition": PARTITION, "offset": OFFSET, "timestamp": NOW_MS
        }, record
        assert key == KEY and record["key"] == KEY.decode()
        assert record["payload_size"] == len(data)
        kept = decode_payload(record)
        assert kept == data if not record["payload_truncated"] else data.startswith(kept)
        assert len(value) <= 1_000_000
        assert sum(ctx.dead_letters.values()) == 1


def main(argv: list[str]) -> None:
    import logging
    import signal

    import atheris

    # An interval timer survives exec: pytest-timeout's alarm (signal method) in the test
    # process was inherited and killed finished runs in CI (exit -14). Runs are bounded by
    # -atheris_runs / -max_total_time and by the caller's subprocess timeout instead.
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)

    # Coverage feedback from the pipeline's own code (orjson is C and not instrumented).
    # Instrumenting everything loaded (atheris.instrument_all) takes minutes: pydantic, ...
    with atheris.instrument_imports(include=["pipeline"]):
        harness = Harness()
    logging.disable(logging.CRITICAL)  # stage failures are asserted on, not logged

    args = list(argv)
    if "--write-seeds" in args:
        at = args.index("--write-seeds")
        print(f"wrote {write_seeds(Path(args[at + 1]))} seeds to {args[at + 1]}", file=sys.stderr)
        del args[at : at + 2]
    harness.check(b'{"warm":"up"}')

    atheris.Setup(args, harness.check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
