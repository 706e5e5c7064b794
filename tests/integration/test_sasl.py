"""Every Kafka client over the local broker's SASL_PLAINTEXT listener (PLAIN, 127.0.0.1:9094).

``scripts/kafka-local.sh`` declares one user there, ``pipeline`` / ``pipeline-secret``. Skipped
unless the listener accepts connections (a broker started before the listener was added needs
``scripts/kafka-local.sh down && scripts/kafka-local.sh up``).

- the admin client creates topics and ``pipeline produce`` sends events through it;
- aiokafka, with exactly what Faust derives from ``broker_credentials``, produces and consumes;
- a worker consumes through it with Faust/aiokafka and routes every event (needs ``create_app``
  to pass ``faust_app_kwargs``), its web server bound to ``PIPELINE_WEB_HOST`` only;
- a wrong password fails fast with one ``error:`` line (exit status 2), never hangs;
- the password is in no output.

Topic sizes and contents are read through the PLAINTEXT listener (``kafka_helpers``): the same
broker, so what was written through one listener is what is read through the other.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from pipeline.produce import produce
from pipeline.runtime.admin import ensure_topics
from pipeline.runtime.security import aiokafka_auth, librdkafka_config
from pipeline.settings import Settings
from pipeline.topology import load_topology
from pipeline.traffic import TrafficProfile, generate
from tests.integration.kafka_helpers import (
    REPO,
    WorkerProcess,
    consume_all,
    make_topology,
    topic_size,
    wait_for_total,
)

pytestmark = pytest.mark.kafka

SASL_BOOTSTRAP = os.environ.get("PIPELINE_TEST_SASL_BROKER", "127.0.0.1:9094")
USER, PASSWORD = "pipeline", "pipeline-secret"  # scripts/kafka-local.sh
WRONG_PASSWORD = "not-the-pipeline-password"
SASL_ENV = {
    "PIPELINE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "PIPELINE_KAFKA_SASL_MECHANISM": "PLAIN",
    "PIPELINE_KAFKA_SASL_USERNAME": USER,
    "PIPELINE_KAFKA_SASL_PASSWORD": PASSWORD,
}
WRONG_ENV = {**SASL_ENV, "PIPELINE_KAFKA_SASL_PASSWORD": WRONG_PASSWORD}


def listener_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def sasl_broker(kafka_broker: str) -> str:
    if not listener_open(SASL_BOOTSTRAP):
        pytest.skip(
            f"no SASL_PLAINTEXT listener on {SASL_BOOTSTRAP} (restart the local broker: "
            "scripts/kafka-local.sh down && scripts/kafka-local.sh up)"
        )
    return SASL_BOOTSTRAP


def sasl_settings(env: dict[str, str] = SASL_ENV) -> Settings:
    return Settings.from_env(env=env, broker=SASL_BOOTSTRAP)


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, timeout=timeout,
        check=False,
    )


def test_admin_producer_and_consumer_over_sasl(sasl_broker: str, tmp_path: Path) -> None:
    topology = make_topology(tmp_path, partitions=2)
    settings = sasl_settings()
    created = ensure_topics(load_topology(topology.path), settings)
    assert topology.source in created and set(topology.outputs) <= set(created)

    records = [(r.key, r.value) for r in generate(500, TrafficProfile(seed=3))]
    result = produce(settings, topology.source, records)
    assert (result.sent, result.failed) == (500, 0), result.first_error
    assert topic_size(topology.source) == 500  # read through PLAINTEXT: same broker

    consumer = Consumer(librdkafka_config(
        settings, **{"group.id": f"{topology.group_id}-probe", "auto.offset.reset": "earliest"}
    ))
    try:
        consumer.subscribe([topology.source])
        deadline, got = time.monotonic() + 60, 0
        while got < 500 and time.monotonic() < deadline:
            got += sum(1 for m in consumer.consume(500, timeout=1) if not m.error())
        assert got == 500
    finally:
        consumer.close()


def test_pipeline_produce_command_over_sasl(sasl_broker: str, tmp_path: Path) -> None:
    topology = make_topology(tmp_path, partitions=1)
    done = run_cli("produce", str(topology.path), "--generate", "50", "--broker", sasl_broker,
                   env=SASL_ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"sent 50 events to {topology.source}" in done.stdout
    assert topic_size(topology.source) == 50
    assert PASSWORD not in done.stdout + done.stderr


def test_aiokafka_with_the_credentials_faust_gets(sasl_broker: str, tmp_path: Path) -> None:
    """What Faust's consumer and producer are built with (``credentials_to_aiokafka_auth`` of
    ``broker_credentials``), against the real listener; a wrong password fails, not hangs."""
    import aiokafka

    topology = make_topology(tmp_path, partitions=1)
    ensure_topics(load_topology(topology.path), sasl_settings())
    auth = aiokafka_auth(sasl_settings())
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["sasl_mechanism"] == "PLAIN"

    async def round_trip() -> bytes:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=sasl_broker, **auth)
        await asyncio.wait_for(producer.start(), 30)
        try:
            await producer.send_and_wait(topology.source, b"over sasl", key=b"k")
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(
            topology.source, bootstrap_servers=sasl_broker, auto_offset_reset="earliest", **auth
        )
        await asyncio.wait_for(consumer.start(), 30)
        try:
            message = await asyncio.wait_for(consumer.getone(), 30)
        finally:
            await consumer.stop()
        return message.value

    assert asyncio.run(round_trip()) == b"over sasl"

    wrong = aiokafka_auth(sasl_settings(WRONG_ENV))

    async def start_with_wrong_password() -> BaseException | None:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=sasl_broker, **wrong)
        try:
            await asyncio.wait_for(producer.start(), 60)
        except TimeoutError as exc:
            raise AssertionError("aiokafka hung on a wrong password") from exc
        except Exception as exc:  # noqa: BLE001 - the failure is the point
            return exc
        finally:
            await producer.stop()
        return None

    failure = asyncio.run(start_with_wrong_password())
    assert failure is not None, "a wrong password was accepted"
    assert WRONG_PASSWORD not in repr(failure)


def test_worker_consumes_and_routes_over_sasl(sasl_broker: str, tmp_path: Path) -> None:
    """Needs ``create_app`` to pass ``faust_app_kwargs(settings)`` to Faust (the app.py patch):
    without credentials Faust cannot talk to a SASL listener and nothing is routed."""
    topology = make_topology(tmp_path, partitions=2)
    settings = sasl_settings()
    ensure_topics(load_topology(topology.path), settings)
    generated = list(generate(2000, TrafficProfile(seed=5, invalid_fraction=0.03)))
    result = produce(settings, topology.source, [(r.key, r.value) for r in generated])
    assert result.failed == 0, result.first_error
    expected = result.sent - sum(1 for r in generated if r.kind == "duplicate")

    worker = WorkerProcess(topology).start(tmp_path, "--broker", sasl_broker, env=SASL_ENV)
    try:
        total = wait_for_total(topology.outputs, expected, timeout=120)
        assert total == expected, worker.log()[-3000:]
        # The web server listens on PIPELINE_WEB_HOST (127.0.0.1) only, not on every interface.
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=10) as r:
            assert r.status == 200
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.2", worker.web_port), timeout=2).close()
        assert worker.terminate() == 0, worker.log()[-3000:]
    finally:
        worker.kill()

    log = worker.log()
    assert f"Kafka {sasl_broker}: SASL_PLAINTEXT, SASL PLAIN as user '{USER}'" in log
    assert PASSWORD not in log
    per_topic = {t: 0 for t in topology.outputs}
    for record in consume_all(topology.outputs):
        per_topic[record.topic] += 1
    assert per_topic[topology.dead_letter] > 0
    assert per_topic[topology.topic("processed_events")] > 0


def one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


def test_a_wrong_password_fails_the_command_with_one_line(sasl_broker: str, tmp_path: Path) -> None:
    topology = make_topology(tmp_path, partitions=1)
    started = time.monotonic()
    done = run_cli("produce", str(topology.path), "--generate", "10", "--broker", sasl_broker,
                   env=WRONG_ENV, timeout=90)
    assert done.returncode == 2, done.stderr[-3000:]
    assert time.monotonic() - started < 60
    error = one_error_line(done.stderr)
    assert "Kafka" in error, error
    # librdkafka says why (on stderr, or in the error itself).
    assert re.search(r"(?i)authenticat", done.stderr), done.stderr[-3000:]
    assert WRONG_PASSWORD not in done.stdout + done.stderr
    assert topic_size(topology.source) == 0


def test_a_wrong_password_stops_the_worker(sasl_broker: str, tmp_path: Path) -> None:
    topology = make_topology(tmp_path, partitions=1)
    worker = WorkerProcess(topology).start(tmp_path, "--broker", sasl_broker, env=WRONG_ENV)
    try:
        assert worker.proc is not None
        code = worker.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker hung on a wrong password:\n" + worker.log()[-3000:])
    finally:
        worker.kill()
    log = worker.log()
    assert code == 2, log[-3000:]
    one_error_line(log)
    assert WRONG_PASSWORD not in log
