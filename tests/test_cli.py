"""The ``pipeline`` command line: exit codes and messages (no broker needed)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from pipeline import __version__
from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "topologies" / "ecommerce.yaml"
ROUTE_INDEX = [s["type"] for s in __import__("yaml").safe_load(EXAMPLE.read_text())["stages"]].index("route")


def bad_topology(tmp_path: Path, example_text: str, name: str = "bad.yaml") -> Path:
    text = (
        example_text.replace("max_depth: 32", "max_dept: 32")
        .replace("to: error_events", "to: errors_typo")
        .replace("default: processed_events", "default: processed events")
    )
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def good_topology(tmp_path: Path, example_text: str, name: str = "good.yaml") -> Path:
    path = tmp_path / name
    path.write_text(example_text, encoding="utf-8")
    return path


def event_line(name: str, **fields: object) -> bytes:
    now_ms = int(time.time() * 1000)
    return orjson.dumps({"event": name, "timestamp": now_ms - 1000, "user_id": "u", **fields})


# ------------------------------------------------------------------ help and version


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["check", "--help"],
        ["run", "--help"],
        ["worker", "--help"],
        ["produce", "--help"],
        ["dlq", "--help"],
        ["topics", "--help"],
        ["aggregates", "--help"],
    ],
)
def test_help_exits_zero(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pipeline")
    if len(argv) > 1:
        assert f"pipeline {argv[0]}" in out


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("check", "run", "worker", "produce", "dlq", "topics", "aggregates"):
        assert command in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pipeline {__version__}"


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["run", str(EXAMPLE)], ["check"]])
def test_usage_errors_exit_two(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_console_script_help() -> None:
    script = Path(sys.executable).with_name("pipeline")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "pipeline"]
    result = subprocess.run(
        [*argv, "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "usage: pipeline" in result.stdout


# ------------------------------------------------------------------ check


def test_check_example_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLE)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"{EXAMPLE}: ok"
    assert captured.err == ""


def test_check_bad_file_prints_every_problem(
    tmp_path: Path, example_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = bad_topology(tmp_path, example_text)
    assert main(["check", str(bad)]) == 1
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert f"{bad}: stages[0].max_dept: unknown key" in err
    assert any(l.startswith(f"{bad}: stages[{ROUTE_INDEX}].default: ") and "topic name" in l for l in err)
    assert err[-1] == f"{len(err) - 1} problem(s) in 1 file(s)"
    assert "ok" not in captured.out
    assert "Traceback" not in captured.err


def test_check_semantic_problems(
    tmp_path: Path, example_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "semantic.yaml"
    path.write_text(
        example_text.replace("to: error_events", "to: errors_typo").replace(
            "topic: invalid_events", "topic: dlq"
        ),
        encoding="utf-8",
    )
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: stages[{ROUTE_INDEX}].rules[2].to: topic 'errors_typo' is not declared under topics" in err
    assert f"{path}: dead_letter.topic: topic 'dlq' is not declared under topics" in err
    assert "2 problem(s) in 1 file(s)" in err


def test_check_several_files_one_bad(
    tmp_path: Path, example_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good = good_topology(tmp_path, example_text, "a.yaml")
    bad = bad_topology(tmp_path, example_text, "b.yaml")
    assert main(["check", str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert f"{good}: ok" in captured.out
    assert str(bad) not in captured.out
    assert f"{bad}: stages[0].max_dept: unknown key" in captured.err
    assert "in 1 file(s)" in captured.err
    assert str(good) not in captured.err


def test_check_several_files_all_good(
    tmp_path: Path, example_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good = good_topology(tmp_path, example_text)
    assert main(["check", str(EXAMPLE), str(good)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{EXAMPLE}: ok", f"{good}: ok"]


def test_check_several_bad_files(
    tmp_path: Path, example_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    one = bad_topology(tmp_path, example_text, "one.yaml")
    missing = tmp_path / "missing.yaml"
    assert main(["check", str(one), str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"{missing}: file not found" in err
    assert "in 2 file(s)" in err


# ------------------------------------------------------------------ run


def test_run_with_invalid_data_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "events.jsonl"
    lines = [
        event_line(
            "purchase_completed",
            properties={
                "order_id": "o",
                "revenue": 1,
                "currency": "EUR",
                "products": [{"product_id": "p", "price": 1, "quantity": 1}],
            },
        ),
        event_line("error_occurred", properties={"error_type": "E"}),
        event_line("page_viewed"),
        b"garbage",
        b"\xff\xfe",
        b"",
    ]
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    assert main(["run", str(EXAMPLE), "--input", str(source), "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("6 input lines in ")
    for topic, n in [
        ("revenue_events", 1),
        ("error_events", 1),
        ("processed_events", 1),
        ("invalid_events", 3),
    ]:
        assert any(l.split() == [topic, str(n)] for l in stdout.splitlines()), stdout
    assert "validate:malformed_json  1" in stdout
    assert "validate:invalid_utf8  1" in stdout
    assert "validate:empty_payload  1" in stdout
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["input"] == 6
    assert sum(summary["outputs"].values()) == 6


def test_run_missing_input_exits_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    code = main(["run", str(EXAMPLE), "--input", str(missing), "--output", str(tmp_path / "o")])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: input file {missing} not found"
    assert "Traceback" not in captured.err
    assert not (tmp_path / "o").exists()


def test_run_with_a_bad_topology_exits_one(
    tmp_path: Path, example_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"{}\n")
    bad = bad_topology(tmp_path, example_text)
    assert main(["run", str(bad), "--input", str(source), "--output", str(tmp_path / "o")]) == 1
    assert f"{bad}: stages[0].max_dept: unknown key" in capsys.readouterr().err


def test_run_with_a_missing_topology_exits_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"{}\n")
    topology = tmp_path / "nope.yaml"
    assert (
        main(["run", str(topology), "--input", str(source), "--output", str(tmp_path / "o")]) == 1
    )
    assert f"{topology}: file not found" in capsys.readouterr().err


def test_run_with_an_unusable_output_dir_exits_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"{}\n")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    assert main(["run", str(EXAMPLE), "--input", str(source), "--output", str(not_a_dir)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_run_with_a_directory_as_input_exits_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", str(EXAMPLE), "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: input file")


def test_check_start_starts_every_stage_and_lists_what_runs_disabled(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GEOIP_CITY_DB", str(tmp_path / "missing.mmdb"))
    assert main(["check", "--start", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{EXAMPLE}: ok"
    assert "  pii: enabled" in out and "  route: enabled" in out
    assert f"  geo: disabled: city database {tmp_path / 'missing.mmdb'} does not exist" in out


def test_check_start_reports_every_stage_that_cannot_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    example_text: str,
) -> None:
    # The file itself is valid: only starting its stages finds the missing key and database.
    path = tmp_path / "strict.yaml"
    path.write_text(example_text.replace("    optional: true\n", ""), encoding="utf-8")
    monkeypatch.delenv("PIPELINE_PII_KEY", raising=False)
    monkeypatch.setenv("GEOIP_CITY_DB", str(tmp_path / "missing.mmdb"))
    assert main(["check", str(path)]) == 0
    capsys.readouterr()

    assert main(["check", "--start", str(path)]) == 1
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert f"{path}: stage 'pii' (enricher pii) cannot start: environment variable " in "\n".join(err)
    assert any(
        line.startswith(f"{path}: stage 'geo' (enricher geoip) cannot start: ")
        and "missing.mmdb does not exist" in line
        for line in err
    )
    assert err[-1] == "2 problem(s) in 1 file(s)"
    assert "ok" not in captured.out
