"""Settings: environment variables, the Kafka security settings and their checks, secrets.

The Kafka security settings are librdkafka's names as ``PIPELINE_KAFKA_<KEY>``: the confluent
clients get them as they are, ``Settings.kafka_security`` is the checked view the Faust
consumer is built from (``pipeline.runtime.security``). Secrets never show.
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.settings import (
    SECURITY_KEYS,
    KafkaConfig,
    KafkaSecurity,
    Secret,
    Settings,
    kafka_env_name,
    parse_kafka_security,
)

PASSWORD = "sasl-pa55word-that-must-not-leak"
KEY_PASSWORD = "key-pa55word-that-must-not-leak"
SASL_ENV = {
    "PIPELINE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "PIPELINE_KAFKA_SASL_MECHANISM": "PLAIN",
    "PIPELINE_KAFKA_SASL_USERNAME": "pipeline",
    "PIPELINE_KAFKA_SASL_PASSWORD": PASSWORD,
}


def problems_of(env: dict[str, str]) -> str:
    with pytest.raises(PipelineError) as caught:
        Settings.from_env(env=env)
    message = str(caught.value)
    assert PASSWORD not in message and KEY_PASSWORD not in message
    return message


# ------------------------------------------------------------------------------------------
# Plain settings
# ------------------------------------------------------------------------------------------


def test_defaults_without_environment() -> None:
    settings = Settings.from_env(env={})
    assert settings.broker == "127.0.0.1:9092"
    assert settings.extra_kafka == {}
    assert settings.kafka_security == KafkaSecurity()
    assert settings.kafka_security.protocol == "PLAINTEXT"
    assert (settings.web_host, settings.web_bind, settings.web_bind_address) == (
        "127.0.0.1", None, "127.0.0.1",
    )


def test_web_bind_defaults_to_web_host_and_can_differ() -> None:
    assert Settings.from_env(env={"PIPELINE_WEB_HOST": "10.0.0.7"}).web_bind_address == "10.0.0.7"
    settings = Settings.from_env(
        env={"PIPELINE_WEB_HOST": "worker-3.pipeline", "PIPELINE_WEB_BIND": "0.0.0.0"}
    )
    assert (settings.web_host, settings.web_bind_address) == ("worker-3.pipeline", "0.0.0.0")
    # A flag overrides the variable, as for every setting.
    assert Settings.from_env(
        env={"PIPELINE_WEB_HOST": "10.0.0.7"}, web_host="127.0.0.1"
    ).web_bind_address == "127.0.0.1"


@pytest.mark.parametrize("bad", ["", "  ", "http://0.0.0.0", "a b"])
def test_bad_web_addresses_are_refused(bad: str) -> None:
    assert "web_bind must be a host name or an IP address" in problems_of({"PIPELINE_WEB_BIND": bad})
    assert "web_host must be a host name or an IP address" in problems_of({"PIPELINE_WEB_HOST": bad})


def test_every_problem_is_reported_at_once() -> None:
    message = problems_of(
        {
            "PIPELINE_WEB_PORT": "not-a-port",
            "PIPELINE_BATCH_MAX_EVENTS": "0",
            "PIPELINE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "PIPELINE_KAFKA_SASL_PASSWORD": PASSWORD,
            "PIPELINE_KAFKA_SSL_KEYSTORE_LOCATION": "/etc/client.p12",
        }
    )
    lines = message.splitlines()
    assert lines[0] == "bad settings:"
    assert any(line.strip().startswith("PIPELINE_WEB_PORT='not-a-port'") for line in lines)
    assert "batch_max_events must be at least 1" in message
    assert "PIPELINE_KAFKA_SASL_MECHANISM (sasl.mechanism) is required" in message
    assert "PIPELINE_KAFKA_SASL_USERNAME (sasl.username) is required" in message
    assert "PIPELINE_KAFKA_SSL_KEYSTORE_LOCATION (ssl.keystore.location) is not supported" in message
    assert len(lines) == 6, message


def test_existing_messages_are_kept() -> None:
    with pytest.raises(PipelineError, match="rocksdb_memory_mb must be at least 16"):
        Settings.from_env(env={"PIPELINE_ROCKSDB_MEMORY_MB": "8"})
    with pytest.raises(PipelineError, match="store must be memory or rocksdb"):
        Settings(store="disk").check()  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# SASL
# ------------------------------------------------------------------------------------------


def test_sasl_settings_reach_librdkafka_and_the_typed_view() -> None:
    settings = Settings.from_env(env=SASL_ENV, broker="127.0.0.1:9094")
    # The confluent clients get librdkafka's keys as they are (nothing renamed, nothing lost).
    assert dict(settings.extra_kafka) == {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "pipeline",
        "sasl.password": PASSWORD,
    }
    security = settings.kafka_security
    assert (security.protocol, security.sasl_mechanism, security.sasl_username) == (
        "SASL_PLAINTEXT", "PLAIN", "pipeline",
    )
    assert security.sasl_password == Secret(PASSWORD)
    assert security.sasl_password.reveal() == PASSWORD
    assert security.uses_sasl and not security.uses_ssl
    assert security.describe() == "SASL_PLAINTEXT, SASL PLAIN as user 'pipeline'"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "scram-sha-512", "plain"])
def test_sasl_mechanisms_and_the_plural_alias(mechanism: str) -> None:
    env = {**SASL_ENV, "PIPELINE_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext"}
    del env["PIPELINE_KAFKA_SASL_MECHANISM"]
    env["PIPELINE_KAFKA_SASL_MECHANISMS"] = mechanism  # librdkafka's own name
    security = Settings.from_env(env=env).kafka_security
    assert security.protocol == "SASL_PLAINTEXT"
    assert security.sasl_mechanism == mechanism.upper()


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"PIPELINE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, not 'TLS'"),
        ({"PIPELINE_KAFKA_SASL_MECHANISM": None}, "PIPELINE_KAFKA_SASL_MECHANISM (sasl.mechanism) is required with security.protocol SASL_PLAINTEXT"),
        ({"PIPELINE_KAFKA_SASL_MECHANISM": "GSSAPI"}, "'GSSAPI' is not supported; use PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
        ({"PIPELINE_KAFKA_SASL_MECHANISM": "OAUTHBEARER"}, "'OAUTHBEARER' is not supported"),
        ({"PIPELINE_KAFKA_SASL_USERNAME": None}, "PIPELINE_KAFKA_SASL_USERNAME (sasl.username) is required"),
        ({"PIPELINE_KAFKA_SASL_PASSWORD": None}, "PIPELINE_KAFKA_SASL_PASSWORD (sasl.password) is required"),
        ({"PIPELINE_KAFKA_SASL_PASSWORD": ""}, "PIPELINE_KAFKA_SASL_PASSWORD (sasl.password) is required"),
        ({"PIPELINE_KAFKA_SASL_MECHANISMS": "SCRAM-SHA-256"}, "(sasl.mechanism) and PIPELINE_KAFKA_SASL_MECHANISMS (sasl.mechanisms) differ"),
        ({"PIPELINE_KAFKA_SECURITY_PROTOCOL": None}, "PIPELINE_KAFKA_SASL_PASSWORD (sasl.password) is set but security.protocol is PLAINTEXT"),
        ({"PIPELINE_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": PASSWORD}, "(sasl.oauthbearer.client.secret) is not supported"),
        ({"PIPELINE_KAFKA_SSL_CA_LOCATION": "/etc/ca.pem"}, "(ssl.ca.location) is set but security.protocol is SASL_PLAINTEXT: it would be ignored (use SSL or SASL_SSL)"),
    ],
)
def test_bad_sasl_settings_are_refused(change: dict[str, str | None], expected: str) -> None:
    env = dict(SASL_ENV)
    for name, value in change.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value
    assert expected in problems_of(env)


# ------------------------------------------------------------------------------------------
# SSL
# ------------------------------------------------------------------------------------------


def make_pem_files(d: Path) -> dict[str, Path]:
    """A throwaway CA, and a client certificate signed by it with a password-protected key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=pipeline-test-ca")
    run("req", "-newkey", "rsa:2048", "-keyout", "client.key", "-passout", f"pass:{KEY_PASSWORD}",
        "-out", "client.csr", "-subj", "/CN=pipeline-client")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "client.pem", "-days", "2")
    return {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key", "dir": d}


@pytest.fixture(scope="session")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pem_files(tmp_path_factory.mktemp("pki"))


def ssl_env(pem_files: dict[str, Path], protocol: str = "SSL") -> dict[str, str]:
    return {
        "PIPELINE_KAFKA_SECURITY_PROTOCOL": protocol,
        "PIPELINE_KAFKA_SSL_CA_LOCATION": str(pem_files["ca"]),
        "PIPELINE_KAFKA_SSL_CERTIFICATE_LOCATION": str(pem_files["cert"]),
        "PIPELINE_KAFKA_SSL_KEY_LOCATION": str(pem_files["key"]),
        "PIPELINE_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD,
    }


def test_ssl_settings(pem_files: dict[str, Path]) -> None:
    security = Settings.from_env(env=ssl_env(pem_files)).kafka_security
    assert security.protocol == "SSL" and security.uses_ssl and not security.uses_sasl
    assert (security.ssl_cafile, security.ssl_certfile, security.ssl_keyfile) == (
        pem_files["ca"], pem_files["cert"], pem_files["key"],
    )
    assert security.ssl_key_password == Secret(KEY_PASSWORD)
    assert security.ssl_verify and security.ssl_check_hostname
    assert f"CA {pem_files['ca']}" in security.describe()
    # SASL_SSL: both.
    env = {**ssl_env(pem_files, "SASL_SSL"), **{k: v for k, v in SASL_ENV.items() if "PROTOCOL" not in k}}
    security = Settings.from_env(env=env).kafka_security
    assert security.uses_ssl and security.uses_sasl and security.sasl_username == "pipeline"


def test_ssl_verification_switches(pem_files: dict[str, Path]) -> None:
    env = {"PIPELINE_KAFKA_SECURITY_PROTOCOL": "SSL",
           "PIPELINE_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "none"}
    security = Settings.from_env(env=env).kafka_security
    assert (security.ssl_verify, security.ssl_check_hostname) == (True, False)
    assert security.ssl_cafile is None and "CA system default" in security.describe()
    env["PIPELINE_KAFKA_ENABLE_SSL_CERTIFICATE_VERIFICATION"] = "false"
    security = Settings.from_env(env=env).kafka_security
    assert (security.ssl_verify, security.ssl_check_hostname) == (False, False)
    assert "NOT verified" in security.describe()
    # A directory of CA certificates is fine for ssl.ca.location.
    env = {"PIPELINE_KAFKA_SECURITY_PROTOCOL": "SSL", "PIPELINE_KAFKA_SSL_CA_LOCATION": str(pem_files["dir"])}
    assert Settings.from_env(env=env).kafka_security.ssl_cafile == pem_files["dir"]


def test_bad_ssl_settings_are_refused(pem_files: dict[str, Path], tmp_path: Path) -> None:
    env = ssl_env(pem_files)
    del env["PIPELINE_KAFKA_SSL_KEY_LOCATION"]
    message = problems_of(env)
    assert "(ssl.certificate.location) and PIPELINE_KAFKA_SSL_KEY_LOCATION (ssl.key.location) go together" in message
    assert "PIPELINE_KAFKA_SSL_KEY_PASSWORD (ssl.key.password) is set without" in message

    env = ssl_env(pem_files)
    env["PIPELINE_KAFKA_SSL_CA_LOCATION"] = str(tmp_path / "missing.pem")
    env["PIPELINE_KAFKA_SSL_KEY_LOCATION"] = str(tmp_path)
    message = problems_of(env)
    assert f"PIPELINE_KAFKA_SSL_CA_LOCATION (ssl.ca.location): {tmp_path / 'missing.pem'} does not exist" in message
    assert f"PIPELINE_KAFKA_SSL_KEY_LOCATION (ssl.key.location): {tmp_path} is not a file" in message

    env = ssl_env(pem_files, "PLAINTEXT")
    message = problems_of(env)
    assert "(ssl.certificate.location) is set but security.protocol is PLAINTEXT" in message
    assert "(ssl.key.password) is set but security.protocol is PLAINTEXT" in message
    assert len(message.splitlines()) == 1 + 4  # ca, certificate, key, key password

    message = problems_of({"PIPELINE_KAFKA_SECURITY_PROTOCOL": "SSL",
                           "PIPELINE_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "dns",
                           "PIPELINE_KAFKA_ENABLE_SSL_CERTIFICATE_VERIFICATION": "maybe"})
    assert "must be https or none, not 'dns'" in message
    assert "must be true or false, not 'maybe'" in message


def test_other_ssl_and_sasl_keys_are_refused_other_librdkafka_keys_pass() -> None:
    settings = Settings.from_env(env={"PIPELINE_KAFKA_CLIENT_ID": "shop", "PIPELINE_KAFKA_SOCKET_TIMEOUT_MS": "5000"})
    assert dict(settings.extra_kafka) == {"client.id": "shop", "socket.timeout.ms": "5000"}
    for key in ("ssl.keystore.location", "ssl.ca.pem", "sasl.kerberos.service.name", "sasl.oauthbearer.method"):
        assert f"{kafka_env_name(key)} ({key}) is not supported" in problems_of({kafka_env_name(key): "x"})


def test_every_supported_key_has_a_variable() -> None:
    assert kafka_env_name("sasl.password") == "PIPELINE_KAFKA_SASL_PASSWORD"
    for key in SECURITY_KEYS:
        env_name = kafka_env_name(key)
        # from_env maps the variable back to the same librdkafka key.
        assert env_name.removeprefix("PIPELINE_KAFKA_").lower().replace("_", ".") == key


# ------------------------------------------------------------------------------------------
# Secrets never show
# ------------------------------------------------------------------------------------------


def test_secrets_are_not_in_repr_or_str(pem_files: dict[str, Path]) -> None:
    env = {**ssl_env(pem_files, "SASL_SSL"), **{k: v for k, v in SASL_ENV.items() if "PROTOCOL" not in k}}
    settings = Settings.from_env(env=env)
    security = settings.kafka_security
    for text in (repr(settings), str(settings), f"{settings!r}", repr(settings.extra_kafka),
                 str(settings.extra_kafka), repr(security), str(security), security.describe(),
                 repr(security.sasl_password), str(security.ssl_key_password)):
        assert PASSWORD not in text and KEY_PASSWORD not in text, text
    assert "'sasl.password': '********'" in repr(settings)
    assert "'ssl.key.password': '********'" in repr(settings)
    assert "'sasl.username': 'pipeline'" in repr(settings)  # not a secret: shown
    # Still plain values for the clients.
    assert settings.extra_kafka["sasl.password"] == PASSWORD
    assert {**settings.extra_kafka}["ssl.key.password"] == KEY_PASSWORD


def test_secret_type() -> None:
    secret = Secret(PASSWORD)
    assert PASSWORD not in repr(secret) and PASSWORD not in str(secret) and PASSWORD not in f"{secret}"
    assert secret == Secret(PASSWORD) and secret != Secret("other") and secret != PASSWORD
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_settings_built_directly_hide_secrets_and_check_security() -> None:
    settings = Settings(extra_kafka={"security.protocol": "SASL_PLAINTEXT", "sasl.password": PASSWORD})
    assert isinstance(settings.extra_kafka, KafkaConfig)
    assert PASSWORD not in repr(settings)
    with pytest.raises(PipelineError, match="sasl.username") as caught:
        _ = settings.kafka_security
    assert PASSWORD not in str(caught.value)
    with pytest.raises(PipelineError, match="sasl.mechanism"):
        settings.check()


def test_parse_returns_the_security_and_every_problem() -> None:
    security, problems = parse_kafka_security({"security.protocol": "SASL_SSL"})
    assert security.protocol == "SASL_SSL"
    assert len(problems) == 3  # mechanism, username, password
