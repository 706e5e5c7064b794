"""A broker outage mid-stream: the broker stops for 30 s while events keep coming, then starts
again. The worker recovers by itself (it is never restarted) and nothing is lost.

The test runs a broker of its own (other ports, another data directory), so stopping it does
not disturb the broker the other tests share.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from pipeline.traffic import TrafficProfile, generate
from tests.integration import kafka_helpers
from tests.integration.kafka_helpers import (
    LocalBroker,
    WorkerProcess,
    make_topology,
    wait_for_total,
)
from tests.integration.test_faults import duplicates_of
from tests.integration.test_worker import check_outputs_match_inputs, ensure_source, send

pytestmark = pytest.mark.kafka

OUTAGE_S = 30.0


def _health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


@pytest.mark.timeout(900)
def test_broker_down_for_30_s_mid_stream(
    kafka_broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = LocalBroker(tmp_path / "kafka").up()
    worker = None
    try:
        monkeypatch.setattr(kafka_helpers, "BOOTSTRAP", broker.bootstrap)
        topology = make_topology(tmp_path)
        ensure_source(topology)
        generated = list(generate(24_000, TrafficProfile(seed=31)))
        expected = len(generated) - sum(1 for r in generated if r.kind == "duplicate")

        # Trackers keep sending through the outage: the producer buffers and retries (its
        # delivery timeout, 300 s, outlasts the outage).
        sent: list[int] = []
        sender = threading.Thread(
            target=lambda: sent.append(send(topology, ((r.key, r.value) for r in generated), rate=300)),
            daemon=True,
        )
        worker = WorkerProcess(topology).start(tmp_path, env={"PIPELINE_SESSION_TIMEOUT_S": "10"})
        sender.start()
        # Mid-stream: the worker is busy when the broker goes away.
        assert wait_for_total(topology.outputs, 3_000, timeout=120) >= 3_000, worker.log()[-3000:]
        done_before = wait_for_total(topology.outputs, 0)

        broker.down()
        stopped = time.monotonic()
        status, body = _health(worker.web_port)
        while time.monotonic() - stopped < OUTAGE_S:
            assert worker.proc is not None and worker.proc.poll() is None, worker.log()[-3000:]
            time.sleep(1)
        broker.up()

        sender.join(timeout=300)
        assert sent == [len(generated)]
        total = wait_for_total(topology.outputs, expected, timeout=300)
        assert total >= expected, worker.log()[-3000:]
        assert worker.proc is not None and worker.proc.poll() is None, "the worker was never restarted"
        assert _health(worker.web_port)[0] == 200
        time.sleep(2)  # let it commit and go idle
        assert worker.terminate() == 0, worker.log()[-3000:]

        check_outputs_match_inputs(topology, allow_duplicates=True)
        repeated, repeated_dead = duplicates_of(topology)
        log = worker.log()
        print(
            f"outage {OUTAGE_S:.0f} s after {done_before} outputs: sent {sent[0]}, expected "
            f"{expected}, outputs {total}, lost 0, repeated events {repeated}, repeated dead "
            f"letters {repeated_dead}; /health during the outage: {status} {body}; batch "
            f"failures logged: {log.count('A batch failed')}"
        )
        assert "gave up" not in log and "fetch loop stopped" not in log
    finally:
        if worker is not None:
            worker.kill()
        broker.down()
