"""Worker settings: one typed object, from ``PIPELINE_*`` environment variables and CLI flags.

Nothing here runs at import time; ``Settings.from_env()`` reads the environment when called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Mapping

from pipeline.errors import PipelineError

ENV_PREFIX = "PIPELINE_"


@dataclass(frozen=True)
class Settings:
    broker: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma-separated host:port."""
    web_host: str = "127.0.0.1"
    """Address the worker's HTTP port binds to (use 0.0.0.0 in containers)."""
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
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    batch_max_events: int = 5000
    """Most events handed to the stages at once (per fetch)."""
    commit_interval_s: float = 1.0
    """How often delivered offsets are committed."""
    producer_linger_ms: int = 5
    log_level: str = "info"
    group_id: str | None = None
    """Consumer group / Faust app id; default ``pipeline-<topology name>``."""
    extra_kafka: Mapping[str, str] = field(default_factory=dict)
    """Extra librdkafka settings for the output producer and admin client (``PIPELINE_KAFKA_*``)."""

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
            values["extra_kafka"] = extra
        values.update({k: v for k, v in overrides.items() if v is not None})
        if errors:
            raise PipelineError("bad settings:\n  " + "\n  ".join(errors))
        settings = replace(cls(), **values)
        settings.check()
        return settings

    def check(self) -> None:
        problems = []
        if self.store not in ("memory", "rocksdb"):
            problems.append(f"store must be memory or rocksdb, not {self.store!r}")
        if self.processing_guarantee not in ("at_least_once", "exactly_once"):
            problems.append("processing_guarantee must be at_least_once or exactly_once")
        if not 0 <= self.web_port <= 65535:
            problems.append(f"web_port {self.web_port} is not a port")
        if self.batch_max_events < 1:
            problems.append("batch_max_events must be at least 1")
        if self.standby_replicas < 0:
            problems.append(f"standby_replicas must be 0 or more, not {self.standby_replicas}")
        if self.fetch_max_bytes_per_partition < 65536:
            problems.append("fetch_max_bytes_per_partition must be at least 65536")
        if not 0 <= self.fetch_max_wait_ms <= 60_000:
            problems.append(f"fetch_max_wait_ms must be 0-60000, not {self.fetch_max_wait_ms}")
        if self.rocksdb_memory_mb < 16:
            problems.append(f"rocksdb_memory_mb must be at least 16, not {self.rocksdb_memory_mb}")
        if problems:
            raise PipelineError("bad settings:\n  " + "\n  ".join(problems))

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(s.strip().removeprefix("kafka://") for s in self.broker.split(","))


_INT_FIELDS = {
    "web_port",
    "batch_max_events",
    "producer_linger_ms",
    "rocksdb_memory_mb",
    "standby_replicas",
    "fetch_max_bytes_per_partition",
    "fetch_max_wait_ms",
}
_FLOAT_FIELDS = {"commit_interval_s"}


def _coerce(name: str, raw: str) -> Any:
    if name in _INT_FIELDS:
        return int(raw)
    if name in _FLOAT_FIELDS:
        return float(raw)
    if name == "data_dir":
        return Path(raw)
    return raw
