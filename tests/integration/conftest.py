import os

import pytest

from tests.integration.kafka_helpers import BOOTSTRAP, broker_reachable


@pytest.fixture(scope="session")
def kafka_broker() -> str:
    """The local broker. In CI a missing broker is a failure, elsewhere a skip."""
    if not broker_reachable():
        message = f"no Kafka broker on {BOOTSTRAP} (start one with `make kafka-up`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return BOOTSTRAP
