"""Worker settings: one typed object, from ``PIPELINE_*`` environment variables and CLI flags.

Nothing here runs at import time; ``Settings.from_env()`` reads the environment when called.

Kafka security (SSL, SASL) is set with librdkafka's own names as ``PIPELINE_KAFKA_<KEY>``
(``PIPELINE_KAFKA_SECURITY_PROTOCOL`` → ``security.protocol``, see ``SECURITY_KEYS``). The
confluent-kafka clients (output producer, admin, ``pipeline produce``) receive them as they are;
``Settings.kafka_security`` is the checked, typed view that ``pipeline.runtime.security`` turns
into the Faust/aiokafka credentials, so every client uses the same settings. Secrets (the SASL
password, the SSL key password) never appear in ``repr(settings)`` or in an error message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Mapping

from pipeline.errors import PipelineError

ENV_PREFIX = "PIPELINE_"
KAFKA_ENV_PREFIX = ENV_PREFIX + "KAFKA_"


class Secret:
    """A string that never shows itself in ``repr``/``str`` (logs, tracebacks, error messages).

    ``reveal()`` gives the value to the one place that needs it (a client's configuration).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not pickled")


def is_secret_kafka_key(key: str) -> bool:
    """librdkafka settings whose value must not be shown (passwords, key material, tokens)."""
    return (
        "password" in key
        or "secret" in key
        or key in ("ssl.key.pem", "ssl_key", "sasl.oauthbearer.config", "sasl.jaas.config")
    )


class KafkaConfig(dict[str, str]):
    """Extra librdkafka settings: a plain dict for the clients, but ``repr`` hides secrets."""

    def __repr__(self) -> str:
        shown = {k: ("********" if is_secret_kafka_key(k) else v) for k, v in self.items()}
        return f"KafkaConfig({shown!r})"

    __str__ = __repr__


def kafka_env_name(key: str) -> str:
    """``sasl.password`` → ``PIPELINE_KAFKA_SASL_PASSWORD``."""
    return KAFKA_ENV_PREFIX + key.upper().replace(".", "_")


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
"""What every client here can use: librdkafka and aiokafka both do these with a user name and
password (GSSAPI and OAUTHBEARER need per-client callbacks/Kerberos set-ups: not supported)."""

SECURITY_KEYS = {
    "security.protocol": "PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL",
    "sasl.mechanism": "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (required with SASL_*)",
    "sasl.mechanisms": "librdkafka's other name for sasl.mechanism",
    "sasl.username": "SASL user (required with SASL_*)",
    "sasl.password": "SASL password (required with SASL_*; never logged)",
    "ssl.ca.location": "CA certificate(s) (PEM file or directory) to verify the broker",
    "ssl.certificate.location": "client certificate (PEM), for mutual TLS",
    "ssl.key.location": "client private key (PEM), for mutual TLS",
    "ssl.key.password": "password of the client key (never logged)",
    "ssl.endpoint.identification.algorithm": "https (default: check the broker's host name) or none",
    "enable.ssl.certificate.verification": "true (default) or false (testing only)",
}
"""The ``security.*``/``ssl.*``/``sasl.*`` settings that reach every client, Faust included.
Other ``ssl.*``/``sasl.*`` keys are refused: the Faust consumer could not follow them."""

_SSL_FILE_KEYS = ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True)
class KafkaSecurity:
    """How the clients connect and authenticate (checked; from ``Settings.extra_kafka``)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    """``ssl.ca.location``: a PEM file, or a directory of hashed certificates."""
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: Secret | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True
    ssl_verify: bool = True

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def describe(self) -> str:
        """One line for logs, without secrets."""
        parts = [self.protocol]
        if self.uses_sasl:
            parts.append(f"SASL {self.sasl_mechanism} as user {self.sasl_username!r}")
        if self.uses_ssl:
            parts.append(f"CA {self.ssl_cafile or 'system default'}")
            if self.ssl_certfile:
                parts.append(f"client certificate {self.ssl_certfile}")
            if not self.ssl_verify:
                parts.append("broker certificate NOT verified")
            elif not self.ssl_check_hostname:
                parts.append("broker host name not checked")
        return ", ".join(parts)


def parse_kafka_security(extra: Mapping[str, str]) -> tuple[KafkaSecurity, list[str]]:
    """The typed security settings in the librdkafka settings, and every problem with them.

    Problems name the variable and never show a secret's value."""
    problems: list[str] = []

    def name(key: str) -> str:
        return f"{kafka_env_name(key)} ({key})"

    def get(key: str) -> str | None:
        value = extra.get(key)
        return value if value is None else str(value).strip()

    for key in sorted(extra):
        if key.startswith(("ssl.", "sasl.", "ssl_")) and key not in SECURITY_KEYS:
            problems.append(
                f"{name(key)} is not supported: the worker's Faust (aiokafka) consumer could not "
                f"use it, so the clients would connect differently; supported: "
                + ", ".join(kafka_env_name(k) for k in SECURITY_KEYS)
            )

    protocol = (get("security.protocol") or "PLAINTEXT").upper()
    if protocol not in SECURITY_PROTOCOLS:
        problems.append(
            f"{name('security.protocol')} must be one of {', '.join(SECURITY_PROTOCOLS)}, "
            f"not {extra['security.protocol']!r}"
        )
        protocol = "PLAINTEXT"
    sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
    tls = protocol in ("SSL", "SASL_SSL")

    mechanism = get("sasl.mechanism")
    other = get("sasl.mechanisms")
    if mechanism and other and mechanism.upper() != other.upper():
        problems.append(
            f"{name('sasl.mechanism')} and {name('sasl.mechanisms')} differ; set one of them"
        )
    mechanism = (mechanism or other or "").upper() or None
    username = get("sasl.username") or None
    password = extra.get("sasl.password") or None
    if sasl:
        if mechanism is None:
            problems.append(
                f"{name('sasl.mechanism')} is required with security.protocol {protocol} "
                f"({', '.join(SASL_MECHANISMS)})"
            )
        elif mechanism not in SASL_MECHANISMS:
            problems.append(
                f"{name('sasl.mechanism')} {mechanism!r} is not supported; use "
                + ", ".join(SASL_MECHANISMS)
            )
        if not username:
            problems.append(f"{name('sasl.username')} is required with security.protocol {protocol}")
        if not password:
            problems.append(f"{name('sasl.password')} is required with security.protocol {protocol}")
    else:
        for key in ("sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password"):
            if key in extra:
                problems.append(
                    f"{name(key)} is set but security.protocol is {protocol}: it would be "
                    "ignored (use SASL_PLAINTEXT or SASL_SSL)"
                )

    files: dict[str, Path | None] = {}
    for key in _SSL_FILE_KEYS:
        raw = get(key)
        files[key] = Path(raw).expanduser() if raw else None
        if raw and not tls:
            problems.append(
                f"{name(key)} is set but security.protocol is {protocol}: it would be ignored "
                "(use SSL or SASL_SSL)"
            )
        elif raw and not Path(raw).expanduser().exists():
            problems.append(f"{name(key)}: {raw} does not exist")
        elif key != "ssl.ca.location" and raw and not Path(raw).expanduser().is_file():
            problems.append(f"{name(key)}: {raw} is not a file")
    if bool(files["ssl.certificate.location"]) != bool(files["ssl.key.location"]):
        problems.append(
            f"{name('ssl.certificate.location')} and {name('ssl.key.location')} go together "
            "(mutual TLS needs both)"
        )
    key_password = extra.get("ssl.key.password") or None
    if key_password and not files["ssl.key.location"]:
        problems.append(f"{name('ssl.key.password')} is set without {name('ssl.key.location')}")

    check_hostname = True
    algorithm = get("ssl.endpoint.identification.algorithm")
    if algorithm is not None:
        if algorithm.lower() not in ("https", "none"):
            problems.append(
                f"{name('ssl.endpoint.identification.algorithm')} must be https or none, "
                f"not {algorithm!r}"
            )
        check_hostname = algorithm.lower() != "none"
    verify = True
    raw_verify = get("enable.ssl.certificate.verification")
    if raw_verify is not None:
        if raw_verify.lower() not in _TRUE + _FALSE:
            problems.append(
                f"{name('enable.ssl.certificate.verification')} must be true or false, "
                f"not {raw_verify!r}"
            )
        verify = raw_verify.lower() not in _FALSE
    for key in (
        "ssl.key.password", "ssl.endpoint.identification.algorithm",
        "enable.ssl.certificate.verification",
    ):
        if key in extra and not tls:
            problems.append(
                f"{name(key)} is set but security.protocol is {protocol}: it would be ignored "
                "(use SSL or SASL_SSL)"
            )

    security = KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=mechanism if sasl else None,
        sasl_username=username if sasl else None,
        sasl_password=Secret(password) if sasl and password else None,
        ssl_cafile=files["ssl.ca.location"] if tls else None,
        ssl_certfile=files["ssl.certificate.location"] if tls else None,
        ssl_keyfile=files["ssl.key.location"] if tls else None,
        ssl_key_password=Secret(key_password) if tls and key_password else None,
        ssl_check_hostname=check_hostname and verify,
        ssl_verify=verify,
    )
    return security, problems


@dataclass(frozen=True)
class Settings:
    broker: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma-separated host:port."""
    web_host: str = "127.0.0.1"
    """Host name or address of the worker's HTTP server as other workers reach it (Faust's
    ``web_host``: the worker's URL, used to forward ``/aggregates`` requests); also the address
    it binds to unless ``web_bind`` is set."""
    web_bind: str | None = None
    """Address the HTTP server binds to (Faust's ``web_bind``); default ``web_host``. In a
    container: ``web_bind=0.0.0.0`` and ``web_host`` the container's reachable name."""
    web_port: int = 6066
    data_dir: Path = Path(".local/state")
    """Where the worker keeps local state (RocksDB tables, Faust data)."""
    store: Literal["memory", "rocksdb"] = "memory"
    """Table store: memory (tests, demos) or rocksdb (production)."""
    rocksdb_memory_mb: int = 128
    """Memory for all RocksDB tables of the worker together: one block cache shared by every
    partition's DB, memtables included (``pipeline/runtime/rocksdb_options.py``)."""
    standby_replicas: int = 0
    """Standby copies of each table partition kept by other workers (Faust's
    ``table_standby_replicas``). They make fail-over faster with RocksDB, but Faust applies
    standby changelog records one at a time (a few thousand a second), so a standby falls behind
    a fast partition and costs its worker CPU: measured, two workers with one standby each ran
    at 0.5x the speed of one worker; without, 1.9x."""
    fetch_max_bytes_per_partition: int = 8 * 1024 * 1024
    """Most bytes one fetch returns per partition: large enough that a fetch holds more than a
    batch, so the next batch is already buffered while this one is processed."""
    fetch_max_wait_ms: int = 100
    """How long the broker may hold a fetch that has too little data (Faust hard-codes 1,500 ms,
    which measured here as ~1.5 s p50 latency at moderate rates; see ``faust_compat``)."""
    session_timeout_s: float = 45.0
    """How long the group waits for a silent worker before moving its partitions (Kafka's
    ``session.timeout.ms``; Faust's default is 60 s). After a crash, the partitions stand still
    this long; lower means faster failover and more false alarms on a stalled machine."""
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    batch_max_events: int = 5000
    """Most events handed to the stages at once (per fetch)."""
    max_batch_failures: int = 5
    """Failed batches in a row (delivery failures, runtime errors) that are read again after a
    back-off (1, 2, 4, ... s) before the worker gives up: ``/health`` fails and it exits with
    status 1, for its supervisor to restart it. A broker outage shorter than the producer's
    delivery timeout (120 s) fails no batch at all."""
    commit_interval_s: float = 1.0
    """How often delivered offsets are committed."""
    producer_linger_ms: int = 1
    """How long librdkafka waits to fill a produce request. A batch's outputs are enqueued all at
    once and then waited for, so a longer linger only delays the last request of each batch:
    measured at half rate, 5 ms → 1 ms took p50 latency from 109 to 82-91 ms at the same
    events/s and CPU per event."""
    log_level: str = "info"
    group_id: str | None = None
    """Consumer group / Faust app id; default ``pipeline-<topology name>``."""
    extra_kafka: Mapping[str, str] = field(default_factory=KafkaConfig)
    """Extra librdkafka settings for the confluent-kafka clients (``PIPELINE_KAFKA_*``); the
    security ones (``SECURITY_KEYS``) reach the Faust consumer too (``kafka_security``). Its
    ``repr`` hides secrets."""

    def __post_init__(self) -> None:
        if not isinstance(self.extra_kafka, KafkaConfig):
            object.__setattr__(self, "extra_kafka", KafkaConfig(self.extra_kafka))

    @cached_property
    def kafka_security(self) -> KafkaSecurity:
        """The checked security settings every Kafka client uses (Faust's included)."""
        security, problems = parse_kafka_security(self.extra_kafka)
        if problems:
            raise PipelineError("bad settings:\n  " + "\n  ".join(problems))
        return security

    @property
    def web_bind_address(self) -> str:
        """Where the HTTP server listens: ``web_bind``, else ``web_host``."""
        return self.web_bind or self.web_host

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then ``PIPELINE_<FIELD>`` variables, then non-None ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        errors: list[str] = []
        for f in fields(cls):
            if f.name == "extra_kafka":
                continue
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            try:
                values[f.name] = _coerce(f.name, raw)
            except ValueError as exc:
                errors.append(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: {exc}")
        extra = {
            key[len(ENV_PREFIX + "KAFKA_"):].lower().replace("_", "."): value
            for key, value in env.items()
            if key.startswith(ENV_PREFIX + "KAFKA_")
        }
        if extra:
            values["extra_kafka"] = KafkaConfig(extra)
        values.update({k: v for k, v in overrides.items() if v is not None})
        # Every problem at once: the ones of the values that were readable too.
        settings = replace(cls(), **values)
        problems = errors + settings.problems()
        if problems:
            raise PipelineError("bad settings:\n  " + "\n  ".join(problems))
        return settings

    def check(self) -> None:
        problems = self.problems()
        if problems:
            raise PipelineError("bad settings:\n  " + "\n  ".join(problems))

    def problems(self) -> list[str]:
        """Everything wrong with these settings (secrets never shown)."""
        problems = []
        if self.store not in ("memory", "rocksdb"):
            problems.append(f"store must be memory or rocksdb, not {self.store!r}")
        if self.processing_guarantee not in ("at_least_once", "exactly_once"):
            problems.append("processing_guarantee must be at_least_once or exactly_once")
        if not 0 <= self.web_port <= 65535:
            problems.append(f"web_port {self.web_port} is not a port")
        if self.batch_max_events < 1:
            problems.append("batch_max_events must be at least 1")
        if self.max_batch_failures < 1:
            problems.append(f"max_batch_failures must be at least 1, not {self.max_batch_failures}")
        if self.standby_replicas < 0:
            problems.append(f"standby_replicas must be 0 or more, not {self.standby_replicas}")
        if self.fetch_max_bytes_per_partition < 65536:
            problems.append("fetch_max_bytes_per_partition must be at least 65536")
        if not 6 <= self.session_timeout_s <= 1800:
            problems.append(f"session_timeout_s must be 6-1800, not {self.session_timeout_s}")
        if not 0 <= self.fetch_max_wait_ms <= 60_000:
            problems.append(f"fetch_max_wait_ms must be 0-60000, not {self.fetch_max_wait_ms}")
        if self.rocksdb_memory_mb < 16:
            problems.append(f"rocksdb_memory_mb must be at least 16, not {self.rocksdb_memory_mb}")
        for name in ("web_host", "web_bind"):
            value = getattr(self, name)
            if value is not None and (not value.strip() or "://" in value or " " in value.strip()):
                problems.append(f"{name} must be a host name or an IP address, not {value!r}")
        problems += parse_kafka_security(self.extra_kafka)[1]
        return problems

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(s.strip().removeprefix("kafka://") for s in self.broker.split(","))


_INT_FIELDS = {
    "web_port",
    "batch_max_events",
    "max_batch_failures",
    "producer_linger_ms",
    "rocksdb_memory_mb",
    "standby_replicas",
    "fetch_max_bytes_per_partition",
    "fetch_max_wait_ms",
}
_FLOAT_FIELDS = {"commit_interval_s", "session_timeout_s"}


def _coerce(name: str, raw: str) -> Any:
    if name in _INT_FIELDS:
        return int(raw)
    if name in _FLOAT_FIELDS:
        return float(raw)
    if name == "data_dir":
        return Path(raw)
    return raw
