"""The worker's metrics (``pipeline/metrics.py``): values after synthetic batches, label caps,
and an exposition that ``promtool check metrics`` accepts."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from pipeline.core.processor import Processor
from pipeline.core.reasons import Reason
from pipeline.core.records import RawMessage
from pipeline.metrics import (
    CONTENT_TYPE,
    EVENT_LAG_BUCKETS,
    OTHER_GROUP,
    BulkHistogram,
    PipelineMetrics,
)
from pipeline.topology import Topology

FIXED = 1_795_000_000.0
NOW_MS = int(FIXED * 1000)

EXPECTED_NAMES = {
    "pipeline_build_info",
    "pipeline_events_received_total",
    "pipeline_events_emitted_total",
    "pipeline_events_dropped_total",
    "pipeline_dead_letters_total",
    "pipeline_duplicates_total",
    "pipeline_enricher_outcomes_total",
    "pipeline_enricher_enabled",
    "pipeline_stage_duration_seconds",
    "pipeline_batch_events",
    "pipeline_event_lag_seconds",
    "pipeline_consumer_lag",
    "pipeline_assigned_partitions",
    "pipeline_late_events_total",
    "pipeline_aggregate_value",
    "pipeline_dedupe_keys",
    "pipeline_geoip_database_build_timestamp_seconds",
    "pipeline_last_batch_timestamp_seconds",
    "pipeline_delivery_failures_total",
    "pipeline_batch_failures_total",
    "pipeline_output_delivery_seconds",
}


class Batch:
    """What ``record_batch`` reads from a ``BatchContext``."""

    def __init__(
        self,
        counters: dict[tuple[str, str], int] | None = None,
        dead_letters: dict[tuple[str, str], int] | None = None,
    ) -> None:
        self.counters: Counter[tuple[str, str]] = Counter(counters or {})
        self.dead_letters: Counter[tuple[str, str]] = Counter(dead_letters or {})


def make_metrics(**overrides: Any) -> PipelineMetrics:
    settings: dict[str, Any] = {
        "topology": "ecommerce",
        "topology_version": "1",
        "version": "9.9.9",
        "input_topics": ["raw_events", "pipeline-ecommerce-dedupe-repartition"],
        "output_topics": ["processed_events", "invalid_events"],
        "enrichers": {"geo": "geoip", "bot": "bot"},
        "dedupe_stages": ["dedupe"],
        "clock": lambda: FIXED,
    }
    settings.update(overrides)
    return PipelineMetrics(**settings)


def value(metrics: PipelineMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def series(metrics: PipelineMetrics, name: str) -> list[dict[str, str]]:
    """Label sets of every sample called ``name`` in the rendered exposition."""
    found = []
    for family in text_string_to_metric_families(metrics.render().decode()):
        found += [s.labels for s in family.samples if s.name == name]
    return found


# -- definitions ---------------------------------------------------------------------------------


def test_defines_every_metric_of_the_contract() -> None:
    names = make_metrics().metric_names()
    assert {n for n in names if n.startswith("pipeline_")} == EXPECTED_NAMES
    assert "process_start_time_seconds" in names  # the restart alert's input
    without = make_metrics(process_metrics=False).metric_names()
    assert not [n for n in without if n.startswith("process_")]


def test_no_global_registry_and_instances_are_independent() -> None:
    a, b = make_metrics(), make_metrics()
    a.record_batch(Batch(), received={"raw_events": 3}, emitted={})
    assert value(a, "pipeline_events_received_total", topic="raw_events") == 3
    assert value(b, "pipeline_events_received_total", topic="raw_events") == 0
    assert (
        REGISTRY.get_sample_value("pipeline_events_received_total", {"topic": "raw_events"}) is None
    )


def test_build_info_and_series_that_exist_before_the_first_batch() -> None:
    metrics = make_metrics()
    assert (
        value(
            metrics,
            "pipeline_build_info",
            version="9.9.9",
            topology="ecommerce",
            topology_version="1",
        )
        == 1
    )
    # So "no input" alerts and rate() work from the first scrape.
    assert value(metrics, "pipeline_events_received_total", topic="raw_events") == 0
    assert value(metrics, "pipeline_events_emitted_total", topic="invalid_events") == 0
    assert value(metrics, "pipeline_duplicates_total", stage="dedupe") == 0
    assert value(metrics, "pipeline_last_batch_timestamp_seconds") == 0
    assert value(metrics, "pipeline_delivery_failures_total") == 0


def test_render_is_the_text_format_without_created_series() -> None:
    metrics = make_metrics()
    metrics.record_batch(Batch(), received={"raw_events": 1}, emitted={"processed_events": 1})
    text = metrics.render().decode()
    assert metrics.content_type == CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert 'pipeline_events_received_total{topic="raw_events"} 1.0' in text
    assert "_created" not in text


def test_for_topology_reads_stages_and_topics(example_topology: Topology) -> None:
    metrics = PipelineMetrics.for_topology(
        example_topology, repartition_topics=["pipeline-ecommerce-dedupe-repartition"]
    )
    assert (
        value(
            metrics,
            "pipeline_build_info",
            version=metrics_version(),
            topology="ecommerce",
            topology_version="1",
        )
        == 1
    )
    received = {s["topic"] for s in series(metrics, "pipeline_events_received_total")}
    assert received == {"raw_events", "pipeline-ecommerce-dedupe-repartition"}
    emitted = {s["topic"] for s in series(metrics, "pipeline_events_emitted_total")}
    assert emitted == {
        "aggregates",
        "revenue_events",
        "error_events",
        "processed_events",
        "bot_events",
        "invalid_events",
        "pipeline-ecommerce-dedupe-repartition",
    }
    assert metrics._enrichers == {
        "consent": "consent",
        "pii": "pii",
        "user_agent": "user_agent",
        "bot": "bot",
        "geo": "geoip",
        "ip_anonymize": "ip_anonymize",
        "campaign": "campaign",
        "referrer": "referrer",
    }


def metrics_version() -> str:
    import pipeline

    return pipeline.__version__


# -- per batch -----------------------------------------------------------------------------------


def test_record_batch_counts_counters_dead_letters_and_topics() -> None:
    metrics = make_metrics()
    batch = Batch(
        counters={
            ("dedupe", "unique"): 90,
            ("dedupe", "duplicate"): 4,
            ("dedupe", "repartitioned"): 6,
            ("geo", "hit"): 70,
            ("geo", "miss"): 5,
            ("geo", "skipped"): 14,
            ("geo", "error"): 1,
            ("bot", "hit"): 3,
            ("bot", "drop"): 2,
            ("route", "error"): 1,  # a stage error: counted as a dead letter, not here
        },
        dead_letters={
            (Reason.MALFORMED_JSON, "validate"): 3,
            ("stage_error", "route"): 1,
            ("made_up_reason", "validate"): 2,
        },
    )
    for _ in range(2):
        metrics.record_batch(
            batch,
            received={"raw_events": 100, "pipeline-ecommerce-dedupe-repartition": 0},
            emitted={
                "processed_events": 86,
                "invalid_events": 6,
                "pipeline-ecommerce-dedupe-repartition": 6,
            },
            stage_seconds={"validate": 0.002, "geo": 0.01},
        )

    assert value(metrics, "pipeline_events_received_total", topic="raw_events") == 200
    assert value(metrics, "pipeline_events_emitted_total", topic="processed_events") == 172
    assert (
        value(
            metrics, "pipeline_events_emitted_total", topic="pipeline-ecommerce-dedupe-repartition"
        )
        == 12
    )
    assert value(metrics, "pipeline_duplicates_total", stage="dedupe") == 8
    assert value(metrics, "pipeline_events_dropped_total", stage="dedupe", reason="duplicate") == 8
    assert (
        value(metrics, "pipeline_events_dropped_total", stage="dedupe", reason="repartitioned")
        == 12
    )
    assert value(metrics, "pipeline_events_dropped_total", stage="bot", reason="enricher_drop") == 4
    for outcome, n in {"hit": 140, "miss": 10, "skipped": 28, "error": 2}.items():
        assert (
            value(
                metrics,
                "pipeline_enricher_outcomes_total",
                stage="geo",
                enricher="geoip",
                outcome=outcome,
            )
            == n
        )
    assert (
        value(
            metrics, "pipeline_enricher_outcomes_total", stage="bot", enricher="bot", outcome="drop"
        )
        == 4
    )
    assert (
        value(metrics, "pipeline_dead_letters_total", stage="validate", reason="malformed_json")
        == 6
    )
    assert value(metrics, "pipeline_dead_letters_total", stage="route", reason="stage_error") == 2
    assert value(metrics, "pipeline_dead_letters_total", stage="validate", reason="other") == 4
    assert value(metrics, "pipeline_stage_duration_seconds_count", stage="geo") == 2
    assert value(metrics, "pipeline_stage_duration_seconds_sum", stage="geo") == pytest.approx(0.02)
    assert (
        value(metrics, "pipeline_stage_duration_seconds_bucket", stage="validate", le="0.0025") == 2
    )
    assert (
        value(metrics, "pipeline_stage_duration_seconds_bucket", stage="validate", le="0.001") == 0
    )
    assert value(metrics, "pipeline_batch_events_count") == 2
    assert value(metrics, "pipeline_batch_events_sum") == 200
    assert value(metrics, "pipeline_last_batch_timestamp_seconds") == FIXED
    # Only the fixed outcomes and reasons become labels; "unique" and stage errors do not.
    labels = series(metrics, "pipeline_enricher_outcomes_total")
    assert {s["outcome"] for s in labels} <= {"hit", "miss", "error", "skipped", "drop"}
    assert {s["stage"] for s in labels} == {"geo", "bot"}
    assert not [
        s for s in series(metrics, "pipeline_events_dropped_total") if s["stage"] == "route"
    ]


def test_an_idle_tick_is_not_a_batch_of_events() -> None:
    # prepare_idle: the aggregates close windows by the clock, with no message handed over.
    metrics = make_metrics()
    metrics.record_batch(
        Batch(), received={"raw_events": 5}, emitted={}, stage_seconds={"validate": 0.001}
    )
    metrics.record_batch(Batch(), received={}, emitted={"aggregates": 2}, stage_seconds={})
    assert value(metrics, "pipeline_batch_events_count") == 1
    assert value(metrics, "pipeline_batch_events_sum") == 5
    assert value(metrics, "pipeline_stage_duration_seconds_count", stage="validate") == 1
    assert value(metrics, "pipeline_events_emitted_total", topic="aggregates") == 2
    assert value(metrics, "pipeline_last_batch_timestamp_seconds") == FIXED


def test_duplicates_sent_to_a_topic_are_not_dropped() -> None:
    metrics = make_metrics(duplicates_to_topic=["dedupe"])
    metrics.record_batch(
        Batch({("dedupe", "duplicate"): 5}), received={"raw_events": 5}, emitted={}
    )
    assert value(metrics, "pipeline_duplicates_total", stage="dedupe") == 5
    assert (
        value(metrics, "pipeline_events_dropped_total", stage="dedupe", reason="duplicate") is None
    )


def test_a_real_batch_through_the_example_topology(example_topology: Topology) -> None:
    processor = Processor(example_topology, clock=lambda: FIXED)
    try:
        metrics = PipelineMetrics.for_topology(example_topology, clock=lambda: FIXED + 2)
        metrics.set_stage_statuses(processor.statuses())

        def event(i: int, **extra: Any) -> RawMessage:
            value = {
                "event": "page_viewed",
                "event_id": f"e{i}",
                "timestamp": NOW_MS - 1000 * i,
                "user_id": f"u{i}",
                "context": {"ip": "81.2.69.160"},
                **extra,
            }
            return RawMessage(value=orjson.dumps(value), key=f"u{i}".encode(), topic="raw_events")

        messages = [event(i) for i in range(10)] + [event(3), event(4)]  # two resends
        messages += [RawMessage(value=b"{not json", topic="raw_events")]
        ctx = processor.process(messages)
        emitted = Counter(topic for topic, _, _ in ctx.outputs)
        timestamps = [NOW_MS - 1000 * i for i in range(10)]
        metrics.record_batch(
            ctx,
            received={"raw_events": len(messages)},
            emitted=emitted,
            event_timestamps_ms=timestamps,
        )
    finally:
        processor.close()

    assert value(metrics, "pipeline_events_received_total", topic="raw_events") == 13
    assert value(metrics, "pipeline_events_emitted_total", topic="processed_events") == 10
    assert value(metrics, "pipeline_events_emitted_total", topic="invalid_events") == 1
    assert value(metrics, "pipeline_duplicates_total", stage="dedupe") == 2
    assert value(metrics, "pipeline_events_dropped_total", stage="dedupe", reason="duplicate") == 2
    assert (
        value(metrics, "pipeline_dead_letters_total", stage="validate", reason="malformed_json")
        == 1
    )
    # Every event passed every enrich stage once, whatever its outcome.
    for stage, enricher in metrics._enrichers.items():
        outcomes = [
            value(
                metrics,
                "pipeline_enricher_outcomes_total",
                stage=stage,
                enricher=enricher,
                outcome=o,
            )
            or 0
            for o in ("hit", "miss", "skipped", "error", "drop")
        ]
        assert sum(outcomes) == 10, stage
    # No GeoIP database in the test environment: the optional geo stage runs disabled.
    assert value(metrics, "pipeline_enricher_enabled", stage="geo", enricher="geoip") == 0
    assert (
        value(metrics, "pipeline_enricher_enabled", stage="user_agent", enricher="user_agent") == 1
    )
    # Event lags: 2 s (the clock) + 0..9 s.
    assert value(metrics, "pipeline_event_lag_seconds_count") == 10
    assert value(metrics, "pipeline_event_lag_seconds_sum") == pytest.approx(
        sum(2 + i for i in range(10))
    )
    assert value(metrics, "pipeline_event_lag_seconds_bucket", le="5.0") == 4
    assert value(metrics, "pipeline_event_lag_seconds_bucket", le="10.0") == 9


def test_delivery_and_late_events() -> None:
    metrics = make_metrics()
    metrics.record_delivery(0.02)
    metrics.record_delivery(3.0, failed_messages=7)
    metrics.record_late_events("revenue_per_minute", 3)
    metrics.record_batch_failure(RuntimeError("a bug"))
    metrics.record_batch_failure(RuntimeError("a bug"))
    assert value(metrics, "pipeline_batch_failures_total", error="RuntimeError") == 2
    assert value(metrics, "pipeline_output_delivery_seconds_count") == 2
    assert value(metrics, "pipeline_output_delivery_seconds_bucket", le="0.025") == 1
    assert value(metrics, "pipeline_delivery_failures_total") == 7
    assert value(metrics, "pipeline_late_events_total", aggregate="revenue_per_minute") == 3


# -- the event-lag histogram -------------------------------------------------------------------


def reference(values: list[float]) -> dict[str, float]:
    """What prometheus_client's own Histogram reports for the same observations."""
    registry = CollectorRegistry()
    histogram = Histogram("ref_seconds", "reference", buckets=EVENT_LAG_BUCKETS, registry=registry)
    for v in values:
        histogram.observe(max(v, 0.0))
    return {
        (s.labels.get("le") or s.name): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def bulk(values: list[float], *, as_times: bool = False) -> dict[str, float]:
    metrics = make_metrics()
    if as_times:
        # Event times are integer epoch milliseconds (the values are whole milliseconds).
        metrics.observe_event_times([NOW_MS - round(v * 1000) for v in values], now=FIXED)
    else:
        metrics.observe_event_lags(values)
    return {
        (s.labels.get("le") or s.name.replace("pipeline_event_lag", "ref")): s.value
        for family in metrics.registry.collect()
        if family.name == "pipeline_event_lag_seconds"
        for s in family.samples
    }


@pytest.mark.parametrize("as_times", [False, True])
def test_bulk_histogram_matches_prometheus_client(as_times: bool) -> None:
    import random

    rng = random.Random(5)
    values = [rng.expovariate(1 / 30) for _ in range(5000)]
    values += list(EVENT_LAG_BUCKETS)  # exactly on a bound: counted in that bucket (le)
    values += [-3.0, -0.5, 0.0, 10**7]  # clock skew counts as 0; beyond the last bound: +Inf
    values = [round(v, 3) for v in values]
    got, want = bulk(values, as_times=as_times), reference(values)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-6), key


def test_sampled_event_lags_weigh_each_sample() -> None:
    import random

    rng = random.Random(7)
    lags = [rng.expovariate(1 / 30) for _ in range(20_000)]
    exact, sampled = make_metrics(), make_metrics(lag_sample_every=4)
    exact.observe_event_lags(lags)
    sampled.observe_event_lags(lags)
    sampled.observe_event_times([NOW_MS - round(v * 1000) for v in lags], now=FIXED)
    assert value(sampled, "pipeline_event_lag_seconds_count") == 2 * 20_000
    for le in ("10.0", "30.0", "60.0", "120.0"):
        want = value(exact, "pipeline_event_lag_seconds_bucket", le=le)
        got = value(sampled, "pipeline_event_lag_seconds_bucket", le=le)
        assert got == pytest.approx(2 * want, rel=0.05), le
    with pytest.raises(ValueError):
        make_metrics(lag_sample_every=0)


def test_bulk_histogram_accumulates_and_ignores_empty_batches() -> None:
    histogram = BulkHistogram("x_seconds", "x", [1.0, 10.0])
    histogram.observe_many([])
    histogram.observe_ages(100.0, [])
    histogram.observe_many([0.5, 5.0])
    histogram.observe_ages(100.0, [99.5, 50.0, 101.0])  # ages 0.5, 50, -1 -> 0
    assert histogram.snapshot() == ([(1.0, 3), (10.0, 4)], 5, 56.0)
    histogram.observe_many([2.0], weight=3)
    assert histogram.snapshot() == ([(1.0, 3), (10.0, 7)], 8, 62.0)
    with pytest.raises(ValueError):
        BulkHistogram("y_seconds", "y", [1.0, 1.0])


# -- snapshots and label caps ------------------------------------------------------------------


def test_aggregate_groups_are_capped_with_the_rest_summed() -> None:
    metrics = make_metrics(max_groups=10)
    values = {f"sku-{i:03}": float(i) for i in range(100)}
    metrics.set_aggregate_values("revenue_per_sku", "revenue", values)
    exported = {
        s["group"]: value(metrics, "pipeline_aggregate_value", **s)
        for s in series(metrics, "pipeline_aggregate_value")
    }
    assert len(exported) == 10
    assert {g for g in exported if g != OTHER_GROUP} == {f"sku-{i:03}" for i in range(91, 100)}
    assert exported[OTHER_GROUP] == sum(range(91))
    assert sum(exported.values()) == sum(values.values())

    # Fewer groups later: the ones that vanished are removed, no "__other__" needed.
    metrics.set_aggregate_values(
        "revenue_per_sku", "revenue", {"sku-001": 5.0, "sku-002": float("nan")}
    )
    assert series(metrics, "pipeline_aggregate_value") == [
        {"aggregate": "revenue_per_sku", "measure": "revenue", "group": "sku-001"}
    ]


def test_aggregate_cap_bounds_series_over_time() -> None:
    metrics = make_metrics()  # default max_groups: 50
    for round_ in range(20):
        groups = {f"user-{round_}-{i}": float(i) for i in range(500)}
        metrics.set_aggregate_values("active_users", "events", groups)
        metrics.set_aggregate_values("active_users", "revenue", groups, max_groups=5)
    labels = series(metrics, "pipeline_aggregate_value")
    assert len([s for s in labels if s["measure"] == "events"]) == 50
    assert len([s for s in labels if s["measure"] == "revenue"]) == 5
    with pytest.raises(ValueError):
        metrics.set_aggregate_values("active_users", "events", {}, max_groups=0)


def test_consumer_lag_and_assignment_follow_rebalances() -> None:
    metrics = make_metrics()
    metrics.set_assignment({"raw_events": [0, 1, 2, 3]})
    metrics.set_consumer_lag({("raw_events", p): 100 * p for p in range(4)})
    assert value(metrics, "pipeline_assigned_partitions", topic="raw_events") == 4
    assert value(metrics, "pipeline_consumer_lag", topic="raw_events", partition="3") == 300

    # A rebalance takes partitions 2 and 3 away: their lag is no longer this worker's to report.
    metrics.set_assignment({"raw_events": [0, 1]})
    assert value(metrics, "pipeline_assigned_partitions", topic="raw_events") == 2
    assert {s["partition"] for s in series(metrics, "pipeline_consumer_lag")} == {"0", "1"}

    metrics.set_consumer_lag({("raw_events", 1): -5})  # a stale high watermark: never negative
    assert series(metrics, "pipeline_consumer_lag") == [{"topic": "raw_events", "partition": "1"}]
    assert value(metrics, "pipeline_consumer_lag", topic="raw_events", partition="1") == 0

    metrics.set_assignment({})
    assert value(metrics, "pipeline_assigned_partitions", topic="raw_events") == 0
    assert series(metrics, "pipeline_consumer_lag") == []


def test_geoip_databases_and_dedupe_keys() -> None:
    metrics = make_metrics()
    metrics.set_geoip_databases("geo", {"city": 1_790_000_000, "asn": 1_790_000_100})
    metrics.set_dedupe_keys("dedupe", 123_456)
    assert (
        value(
            metrics, "pipeline_geoip_database_build_timestamp_seconds", stage="geo", database="asn"
        )
        == 1_790_000_100
    )
    assert value(metrics, "pipeline_dedupe_keys", stage="dedupe") == 123_456
    metrics.set_geoip_databases("geo", {"city": 1_791_000_000})
    assert series(metrics, "pipeline_geoip_database_build_timestamp_seconds") == [
        {"stage": "geo", "database": "city"}
    ]
    with pytest.raises(ValueError, match="unknown GeoIP database"):
        metrics.set_geoip_databases("geo", {"country": 1.0})


def test_geoip_build_epochs_reads_the_enricher() -> None:
    from pipeline.metrics import geoip_build_epochs

    class Meta:
        build_epoch = 1_790_000_000

    class Reader:
        def metadata(self) -> Meta:
            return Meta()

    class Db:
        def __init__(self, role: str) -> None:
            self.role, self.reader = role, Reader()

    class Enricher:
        def __init__(self) -> None:
            self._databases = [Db("city"), Db("asn")]

    assert geoip_build_epochs(Enricher()) == {"city": 1_790_000_000.0, "asn": 1_790_000_000.0}
    assert geoip_build_epochs(object()) == {}


def test_counter_labels_stay_bounded_over_many_batches() -> None:
    metrics = make_metrics()
    for i in range(200):
        metrics.record_batch(
            Batch(
                {("geo", "hit"): i, ("geo", f"weird-{i}"): 1, ("dedupe", "duplicate"): 1},
                {(f"reason-{i}", "validate"): 1, (Reason.TOO_DEEP, "validate"): 1},
            ),
            received={"raw_events": 10},
            emitted={"processed_events": 10},
            stage_seconds={"validate": 0.001},
        )
    assert len(series(metrics, "pipeline_enricher_outcomes_total")) == 1
    assert {s["reason"] for s in series(metrics, "pipeline_dead_letters_total")} == {
        "other",
        "too_deep",
    }


# -- promtool ------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_check_metrics_finds_nothing(example_topology: Topology) -> None:
    metrics = PipelineMetrics.for_topology(
        example_topology, repartition_topics=["pipeline-ecommerce-dedupe-repartition"]
    )
    metrics.set_stage_statuses({"geo": "disabled: no database", "bot": "enabled"})
    metrics.record_batch(
        Batch(
            {("dedupe", "duplicate"): 1, ("geo", "hit"): 3, ("bot", "drop"): 1},
            {(Reason.BAD_TIMESTAMP, "validate"): 1},
        ),
        received={"raw_events": 5},
        emitted={"processed_events": 3, "invalid_events": 1},
        stage_seconds={"validate": 0.001, "geo": 0.002},
        event_timestamps_ms=[NOW_MS - 1500, NOW_MS - 20_000],
    )
    metrics.record_delivery(0.05, failed_messages=1)
    metrics.record_late_events("revenue_per_minute")
    metrics.set_assignment({"raw_events": [0, 1]})
    metrics.set_consumer_lag({("raw_events", 0): 10, ("raw_events", 1): 0})
    metrics.set_dedupe_keys("dedupe", 42)
    metrics.set_geoip_databases("geo", {"city": 1_790_000_000})
    metrics.set_aggregate_values("revenue_per_minute", "revenue", {"EUR": 10.5, "USD": 3.0})
    exposition = metrics.render()

    found = {f.name for f in text_string_to_metric_families(exposition.decode())}
    assert len({n for n in found if n.startswith("pipeline_")}) == len(EXPECTED_NAMES)
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == b"", result.stdout + result.stderr
