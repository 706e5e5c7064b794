"""Personal data: hash (keyed) or drop configured fields before the event is written anywhere.

    - id: pii
      type: enrich
      enricher: pii
      config:
        key_env: PIPELINE_PII_KEY          # the default
        fields:
          - {path: user_properties.email, action: hash, normalize: lower_strip}
          - {path: user_properties.phone, action: hash, normalize: phone}
          - {path: properties.coupon, action: drop}
          - {path: context.campaign.click_id, action: hash}

``hash`` replaces the value with the lower-case hex HMAC-SHA256 of its UTF-8 text under a
secret key: the same input always gives the same 64 characters, so hashed fields still join and
count distinct, but nobody without the key can test a guess (a plain SHA-256 of an e-mail
address is reversed by hashing a list of addresses). ``drop`` deletes the key.

Key: the value of the environment variable named by ``key_env`` (from the topology's
environment, ``EnricherContext.env``), used as its UTF-8 bytes; at least 16 bytes
(``openssl rand -hex 32`` makes a good one). A missing, empty or short key when any field uses
``hash`` makes the enricher unavailable, naming the variable, never the value. The key is never
logged, never in a message, ``repr`` or status; it is not kept as an attribute either (only
inside the prepared HMAC object). Rotating the key changes every hash: plan it like a schema
change.

Paths: dotted, into ``properties``, ``user_properties`` or ``context`` (at least one key below
them: the objects themselves are required by the envelope), or any other top-level key except
``event``, ``event_id`` and ``timestamp``; ``user_id``, ``anonymous_id``, ``device_id`` and
``session_id`` can be hashed, not dropped (dropping an identity could leave an event without
one). No wildcards or list indexes. A path that is absent (or null, or
whose parent is not an object) in an event is left alone. Enrichers that write into
``context`` (``campaign``, ``referrer``, ...) must run before this one for their output to be
covered.

Values:
* strings are hashed as they are, after the field's ``normalize`` step: ``none``; ``strip``;
  ``lower_strip`` (e-mail addresses: ``" Ann@Example.COM"`` and ``"ann@example.com"`` hash the
  same); ``phone`` (keeps digits and a leading ``+``: ``"+49 (151) 234-5"`` → ``+491512345``).
* numbers and booleans are hashed as their JSON text (``4915123`` hashes like
  ``"4915123"``; ``true`` like ``"true"``), so a phone number sent as a number still matches the
  same number sent as a string. Normalisation applies to that text too.
* lists and objects: ``containers: hash_json`` (default) hashes their canonical JSON (sorted
  keys, compact): the field keeps a string type and nothing stays in clear, but it only matches
  an identical structure. ``containers: drop`` deletes them instead.

Outcome: HIT when anything was hashed or dropped, SKIPPED otherwise.

Cost: one HMAC per present field, from a keyed state prepared once (``copy()`` of it is ~1.5x
faster than ``hmac.new`` per value, and faster than ``hmac.digest``); ``python -m
tests.enrichers.test_pii`` measures it. No cache of hashes: a value -> hash map would keep
personal data in clear in memory, to save about 2 µs per field.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any, Literal

import orjson
from pydantic import Field, field_validator, model_validator

from pipeline.enrichers import EnricherContext, EnricherType, EnricherUnavailable, Outcome
from pipeline.topology.model import Strict

# Enum member access costs ~0.2 us in Python 3.11: the hot path uses these.
_HIT, _SKIPPED = Outcome.HIT, Outcome.SKIPPED

MIN_KEY_BYTES = 16
_SEGMENT = r"[A-Za-z0-9_$@\-]{1,128}"
_PATH_RE = re.compile(rf"^{_SEGMENT}(\.{_SEGMENT}){{0,15}}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_OBJECT_ROOTS = frozenset({"properties", "user_properties", "context"})
_IDENTITY_ROOTS = frozenset({"user_id", "anonymous_id", "device_id", "session_id"})
_STRUCTURAL = frozenset({"event", "event_id", "timestamp"})
_NOT_DIGITS = re.compile(r"[^0-9]")


def _normalise(text: str, how: str) -> str:
    if how == "none":
        return text
    if how == "strip":
        return text.strip()
    if how == "lower_strip":
        return text.strip().lower()
    # phone: digits, and a leading + if the number had one
    text = text.strip()
    digits = _NOT_DIGITS.sub("", text)
    return "+" + digits if text.startswith("+") else digits


def check_path(path: str) -> str:
    """Validate a dotted event path for these enrichers (raises ``ValueError``).

    Any top-level key or a key below ``properties``, ``user_properties`` or ``context``; not
    ``event``, ``event_id``, ``timestamp`` (the event would be invalid), nor a whole object that
    the envelope requires, nor a path below an identity (identities are strings)."""
    if not _PATH_RE.match(path):
        raise ValueError(
            f"{path!r} is not a dotted path (keys of letters, digits, _ $ @ -, joined by '.')"
        )
    parts = path.split(".")
    root = parts[0]
    if root in _OBJECT_ROOTS and len(parts) == 1:
        raise ValueError(f"{path!r} is a whole object; name a key inside it ({root}.<key>)")
    if root in _STRUCTURAL:
        raise ValueError(f"{path!r} cannot be changed: every event needs it")
    if root in _IDENTITY_ROOTS and len(parts) > 1:
        raise ValueError(f"{path!r} goes below {root}, which is a string")
    return path


class PiiField(Strict):
    path: str
    """Dotted path, e.g. ``user_properties.email`` or ``context.ip``."""
    action: Literal["hash", "drop"]
    """``hash``: keyed HMAC-SHA256, hex. ``drop``: delete the key."""
    normalize: Literal["none", "strip", "lower_strip", "phone"] = "none"
    """Applied to the text before hashing so the same person hashes the same."""

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_path(value)

    @model_validator(mode="after")
    def _consistent(self) -> "PiiField":
        if self.action == "drop":
            if self.path in _IDENTITY_ROOTS:
                raise ValueError(
                    f"dropping {self.path} could leave an event without an identity; use hash"
                )
            if self.normalize != "none":
                raise ValueError("normalize only applies to action: hash")
        return self


class PiiConfig(Strict):
    fields: list[PiiField] = Field(min_length=1, max_length=256)
    """What to hash or drop, applied in order."""
    key_env: str = "PIPELINE_PII_KEY"
    """Name of the environment variable holding the HMAC key (at least 16 bytes)."""
    containers: Literal["hash_json", "drop"] = "hash_json"
    """What ``hash`` does to a list or object value: hash its canonical JSON, or drop it."""

    @field_validator("key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_RE.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _distinct_paths(self) -> "PiiConfig":
        paths = [f.path for f in self.fields]
        for i, path in enumerate(paths):
            for j, other in enumerate(paths[:i]):
                if path == other:
                    raise ValueError(f"fields[{i}]: {path!r} is listed twice (fields[{j}])")
                if path.startswith(other + ".") or other.startswith(path + "."):
                    raise ValueError(
                        f"fields[{i}]: {path!r} overlaps fields[{j}] {other!r}; list one of them"
                    )
        return self


class PiiEnricher:
    def __init__(self, config: PiiConfig, context: EnricherContext) -> None:
        self._config = config
        hashing = [f.path for f in config.fields if f.action == "hash"]
        self._hmac: Any = None
        if hashing:
            key = context.env.get(config.key_env) or ""
            if not key:
                raise EnricherUnavailable(
                    f"environment variable {config.key_env} is not set or empty; it must hold "
                    f"the HMAC key (at least {MIN_KEY_BYTES} bytes) to hash {', '.join(hashing)}"
                )
            key_bytes = key.encode("utf-8", "surrogatepass")
            if len(key_bytes) < MIN_KEY_BYTES:
                raise EnricherUnavailable(
                    f"the key in environment variable {config.key_env} is shorter than "
                    f"{MIN_KEY_BYTES} bytes; use a random key (e.g. openssl rand -hex 32)"
                )
            self._hmac = hmac.new(key_bytes, digestmod=hashlib.sha256)
            del key, key_bytes
        # Fields in config order, those with the same parent object next to each other grouped:
        # [(first key of the parent path or None for the event itself, the rest of the parent
        # path, [(last key, hash?, normalize)])]. Each parent is looked up once per event and
        # passed over when empty: most events carry none of the fields.
        self._plan: list[tuple[str | None, tuple[str, ...], list[tuple[str, bool, str]]]] = []
        previous: list[str] | None = None
        for f in config.fields:
            *parents, last = f.path.split(".")
            if parents != previous:
                first = parents[0] if parents else None
                self._plan.append((first, tuple(parents[1:]), []))
                previous = parents
            self._plan[-1][2].append((last, f.action == "hash", f.normalize))
        self._drop_containers = config.containers == "drop"

    def _hash(self, text: str) -> str:
        mac = self._hmac.copy()
        mac.update(text.encode("utf-8", "surrogatepass"))
        return mac.hexdigest()

    def enrich(self, event: dict[str, Any]) -> Outcome:
        changed = False
        for first, deeper, leaves in self._plan:
            node: Any = event if first is None else event.get(first)
            for part in deeper:
                if type(node) is not dict:
                    break
                node = node.get(part)
            if type(node) is not dict or not node:
                continue
            for last, hashing, normalize in leaves:
                value = node.get(last)
                if value is None:
                    continue
                if not hashing:
                    del node[last]
                    changed = True
                    continue
                kind = type(value)
                if kind is str:
                    text = value
                elif kind is dict or kind is list:
                    if self._drop_containers:
                        del node[last]
                        changed = True
                        continue
                    node[last] = self._hash(
                        orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode("utf-8")
                    )
                    changed = True
                    continue
                else:  # bool, int, float (anything else JSON can hold)
                    text = orjson.dumps(value).decode("utf-8")
                if normalize != "none":
                    text = _normalise(text, normalize)
                node[last] = self._hash(text)
                changed = True
        return _HIT if changed else _SKIPPED

    def status(self) -> str:
        return "enabled"

    def close(self) -> None:
        self._hmac = None

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.path}:{f.action}" for f in self._config.fields)
        return f"<PiiEnricher [{fields}] key from ${self._config.key_env}>"


ENRICHER = EnricherType(
    name="pii",
    config_model=PiiConfig,
    build=PiiEnricher,
    description="Hashes (keyed HMAC-SHA256) or drops configured personal fields",
    protects_privacy=True,
)
