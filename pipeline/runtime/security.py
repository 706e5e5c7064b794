"""Kafka SSL/SASL for every client, from one set of settings.

The settings are librdkafka's (``PIPELINE_KAFKA_SECURITY_PROTOCOL``, ``..._SASL_MECHANISM``,
``..._SASL_USERNAME``, ``..._SASL_PASSWORD``, ``..._SSL_CA_LOCATION``,
``..._SSL_CERTIFICATE_LOCATION``, ``..._SSL_KEY_LOCATION``, ``..._SSL_KEY_PASSWORD``, ...;
``pipeline.settings.SECURITY_KEYS``), checked once at load into ``Settings.kafka_security``.

- ``librdkafka_config``: the confluent-kafka clients (output producer, admin, ``pipeline
  produce``, test consumers) take the librdkafka settings as they are.
- ``faust_app_kwargs``: the Faust app (its aiokafka consumer, producer and topic creation) gets
  the same security as ``broker_credentials``: ``faust.SASLCredentials`` (with an SSL context
  for SASL_SSL) or ``faust.SSLCredentials``. Faust 0.15.3 hands them to aiokafka through
  ``credentials_to_aiokafka_auth`` (``security_protocol``, ``sasl_mechanism``,
  ``sasl_plain_username``, ``sasl_plain_password``, ``ssl_context``) for the worker consumer,
  the client consumer and the producer alike.
- ``aiokafka_auth``: the same as aiokafka keyword arguments, for code (and tests) that build
  aiokafka clients without Faust.

The secrets leave their ``Secret`` wrapper only here, into the client configurations; nothing
here logs them (``describe`` is the loggable summary).
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from pipeline.errors import PipelineError
from pipeline.settings import KafkaSecurity, Settings, kafka_env_name


def describe(settings: Settings) -> str:
    """``"Kafka 127.0.0.1:9094: SASL_PLAINTEXT, SASL PLAIN as user 'pipeline'"``: no secrets."""
    return f"Kafka {settings.bootstrap_servers}: {settings.kafka_security.describe()}"


def librdkafka_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Configuration of a confluent-kafka client (Producer, Consumer, AdminClient): the bootstrap
    servers and every ``PIPELINE_KAFKA_*`` setting, security included, then ``extra``."""
    settings.kafka_security  # noqa: B018 - raises on bad security settings
    return {"bootstrap.servers": settings.bootstrap_servers, **settings.extra_kafka, **extra}


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext:
    """The client SSL context librdkafka's ``ssl.*`` settings describe.

    Raises ``PipelineError`` naming the variable when a file cannot be used (a wrong key
    password included; the password is not shown)."""
    cafile = capath = None
    if security.ssl_cafile is not None:
        if security.ssl_cafile.is_dir():
            capath = str(security.ssl_cafile)
        else:
            cafile = str(security.ssl_cafile)
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as exc:
        raise PipelineError(
            f"{kafka_env_name('ssl.ca.location')}: cannot load {security.ssl_cafile}: {exc}"
        ) from None
    if security.ssl_certfile is not None:
        password = security.ssl_key_password.reveal() if security.ssl_key_password else None
        try:
            context.load_cert_chain(
                str(security.ssl_certfile),
                keyfile=str(security.ssl_keyfile) if security.ssl_keyfile else None,
                password=password,
            )
        except (OSError, ssl.SSLError) as exc:
            raise PipelineError(
                f"{kafka_env_name('ssl.certificate.location')}/"
                f"{kafka_env_name('ssl.key.location')}: cannot load the client certificate "
                f"{security.ssl_certfile} and key {security.ssl_keyfile} (wrong "
                f"{kafka_env_name('ssl.key.password')}?): {exc}"
            ) from None
        finally:
            del password
    if not security.ssl_check_hostname:
        context.check_hostname = False
    if not security.ssl_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def broker_credentials(settings: Settings) -> faust.auth.Credentials | None:
    """Faust's ``broker_credentials`` for the settings; None for PLAINTEXT."""
    security = settings.kafka_security
    context = ssl_context(security) if security.uses_ssl else None
    if security.uses_sasl:
        assert security.sasl_password is not None  # checked at load
        return faust.SASLCredentials(
            username=security.sasl_username,
            password=security.sasl_password.reveal(),
            mechanism=security.sasl_mechanism,
            ssl_context=context,  # SASL_SSL when set, SASL_PLAINTEXT otherwise
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def faust_app_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``faust.App`` (``PipelineApp``): the broker security, and where the
    web server binds (Faust's ``web_bind``, which it otherwise sets to 0.0.0.0, every interface,
    whatever ``web_host`` says)."""
    kwargs: dict[str, Any] = {
        "web_host": settings.web_host,
        "web_bind": settings.web_bind_address,
    }
    credentials = broker_credentials(settings)
    if credentials is not None:
        kwargs["broker_credentials"] = credentials
    return kwargs


def aiokafka_auth(settings: Settings) -> dict[str, Any]:
    """The aiokafka client keyword arguments Faust derives from ``faust_app_kwargs``."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    return dict(credentials_to_aiokafka_auth(broker_credentials(settings)))
