"""Scale out and fail over for real: worker processes join a running group mid-stream, one is
then killed (``kill -9``), on one machine and the real broker.

Exactly-once mode, so that the check can be exact: every partition stays assigned, partitions
move between live workers (twice) and away from a dead one, and a ``read_committed`` reader
still sees each input event exactly once; every closed aggregate window has one final record
equal to a recomputation from the routed events.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest

from pipeline.traffic import TrafficProfile, generate
from tests.integration.kafka_helpers import (
    WorkerProcess,
    consume_all,
    make_topology,
    topic_size,
    wait_for_total,
    worker_metric,
)
from tests.integration.test_aggregates import (
    MINUTE,
    _flush_events,
    _tune,
    _wait_ready,
    check_final_windows,
)
from tests.integration.test_faults import duplicates_of
from tests.integration.test_worker import check_outputs_match_inputs, ensure_source, send

pytestmark = pytest.mark.kafka

PARTITIONS = 6


def assigned_source_partitions(port: int, source: str) -> int | None:
    """``pipeline_assigned_partitions{topic=<source>}`` of a live worker (None if it does not answer)."""
    value = worker_metric(port, "pipeline_assigned_partitions", topic=source)
    return None if value is None else int(value)


def wait_for_assignment(workers: list[WorkerProcess], source: str, want: list[int], timeout: float = 120.0) -> None:
    """Until the workers own ``want`` source partitions each (in order)."""
    deadline = time.monotonic() + timeout
    got: list[int | None] = []
    while time.monotonic() < deadline:
        got = [assigned_source_partitions(w.web_port, source) for w in workers]
        if got == want:
            return
        time.sleep(0.5)
    raise AssertionError(f"assignment {got}, wanted {want}")


@pytest.mark.timeout(900)
def test_three_workers_join_mid_stream_then_one_is_killed(kafka_broker: str, tmp_path: Path) -> None:
    topology = make_topology(tmp_path, partitions=PARTITIONS)
    _tune(topology.path)
    ensure_source(topology)
    generated = list(generate(24_000, TrafficProfile(seed=41, events_per_second_of_event_time=100.0)))
    duplicates = sum(1 for r in generated if r.kind == "duplicate")
    env = {"PIPELINE_PROCESSING_GUARANTEE": "exactly_once", "PIPELINE_SESSION_TIMEOUT_S": "10"}

    sent: list[int] = []
    sender = threading.Thread(
        target=lambda: sent.append(send(topology, ((r.key, r.value) for r in generated), rate=300)),
        daemon=True,
    )
    a = WorkerProcess(topology).start(tmp_path, env=env)
    workers = [a]
    try:
        _wait_ready(a.web_port)
        wait_for_assignment([a], topology.source, [PARTITIONS])
        sender.start()
        assert wait_for_total(topology.outputs, 2_000, timeout=120) >= 2_000

        # Two more join while events flow: partitions move between live workers.
        b = WorkerProcess(topology).start(tmp_path, env=env)
        c = WorkerProcess(topology).start(tmp_path, env=env)
        workers += [b, c]
        wait_for_assignment(workers, topology.source, [2, 2, 2])
        joined_at = sum(topic_size(t) for t in topology.outputs)

        # One dies without a word: after the session timeout its partitions move to the others.
        assert wait_for_total(topology.outputs, joined_at + 2_000, timeout=120) >= joined_at + 2_000
        b.kill()
        wait_for_assignment([a, c], topology.source, [3, 3])
        killed_at = sum(topic_size(t) for t in topology.outputs)

        sender.join(timeout=300)
        assert sent == [len(generated)]
        template = next(r.value for r in generated if r.kind == "valid" and b'"page_viewed"' in r.value)
        last_ts = max(
            event["timestamp"] for r in generated if r.kind == "valid"
            and isinstance((event := orjson.loads(r.value))["timestamp"], int)
        )
        flush_ts = last_ts + 5 * MINUTE
        total_sent = sent[0] + send(topology, _flush_events(template, flush_ts, PARTITIONS))
        expected = total_sent - duplicates
        assert wait_for_total(topology.outputs, expected, timeout=300) >= expected
        # Sizes count transaction markers too: wait for what a read_committed reader sees.
        deadline = time.monotonic() + 120
        while len(consume_all(topology.outputs)) < expected and time.monotonic() < deadline:
            time.sleep(1)

        check_outputs_match_inputs(topology)  # each input exactly once (read_committed)
        repeated, repeated_dead = duplicates_of(topology)
        assert (repeated, repeated_dead) == (0, 0)
        _, closed = check_final_windows(topology, flush_ts, partitions=PARTITIONS)
        print(
            f"scale-out: sent {total_sent}, expected outputs {expected}, lost 0, repeated 0; "
            f"workers joined after ~{joined_at} outputs, one killed after ~{killed_at}; "
            f"{len(closed)} final windows checked"
        )
        for w in (a, c):
            assert w.terminate() == 0, w.log()[-3000:]
    finally:
        for w in workers:
            w.kill()
