"""Crashes on the real broker: ``kill -9`` the worker mid-stream, restart it, count what came out.

At least once: no input event is missing; a crash may repeat the events of the batches that
were delivered but not yet committed (each repeat carries the original ``event_id``).
Exactly once (``PIPELINE_PROCESSING_GUARANTEE=exactly_once``): a ``read_committed`` consumer
of every output topic sees each input event exactly once, dead letters included.

CI runs the short versions; ``make test-long`` the 200,000-event ones with five crashes.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from pipeline.traffic import TrafficProfile, generate
from tests.integration.kafka_helpers import (
    BOOTSTRAP,
    WorkerProcess,
    consume_all,
    make_topology,
    topic_size,
    wait_for_total,
)
from tests.integration.test_worker import check_outputs_match_inputs, ensure_source, send

pytestmark = pytest.mark.kafka


def crash_and_restart(
    topology, tmp_path: Path, *, events: int, crashes: int, guarantee: str, seed: int
) -> dict[str, int]:
    """Send ``events``, kill -9 the worker ``crashes`` times at random points of the stream
    (restarting it each time), let the last one finish; returns the figures of the run."""
    ensure_source(topology)
    generated = list(generate(events, TrafficProfile(seed=seed)))
    sent = send(topology, ((r.key, r.value) for r in generated))
    expected = sent - sum(1 for r in generated if r.kind == "duplicate")
    env = {
        "PIPELINE_PROCESSING_GUARANTEE": guarantee,
        "PIPELINE_BATCH_MAX_EVENTS": "500",
        # A killed worker's partitions move after the session timeout: keep the test short.
        "PIPELINE_SESSION_TIMEOUT_S": "10",
    }
    rng = random.Random(seed)
    # Crash points: fractions of the expected outputs, increasing.
    points = sorted(rng.uniform(0.05, 0.9) for _ in range(crashes))
    worker = WorkerProcess(topology).start(tmp_path, env=env)
    kills = []
    try:
        for point in points:
            target = int(expected * point)
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                done = sum(topic_size(t) for t in topology.outputs)
                if done >= target:
                    break
                time.sleep(0.1)
            time.sleep(rng.uniform(0, 0.5))  # not always right at a batch boundary
            worker.kill()  # SIGKILL: no chance to finish, commit or abort anything
            kills.append(sum(topic_size(t) for t in topology.outputs))
            # Same web port, so the same transactional id: the predecessor's open transaction
            # is aborted at once.
            worker = WorkerProcess(topology, web_port=worker.web_port).start(tmp_path, env=env)
        total = wait_for_total(topology.outputs, expected, timeout=300)
        assert total >= expected, worker.log()[-3000:]
        # Sizes count transaction markers and aborted records too: wait for what a
        # read_committed reader sees.
        deadline = time.monotonic() + 120
        while len(consume_all(topology.outputs)) < expected and time.monotonic() < deadline:
            time.sleep(1)
        # Let the last worker commit and go idle before counting what a reader sees.
        time.sleep(2)
        assert worker.terminate() == 0, worker.log()[-3000:]
    finally:
        worker.kill()
    return {"sent": sent, "expected": expected, "kills": len(kills), "raw_outputs": total}


def duplicates_of(topology) -> tuple[int, int]:
    """(repeated routed events, repeated dead letters) as a read_committed reader sees them."""
    outputs = consume_all(topology.outputs)
    routed: Counter[str] = Counter()
    dead: Counter[tuple[int, int]] = Counter()
    for r in outputs:
        record = orjson.loads(r.value)
        if r.topic == topology.dead_letter:
            dead[(record["source"]["partition"], record["source"]["offset"])] += 1
        else:
            routed[record["event_id"]] += 1
    return sum(n - 1 for n in routed.values()), sum(n - 1 for n in dead.values())


def check_crashes(
    tmp_path: Path, *, events: int, crashes: int, guarantee: str, seed: int
) -> None:
    """Crash a worker ``crashes`` times in ``events`` events and check what a reader sees."""
    topology = make_topology(tmp_path)
    figures = crash_and_restart(
        topology, tmp_path, events=events, crashes=crashes, guarantee=guarantee, seed=seed
    )
    check_outputs_match_inputs(topology, allow_duplicates=guarantee == "at_least_once")
    repeated, repeated_dead = duplicates_of(topology)
    print(f"{guarantee}: {figures}, repeated events {repeated}, repeated dead letters {repeated_dead}")
    if guarantee == "exactly_once":
        assert (repeated, repeated_dead) == (0, 0)
    else:
        # Bounded: at most what the crashes can leave uncommitted (a commit interval each).
        assert repeated + repeated_dead < figures["expected"] // 2


@pytest.mark.timeout(600)
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_kill_9_twice_mid_stream(kafka_broker: str, tmp_path: Path, guarantee: str) -> None:
    check_crashes(tmp_path, events=30_000, crashes=2, guarantee=guarantee, seed=21)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_kill_9_five_times_in_200k_events(kafka_broker: str, tmp_path: Path, guarantee: str) -> None:
    check_crashes(tmp_path, events=200_000, crashes=5, guarantee=guarantee, seed=22)


@pytest.mark.timeout(600)
def test_exactly_once_outputs_are_invisible_until_committed(kafka_broker: str, tmp_path: Path) -> None:
    """Every routed record of an exactly-once worker is inside a committed transaction: a
    read_uncommitted reader may see aborted ones after a crash, a read_committed one never."""
    topology = make_topology(tmp_path)
    crash_and_restart(topology, tmp_path, events=8_000, crashes=1, guarantee="exactly_once", seed=23)
    committed = len(consume_all(topology.outputs))
    raw = sum(topic_size(t) for t in topology.outputs)
    # Offsets include a commit marker per transaction (and aborted records): raw > committed.
    assert raw > committed
    check_outputs_match_inputs(topology)  # and the committed ones are each input exactly once


@pytest.mark.timeout(600)
def test_a_worker_whose_batches_keep_failing_exits_non_zero_and_loses_nothing(
    kafka_broker: str, tmp_path: Path
) -> None:
    """An output topic that refuses every record (its ``max.message.bytes`` is too small): the
    failed batches are retried with a back-off, then the worker gives up loudly (exit status 1)
    instead of living on with a dead agent. Nothing was committed for them: once the topic is
    fixed, a restarted worker delivers every event."""
    topology = make_topology(tmp_path)
    ensure_source(topology)
    processed = topology.topic("processed_events")
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})

    def set_max_message_bytes(value: str) -> None:
        resource = ConfigResource(
            ResourceType.TOPIC, processed,
            incremental_configs=[ConfigEntry("max.message.bytes", value,
                                             incremental_operation=AlterConfigOpType.SET)],
        )
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=30)

    set_max_message_bytes("100")
    generated = list(generate(3_000, TrafficProfile(seed=24)))
    sent = send(topology, ((r.key, r.value) for r in generated))
    expected = sent - sum(1 for r in generated if r.kind == "duplicate")

    env = {"PIPELINE_MAX_BATCH_FAILURES": "3"}
    worker = WorkerProcess(topology).start(tmp_path, env=env)
    try:
        assert worker.proc is not None
        code = worker.proc.wait(timeout=240)
        log = worker.log()
        assert code == 1, log[-3000:]
        assert "3 batches failed in a row" in log and "Message size too large" in log, log[-3000:]
        assert "Its records are read again in 1 s" in log and "in 2 s" in log

        set_max_message_bytes("1048588")
        worker = WorkerProcess(topology, web_port=worker.web_port).start(tmp_path, env=env)
        assert wait_for_total(topology.outputs, expected, timeout=240) >= expected, worker.log()[-3000:]
        time.sleep(2)
        assert worker.terminate() == 0, worker.log()[-3000:]
    finally:
        worker.kill()
    # Batches partly delivered before they failed are repeated (at least once), never lost.
    check_outputs_match_inputs(topology, allow_duplicates=True)
