"""Kafka SSL/SASL reach every client; secrets never reach a log or a dead-letter record.

- confluent-kafka (output producer, admin, ``pipeline produce``) takes the librdkafka settings:
  building each client checks the keys and loads the SSL files;
- Faust gets the same security as ``broker_credentials`` and aiokafka gets what Faust derives
  from them (``credentials_to_aiokafka_auth``), checked by building aiokafka clients;
- ``create_app`` passes them, and the web bind address, to the Faust app;
- start-up (settings, ``pipeline worker`` up to Faust's worker, the stages) logs neither the SASL
  password nor the PII hashing key, at DEBUG, on stderr or in logging;
- a dead-letter record of an event that went through the pii stage holds no key.

The real SASL listener is exercised by ``tests/integration/test_sasl.py``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

import aiokafka
import faust
import orjson
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from pipeline.core.records import RawMessage
from pipeline.errors import PipelineError
from pipeline.runtime.security import (
    aiokafka_auth,
    broker_credentials,
    describe,
    faust_app_kwargs,
    librdkafka_config,
    ssl_context,
)
from pipeline.settings import Settings
from tests.test_settings import KEY_PASSWORD, PASSWORD, SASL_ENV, make_pem_files, ssl_env

REPO = Path(__file__).resolve().parents[2]
PII_KEY = "pii-hmac-key-that-must-not-leak-0123456789"
NOWHERE = "127.0.0.1:1"
"""A broker address nothing listens on: clients are built, never connected."""


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pem_files(tmp_path_factory.mktemp("pki"))


def sasl_settings(**overrides: Any) -> Settings:
    return Settings.from_env(env=SASL_ENV, broker=NOWHERE, **overrides)


def sasl_ssl_env(pem_files: dict[str, Path]) -> dict[str, str]:
    return {**ssl_env(pem_files, "SASL_SSL"),
            **{k: v for k, v in SASL_ENV.items() if "PROTOCOL" not in k}}


def quiet(config: dict[str, Any]) -> dict[str, Any]:
    """No librdkafka connection-refused chatter on stderr while the client exists."""
    return {**config, "log_level": 0}


def close_output(app: Any) -> None:
    """Stop the app's output producer for good: a Faust app outlives its test (Faust keeps
    references), and its librdkafka client would keep trying to reach NOWHERE, on stderr."""
    output = app.topology_agent.output
    output.close(timeout=0)
    output._producer.close()


# ------------------------------------------------------------------------------------------
# confluent-kafka
# ------------------------------------------------------------------------------------------


def test_librdkafka_config_has_the_bootstrap_servers_and_every_kafka_setting() -> None:
    settings = sasl_settings()
    assert librdkafka_config(settings, **{"group.id": "g"}) == {
        "bootstrap.servers": NOWHERE,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "pipeline",
        "sasl.password": PASSWORD,
        "group.id": "g",
    }
    bad = Settings(extra_kafka={"security.protocol": "SASL_PLAINTEXT"})
    with pytest.raises(PipelineError, match="sasl.username"):
        librdkafka_config(bad)


@pytest.mark.parametrize("kind", ["sasl", "ssl", "sasl_ssl"])
def test_confluent_clients_accept_the_security_settings(kind: str, pem_files: dict[str, Path]) -> None:
    env = {"sasl": SASL_ENV, "ssl": ssl_env(pem_files), "sasl_ssl": sasl_ssl_env(pem_files)}[kind]
    settings = Settings.from_env(env=env, broker=NOWHERE)
    config = quiet(librdkafka_config(settings))
    # librdkafka refuses unknown keys and, with SSL, loads the CA, certificate and key (with
    # the key password) when the client is built.
    Producer(config).flush(0)
    AdminClient(config)
    Consumer({**config, "group.id": "security-test"}).close()


def test_a_wrong_ssl_key_password_fails_in_librdkafka_too(pem_files: dict[str, Path]) -> None:
    env = {**ssl_env(pem_files), "PIPELINE_KAFKA_SSL_KEY_PASSWORD": "wrong-password"}
    settings = Settings.from_env(env=env, broker=NOWHERE)
    with pytest.raises(Exception, match="ssl"):
        Producer(quiet(librdkafka_config(settings)))


def test_the_existing_confluent_call_sites_pass_the_security_settings(tmp_path: Path) -> None:
    from pipeline.produce import new_producer
    from pipeline.runtime.admin import admin_client
    from pipeline.runtime.output import OutputProducer

    settings = sasl_settings()
    # (librdkafka's log_level has an underscore, which no PIPELINE_KAFKA_ variable can name.)
    settings = Settings(broker=NOWHERE, extra_kafka={**settings.extra_kafka, "log_level": "0"})
    new_producer(settings).flush(0)
    admin_client(settings)
    output = OutputProducer(bootstrap_servers=NOWHERE, extra=settings.extra_kafka)
    try:
        for key, value in librdkafka_config(settings).items():
            assert output._config[key] == value
    finally:
        output.close(timeout=0)


# ------------------------------------------------------------------------------------------
# Faust / aiokafka
# ------------------------------------------------------------------------------------------


def test_plaintext_needs_no_credentials() -> None:
    settings = Settings.from_env(env={})
    assert broker_credentials(settings) is None
    assert faust_app_kwargs(settings) == {"web_host": "127.0.0.1", "web_bind": "127.0.0.1"}
    assert aiokafka_auth(settings) == {"security_protocol": "PLAINTEXT"}
    assert describe(settings) == "Kafka 127.0.0.1:9092: PLAINTEXT"


def test_sasl_plaintext_credentials() -> None:
    settings = sasl_settings(web_host="worker-1.internal", web_bind="0.0.0.0")
    kwargs = faust_app_kwargs(settings)
    assert (kwargs["web_host"], kwargs["web_bind"]) == ("worker-1.internal", "0.0.0.0")
    credentials = kwargs["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("pipeline", PASSWORD)
    assert credentials.mechanism.value == "PLAIN" and credentials.protocol.value == "SASL_PLAINTEXT"
    assert PASSWORD not in repr(credentials)
    assert aiokafka_auth(settings) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "pipeline",
        "sasl_plain_password": PASSWORD,
        "ssl_context": None,
    }
    assert describe(settings) == f"Kafka {NOWHERE}: SASL_PLAINTEXT, SASL PLAIN as user 'pipeline'"


def test_scram_credentials() -> None:
    env = {**SASL_ENV, "PIPELINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}
    auth = aiokafka_auth(Settings.from_env(env=env))
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512" and auth["sasl_plain_password"] == PASSWORD


def test_ssl_credentials_carry_a_context_with_the_client_certificate(pem_files: dict[str, Path]) -> None:
    settings = Settings.from_env(env=ssl_env(pem_files))
    credentials = broker_credentials(settings)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.protocol.value == "SSL"
    context = credentials.context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any(c["subject"] == ((("commonName", "pipeline-test-ca"),),) for c in context.get_ca_certs())
    auth = aiokafka_auth(settings)
    assert auth["security_protocol"] == "SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)


def test_sasl_ssl_credentials(pem_files: dict[str, Path]) -> None:
    credentials = broker_credentials(Settings.from_env(env=sasl_ssl_env(pem_files)))
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)


def test_ssl_verification_can_be_relaxed(pem_files: dict[str, Path]) -> None:
    env = {"PIPELINE_KAFKA_SECURITY_PROTOCOL": "SSL",
           "PIPELINE_KAFKA_SSL_CA_LOCATION": str(pem_files["ca"]),
           "PIPELINE_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "none"}
    context = ssl_context(Settings.from_env(env=env).kafka_security)
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    env["PIPELINE_KAFKA_ENABLE_SSL_CERTIFICATE_VERIFICATION"] = "false"
    context = ssl_context(Settings.from_env(env=env).kafka_security)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname


def test_a_wrong_ssl_key_password_is_a_clear_error_without_the_password(pem_files: dict[str, Path]) -> None:
    env = {**ssl_env(pem_files), "PIPELINE_KAFKA_SSL_KEY_PASSWORD": "Wr0ng-pa55word-not-shown"}
    with pytest.raises(PipelineError) as caught:
        broker_credentials(Settings.from_env(env=env))
    message = str(caught.value)
    assert "PIPELINE_KAFKA_SSL_KEY_PASSWORD" in message and "cannot load the client certificate" in message
    assert "Wr0ng-pa55word-not-shown" not in message and KEY_PASSWORD not in message
    assert "\n" not in message


@pytest.mark.parametrize("kind", ["sasl", "ssl", "sasl_ssl"])
def test_aiokafka_clients_accept_what_faust_hands_them(kind: str, pem_files: dict[str, Path]) -> None:
    env = {"sasl": SASL_ENV, "ssl": ssl_env(pem_files), "sasl_ssl": sasl_ssl_env(pem_files)}[kind]
    auth = aiokafka_auth(Settings.from_env(env=env))

    async def build() -> None:
        # aiokafka checks the protocol/mechanism/credentials/context combination when built.
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=NOWHERE, **auth)
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=NOWHERE, **auth)
        assert consumer._client._security_protocol == auth["security_protocol"]
        assert producer.client._sasl_plain_password == auth.get("sasl_plain_password")
        await consumer.stop()
        await producer.stop()

    asyncio.run(build())


def test_create_app_gives_faust_the_credentials_and_the_bind_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Needs ``create_app`` to pass ``faust_app_kwargs`` (the patch to app.py)."""
    from pipeline.runtime.app import create_app
    from pipeline.topology import load_topology

    monkeypatch.setenv("PIPELINE_PII_KEY", PII_KEY)
    topology = load_topology(REPO / "topologies" / "ecommerce.yaml")
    settings = sasl_settings(data_dir=tmp_path, web_host="worker-1.internal", web_bind="127.0.0.1")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        app = create_app(topology, settings)
    try:
        credentials = app.conf.broker_credentials
        assert isinstance(credentials, faust.SASLCredentials)
        assert (credentials.username, credentials.password) == ("pipeline", PASSWORD)
        assert app.conf.web_bind == "127.0.0.1"  # where aiohttp listens
        assert app.conf.web_host == "worker-1.internal"  # how other workers reach it
        assert f"Kafka {NOWHERE}: SASL_PLAINTEXT, SASL PLAIN as user 'pipeline'" in caplog.text
        # The worker consumer, the client consumer and the producer: all from these.
        from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

        auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
        assert auth["security_protocol"] == "SASL_PLAINTEXT"
        assert app.producer.credentials is app.conf.broker_credentials
    finally:
        close_output(app)


# ------------------------------------------------------------------------------------------
# Secrets never logged
# ------------------------------------------------------------------------------------------


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text, "the SASL password leaked"
        assert PII_KEY not in text, "the PII key leaked"


def test_worker_start_up_logs_no_secret(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """``pipeline worker`` from the command line to the moment Faust's worker would start, at
    DEBUG: settings, topic creation, the app and its stages (Kafka itself is stubbed out)."""
    import pipeline.runtime.worker as worker_module
    from pipeline.cli import main

    for name, value in {**SASL_ENV, "PIPELINE_PII_KEY": PII_KEY,
                        "PIPELINE_DATA_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    seen: dict[str, Any] = {}

    def fake_ensure_topics(topology: Any, settings: Settings, **_: Any) -> list[str]:
        logging.getLogger("pipeline.runtime.admin").info("created topic %s", "raw_events")
        seen["settings"] = settings
        return ["raw_events"]

    class FakeWorker:
        def __init__(self, app: Any, **kwargs: Any) -> None:
            self.app = app
            # (Formatted now: a record holding the app would keep its producer alive.)
            logging.getLogger("faust.worker").debug("worker for %s", f"{app!r} conf {app.conf!r}")

        def execute_from_commandline(self) -> None:
            seen["app"] = self.app
            close_output(self.app)
            raise SystemExit(0)

    monkeypatch.setattr(worker_module, "ensure_topics", fake_ensure_topics)
    monkeypatch.setattr(worker_module, "ensure_internal_topics", lambda *a, **k: 4)
    monkeypatch.setattr(worker_module, "tune_gc", lambda: None)
    monkeypatch.setattr(worker_module.faust, "Worker", FakeWorker)
    with caplog.at_level(logging.DEBUG):
        code = main(["worker", str(REPO / "topologies" / "ecommerce.yaml"), "--broker", NOWHERE,
                     "--loglevel", "debug"])
        settings = seen["settings"]
        logging.getLogger("pipeline").info("settings %r %s", settings, settings)
        logging.getLogger("pipeline").info("security %r", settings.kafka_security)
    assert code == 0 and "app" in seen
    assert settings.kafka_security.sasl_password.reveal() == PASSWORD  # it was really there
    out, err = capfd.readouterr()
    assert "stage pii: enabled" in caplog.text
    assert_no_secret(caplog.text, out, err, *(repr(r.args) for r in caplog.records))


def test_bad_settings_on_the_command_line_show_no_secret(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    monkeypatch.setenv("PIPELINE_PII_KEY", PII_KEY)
    monkeypatch.setenv("PIPELINE_KAFKA_SASL_PASSWORD", PASSWORD)  # no protocol, no user
    monkeypatch.setenv("PIPELINE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    code = main(["produce", str(REPO / "topologies" / "ecommerce.yaml"), "--generate", "1",
                 "--broker", NOWHERE])
    out, err = capfd.readouterr()
    assert code == 2
    assert "PIPELINE_KAFKA_SASL_USERNAME (sasl.username) is required" in err
    assert_no_secret(out, err)


# ------------------------------------------------------------------------------------------
# Dead letters
# ------------------------------------------------------------------------------------------

PII_STAGE = """  - id: pii
    type: enrich
    enricher: pii
    on_error: dead_letter
    config:
      fields:
        - {path: user_properties.email, action: hash, normalize: lower_strip}"""


def test_dead_letters_of_events_through_the_pii_stage_hold_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Dead letters of every kind around the pii stage: before it (validate), in it
    (``enrichment_failed``) and after it (``stage_error`` in route)."""
    import pipeline.enrichers.pii as pii_module
    from pipeline.core.processor import Processor
    from pipeline.topology import load_topology
    from tests.enrichers.topologies import topology_file

    now = 1_795_000_000.0
    path, _ = topology_file(tmp_path, PII_STAGE)
    processor = Processor(load_topology(path, env={"PIPELINE_PII_KEY": PII_KEY}), clock=lambda: now)

    normalise = pii_module._normalise

    def failing_normalise(text: str, how: str) -> str:
        if "fail-in-pii" in text:
            raise ValueError("cannot normalise this value")
        return normalise(text, how)

    monkeypatch.setattr(pii_module, "_normalise", failing_normalise)
    emit = processor.sink.emit

    def failing_emit(items: list[Any], ctx: Any) -> Any:
        if any(item.event.get("event_id") == "fail-in-route" for item in items):
            raise RuntimeError(f"route failed on {[item.event for item in items]!r}")
        return emit(items, ctx)

    processor.sink.emit = failing_emit  # type: ignore[method-assign]

    def message(event_id: str, email: str) -> RawMessage:
        return RawMessage(orjson.dumps({
            "event_id": event_id, "event": "signed_in", "timestamp": int(now * 1000),
            "user_id": "u-1", "user_properties": {"email": email},
        }), key=b"u-1")

    with caplog.at_level(logging.DEBUG):
        ctx = processor.process([
            message("ok", "ann@example.com"),
            message("fail-in-pii", "fail-in-pii@example.com"),
            message("fail-in-route", "bob@example.com"),
            RawMessage(b'{"event": "signed_in", "user_properties": {"email": "x"}}', key=b"u-2"),
            RawMessage(b"not json " + PII_KEY[:8].encode(), key=b"u-3"),
        ])
    dead = [orjson.loads(value) for topic, _, value in ctx.outputs if topic == "invalid_events"]
    reasons = sorted((d["stage"], d["reason"]) for d in dead)
    assert reasons == [
        ("pii", "enrichment_failed"),
        ("route", "stage_error"),
        ("validate", "malformed_json"),
        ("validate", "missing_field"),
    ], reasons
    routed = [orjson.loads(value) for topic, _, value in ctx.outputs if topic != "invalid_events"]
    assert [e["event_id"] for e in routed] == ["ok"]
    assert routed[0]["user_properties"]["email"] != "ann@example.com"  # hashed
    for _, _, value in ctx.outputs:
        assert PII_KEY.encode() not in value
    assert PII_KEY not in caplog.text
