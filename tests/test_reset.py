"""``pipeline reset``'s plain half: parsing ``--to``, what a plan refuses, warns and prints.
The Kafka half runs against the real broker in tests/integration/test_reset.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.reset import PartitionMove, ResetPlan, format_plan, parse_target

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("earliest", "earliest"),
        ("LATEST", "latest"),
        ("2026-11-30T12:00:00Z", 1_796_040_000_000),
        ("2026-11-30T12:00:00+01:00", 1_796_036_400_000),
        ("2026-11-30T12:00:00", 1_796_040_000_000),  # no zone: UTC
        ("2026-11-30", 1_795_996_800_000),
        ("1796040000000", 1_796_040_000_000),  # epoch ms, as dlq --since
    ],
)
def test_to_takes_earliest_latest_or_an_iso_time(text: str, expected: str | int) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "1796040000", "2026-13-01"])
def test_anything_else_is_refused_with_the_expected_forms(text: str) -> None:
    with pytest.raises(PipelineError, match="expected earliest, latest or a time"):
        parse_target(text)


def _plan(**overrides: object) -> ResetPlan:
    plan = ResetPlan(
        topology="ecommerce", servers="127.0.0.1:9092", group_id="pipeline-ecommerce",
        source="raw_events", target="earliest", state=False, group_state="empty",
        moves=[PartitionMove(0, 120, 0), PartitionMove(1, None, 0)], dedupe_window_s=86400.0,
    )
    for name, value in overrides.items():
        setattr(plan, name, value)
    return plan


def test_a_dry_run_shows_each_partition_move_and_how_to_apply_it() -> None:
    text = format_plan(_plan())
    assert "group pipeline-ecommerce (empty) on 127.0.0.1:9092" in text
    assert "source raw_events: move to earliest" in text
    assert "          0        120  0" in text
    assert "          1          -  0" in text, "no committed offset yet"
    assert text.endswith("dry run: nothing changed (add --execute to apply)")


def test_rewinding_without_state_warns_that_dedupe_drops_the_replay() -> None:
    plan = _plan()
    assert plan.problems() == []
    (warning,) = plan.warnings()
    assert "first seen less than 86400 s ago are dropped as duplicates" in warning
    assert "add --state" in warning
    skipping = _plan(moves=[PartitionMove(0, 120, 500)], target="latest")
    assert skipping.warnings() == [], "skipping ahead replays nothing"


def test_a_state_reset_lists_what_it_deletes_and_the_other_hosts_state() -> None:
    plan = _plan(
        state=True, target=None, moves=[],
        topics_to_delete=["pipeline-ecommerce-dedupe-repartition", "pipeline-ecommerce-dedupe-dedupe-changelog"],
        local_state=Path(".local/state/pipeline-ecommerce"),
    )
    text = format_plan(plan)
    assert "state: delete 2 topic(s):\n  pipeline-ecommerce-dedupe-repartition\n" in text
    assert "local state: delete .local/state/pipeline-ecommerce" in text
    assert "delete <data dir>/pipeline-ecommerce on every other host" in text
    assert "ConsistencyError" in text
    assert "source" not in text, "the offsets are not moved"
    plan.executed = True
    assert "state: deleted 2 topic(s)" in format_plan(plan)
    assert "dry run" not in format_plan(plan)


def test_a_running_group_is_refused() -> None:
    plan = _plan(members=["pipeline-worker@/10.0.0.7"], group_state="stable")
    (problem,) = plan.problems()
    assert "1 running member(s) (pipeline-worker@/10.0.0.7): stop every worker" in problem
    assert "refused: group pipeline-ecommerce has 1 running member(s)" in format_plan(plan)
    assert plan.to_json()["problems"] == [problem]


def test_a_missing_source_is_refused() -> None:
    assert _plan(moves=[]).problems() == ["the source topic raw_events does not exist"]


def test_the_cli_needs_something_to_reset(capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before any broker is asked (none listens on port 1).
    code = main(["reset", str(REPO / "topologies" / "ecommerce.yaml"), "--broker", "127.0.0.1:1"])
    assert code == 2
    assert "nothing to reset: give --to, --state or both" in capsys.readouterr().err


def test_the_cli_reports_an_unreachable_broker(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["reset", str(REPO / "topologies" / "ecommerce.yaml"), "--to", "earliest",
                 "--broker", "127.0.0.1:1", "--timeout", "1"])
    assert code == 2
    assert "cannot reach Kafka at 127.0.0.1:1" in capsys.readouterr().err
