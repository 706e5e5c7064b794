"""Both Kafka clients (aiokafka under Faust, confluent-kafka for outputs) work on the local broker."""

import subprocess
import sys

import pytest

from tests.integration.kafka_helpers import REPO

pytestmark = pytest.mark.kafka


def test_confluent_and_aiokafka_round_trips(kafka_broker: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "verify_kafka_clients.py"), "--bootstrap", kafka_broker],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK confluent Producer -> AIOKafkaConsumer" in result.stdout
    assert "OK AIOKafkaProducer -> confluent Consumer" in result.stdout
