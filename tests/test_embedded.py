"""Embedded mode: a file in, one .jsonl per topic out, every input line in exactly one of them."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import embedded
from pipeline.core.deadletter import decode_payload
from pipeline.embedded import read_lines, run_file
from pipeline.topology import Topology

FIXED = 1_795_000_000.0
NOW_MS = int(FIXED * 1000)
TOPICS = {"revenue_events", "error_events", "processed_events", "bot_events", "invalid_events"}
"""The topics events are routed to (one output per input line)."""
DERIVED = {"aggregates"}
"""Topics of records derived from the events (the aggregate stages' final records)."""


def base64_or_text(record: dict) -> bytes:
    from pipeline.core.deadletter import decode_payload

    return decode_payload(record)


def line(name: str, user: str = "u1", **fields: Any) -> bytes:
    value = {"event": name, "timestamp": NOW_MS - 60_000, "user_id": user, **fields}
    return orjson.dumps(value)


PURCHASE = {
    "order_id": "o1",
    "revenue": 12.5,
    "currency": "EUR",
    "products": [{"product_id": "p1", "price": 12.5, "quantity": 1}],
}

# (line bytes, expected topic, expected dead-letter reason or None)
MIXED: list[tuple[bytes, str, str | None]] = [
    (line("purchase_completed", properties=PURCHASE), "revenue_events", None),
    (line("subscription_started", properties={"plan": "pro"}), "revenue_events", None),
    (line("refund_issued"), "revenue_events", None),
    (line("error_occurred", properties={"error_type": "Crash"}), "error_events", None),
    (line("page_viewed"), "processed_events", None),
    (
        line("add_to_cart", properties={"product_id": "p", "price": 1, "quantity": 2}),
        "processed_events",
        None,
    ),
    (line("page_viewed", user="crlf") + b"\r", "processed_events", None),  # CRLF line
    (
        line("purchase_completed", properties={**PURCHASE, "revenue": -1}),
        "invalid_events",
        "schema_violation",
    ),
    (b'{"event": "page_viewed", "timestamp": ', "invalid_events", "malformed_json"),
    (b'{"event": "caf\xe9", "user_id": "\xff\xfe"}', "invalid_events", "invalid_utf8"),
    (b"\x00\x01\x02\x80\x81", "invalid_events", "invalid_utf8"),
    (b"", "invalid_events", "empty_payload"),  # blank line
    (b"\r", "invalid_events", "empty_payload"),  # blank CRLF line
    (b"   ", "invalid_events", "malformed_json"),
    (b'[{"event": "page_viewed"}]', "invalid_events", "not_an_object"),
    (line("page_viewed", user=None), "invalid_events", "missing_identity"),
    (line("page_viewed", timestamp="yesterday"), "invalid_events", "bad_timestamp"),
    (
        b'{"event": "page_viewed", "pad": "' + b"x" * 2_000_000 + b'"}',
        "invalid_events",
        "payload_too_large",
    ),  # a 2 MB line
    (line("error_boundary_hit"), "error_events", None),
]


def write_input(path: Path, lines: list[bytes], *, final_newline: bool = True) -> bytes:
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    path.write_bytes(data)
    return data


def output_lines(out: Path, *, derived: bool = False) -> dict[str, list[bytes]]:
    """The lines of each topic's file (the derived topics only with ``derived``)."""
    result = {}
    for file in sorted(out.glob("*.jsonl")):
        if file.stem in DERIVED and not derived:
            continue
        data = file.read_bytes()
        assert data == b"" or data.endswith(b"\n")
        result[file.stem] = data.splitlines()
    return result


def run(
    topology: Topology, tmp_path: Path, lines: list[bytes], **kw: Any
) -> tuple[Any, dict[str, list[bytes]]]:
    source = tmp_path / "in.jsonl"
    write_input(source, lines, **kw)
    out = tmp_path / "out"
    summary = run_file(topology, source, out, clock=lambda: FIXED)
    return summary, output_lines(out)


def test_mixed_file_every_line_in_exactly_one_output(
    example_topology: Topology, tmp_path: Path
) -> None:
    lines = [value for value, _, _ in MIXED]
    summary, outputs = run(example_topology, tmp_path, lines)

    assert set(outputs) == TOPICS
    total = sum(len(v) for v in outputs.values())
    assert total == len(lines) == summary.input == len(MIXED)

    expected = Counter(topic for _, topic, _ in MIXED)
    assert {t: len(v) for t, v in outputs.items()} == {t: expected.get(t, 0) for t in TOPICS}
    assert summary.outputs == {t: expected.get(t, 0) for t in TOPICS}

    # Every output line is one JSON document.
    for topic, values in outputs.items():
        for value in values:
            decoded = orjson.loads(value)
            if topic == "invalid_events":
                # The line a dead letter came from: topic "file:<input>", offset = line index.
                source = decoded["source"]
                assert source["topic"].startswith("file:") and source["partition"] == 0
                assert lines[source["offset"]].removesuffix(b"\r").startswith(
                    base64_or_text(decoded)
                )
            else:
                assert type(decoded["timestamp"]) is int

    offsets = [orjson.loads(v)["source"]["offset"] for v in outputs["invalid_events"]]
    assert len(set(offsets)) == len(offsets)
    reasons = Counter(orjson.loads(v)["reason"] for v in outputs["invalid_events"])
    assert reasons == Counter(r for _, _, r in MIXED if r is not None)
    assert summary.dead_letters == {f"validate:{r}": n for r, n in sorted(reasons.items())}


def test_each_line_goes_where_the_rules_say(example_topology: Topology, tmp_path: Path) -> None:
    for i, (value, topic, reason) in enumerate(MIXED):
        case = tmp_path / str(i)
        case.mkdir()
        _, outputs = run(example_topology, case, [value])
        [(got_topic, [out])] = [(t, v) for t, v in outputs.items() if v]
        assert got_topic == topic, (value[:80], got_topic)
        if reason is not None:
            assert orjson.loads(out)["reason"] == reason


def test_dead_letters_keep_the_original_line_without_its_line_break(
    example_topology: Topology, tmp_path: Path
) -> None:
    lines = [b"not json\r", b"\xff\xfe binary", b'{"event": 1}']
    _, outputs = run(example_topology, tmp_path, lines)
    payloads = [decode_payload(orjson.loads(v)) for v in outputs["invalid_events"]]
    assert payloads == [b"not json", b"\xff\xfe binary", b'{"event": 1}']


def test_crlf_file(example_topology: Topology, tmp_path: Path) -> None:
    lines = [line("page_viewed", user=f"u{i}") for i in range(3)]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\r\n".join(lines) + b"\r\n")
    summary = run_file(example_topology, source, tmp_path / "out", clock=lambda: FIXED)
    assert summary.input == 3
    assert summary.outputs["processed_events"] == 3
    assert summary.dead_letters == {}


def test_last_line_without_newline_counts(example_topology: Topology, tmp_path: Path) -> None:
    summary, outputs = run(
        example_topology, tmp_path, [line("page_viewed"), b"junk"], final_newline=False
    )
    assert summary.input == 2
    assert len(outputs["processed_events"]) == 1 and len(outputs["invalid_events"]) == 1


def test_trailing_blank_lines_are_input_lines(example_topology: Topology, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(line("page_viewed") + b"\n\n\n")
    summary = run_file(example_topology, source, tmp_path / "out", clock=lambda: FIXED)
    assert summary.input == 3
    assert summary.dead_letters == {"validate:empty_payload": 2}


def test_summary_json_shape(example_topology: Topology, tmp_path: Path) -> None:
    lines = [value for value, _, _ in MIXED]
    summary, _ = run(example_topology, tmp_path, lines)
    written = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert set(written) == {"input", "outputs", "dropped", "dead_letters", "aggregates"}
    assert written["input"] == len(lines)
    assert set(written["outputs"]) == TOPICS
    assert all(isinstance(n, int) for n in written["outputs"].values())
    # Every line is accounted for: routed, dead-lettered, or dropped on purpose (duplicates).
    assert sum(written["outputs"].values()) + sum(written["dropped"].values()) == written["input"]
    assert sum(written["dead_letters"].values()) == written["outputs"]["invalid_events"]
    assert list(written["dead_letters"]) == sorted(written["dead_letters"])
    assert written == summary.to_json()
    assert summary.seconds >= 0


def test_every_declared_topic_has_a_file_even_when_empty(
    example_topology: Topology, tmp_path: Path
) -> None:
    summary, outputs = run(example_topology, tmp_path, [line("page_viewed")])
    assert set(outputs) == TOPICS
    assert outputs["revenue_events"] == [] and outputs["invalid_events"] == []
    assert summary.outputs == {
        "revenue_events": 0,
        "error_events": 0,
        "processed_events": 1,
        "bot_events": 0,
        "invalid_events": 0,
    }


def test_empty_input_file(example_topology: Topology, tmp_path: Path) -> None:
    source = tmp_path / "empty.jsonl"
    source.write_bytes(b"")
    summary = run_file(example_topology, source, tmp_path / "out", clock=lambda: FIXED)
    assert summary.input == 0
    assert set(output_lines(tmp_path / "out", derived=True)) == TOPICS | DERIVED
    assert orjson.loads((tmp_path / "out" / "summary.json").read_bytes()) == {
        "input": 0,
        "outputs": dict.fromkeys(TOPICS, 0),
        "dropped": {},
        "dead_letters": {},
        "aggregates": dict.fromkeys(DERIVED, 0),
    }


def test_output_dir_is_created_and_overwritten(example_topology: Topology, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    out = tmp_path / "deep" / "er" / "out"
    write_input(source, [line("page_viewed")] * 3)
    run_file(example_topology, source, out, clock=lambda: FIXED)
    write_input(source, [line("page_viewed")])
    run_file(example_topology, source, out, clock=lambda: FIXED)
    assert len(output_lines(out)["processed_events"]) == 1


def test_batches_give_the_same_result_as_one_batch(
    example_topology: Topology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [value for value, _, _ in MIXED] * 3
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    one_summary, one = run(example_topology, tmp_path / "one", lines)
    monkeypatch.setattr(embedded, "BATCH_SIZE", 4)
    many_summary, many = run(example_topology, tmp_path / "many", lines)
    assert many_summary.to_json() == one_summary.to_json()

    def without_file_name(values: list[bytes]) -> list[bytes]:
        # Dead letters name their input file, which differs between the two runs.
        normalised = []
        for value in values:
            record = orjson.loads(value)
            if isinstance(record.get("source"), dict):
                record["source"]["topic"] = "file:input"
            normalised.append(orjson.dumps(record, option=orjson.OPT_SORT_KEYS))
        return sorted(normalised)

    assert {t: without_file_name(v) for t, v in many.items()} == {
        t: without_file_name(v) for t, v in one.items()
    }


def test_injected_clock_decides_validity(example_topology: Topology, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_input(source, [line("page_viewed")])
    late = run_file(example_topology, source, tmp_path / "a", clock=lambda: FIXED + 40 * 86400)
    assert late.dead_letters == {"validate:timestamp_out_of_range": 1}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a\nb\n", [b"a", b"b"]),
        (b"a\r\nb\r\n", [b"a", b"b"]),
        (b"a\nb", [b"a", b"b"]),
        (b"\n\n", [b"", b""]),
        (b"\r\n", [b""]),
        (b"a\rb\n", [b"a\rb"]),  # a lone CR is not a line break
        (b"x\r", [b"x\r"]),  # nor at the very end
        (b"", []),
        (b"\xff\n\x00", [b"\xff", b"\x00"]),
    ],
)
def test_read_lines(data: bytes, expected: list[bytes]) -> None:
    assert list(read_lines(io.BytesIO(data))) == expected


def test_resent_lines_are_accounted_as_dropped_duplicates(
    example_topology: Topology, tmp_path: Path
) -> None:
    lines = [line("page_viewed"), line("video_played")]
    summary, outputs = run(example_topology, tmp_path, lines + lines + [lines[0]])
    assert sum(summary.outputs.values()) == 2
    assert summary.dropped == {"dedupe:duplicate": 3}
    assert sum(summary.outputs.values()) + sum(summary.dropped.values()) == summary.input == 5


def test_aggregate_records_are_written_and_counted_apart(
    example_topology: Topology, tmp_path: Path
) -> None:
    lines = [line("page_viewed", user=f"u{i}") for i in range(3)] + [
        line("purchase_completed", properties=PURCHASE)
    ]
    summary, _ = run(example_topology, tmp_path, lines)
    assert sum(summary.outputs.values()) + sum(summary.dropped.values()) == summary.input == 4
    records = [orjson.loads(v) for v in output_lines(tmp_path / "out", derived=True)["aggregates"]]
    assert summary.aggregates == {"aggregates": len(records)}
    by_aggregate = {(r["aggregate"], tuple(r["group"].values())): r for r in records}
    start = (NOW_MS - 60_000) // 60_000 * 60_000
    events = by_aggregate[("events_per_minute", ("page_viewed",))]
    assert (events["window_start"], events["window_end"]) == (start, start + 60_000)
    assert events["measures"] == {"events": 3}
    assert by_aggregate[("revenue_per_minute", ("EUR",))]["measures"] == {"orders": 1, "revenue": 12.5}
    assert by_aggregate[("active_users_per_minute", ())]["measures"] == {"users": 3}  # u0, u1, u2
    assert by_aggregate[("active_users_per_day", ())]["window_start"] == start // 86_400_000 * 86_400_000
