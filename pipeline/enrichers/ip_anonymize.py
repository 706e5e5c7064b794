"""IP anonymisation: truncates (or drops) ``context.ip`` so no full address leaves the pipeline.

    - id: anonymize_ip
      type: enrich
      enricher: ip_anonymize
      config:
        mode: truncate        # or drop
        ipv4_prefix: 24       # keep 24 bits: 81.2.69.142 -> 81.2.69.0
        ipv6_prefix: 48       # keep 48 bits: 2001:db8:85a3:8d3:1319::7348 -> 2001:db8:85a3::

Put the stage after ``geoip`` (and anything else that needs the full address): order is the
topology's.

The defaults are Google Analytics' IP anonymisation: the last octet of an IPv4 address and the
last 80 bits of an IPv6 address are zeroed. Matomo's default masks two bytes of IPv4
(``ipv4_prefix: 16``) and likewise keeps 48 bits of IPv6. Truncation keeps a network, not a
host, so country/region analysis on the stored address stays possible.

What it does to an event:

- truncate: ``context.ip`` becomes the truncated address in its compressed textual form
  (``2001:db8:85a3::``); an IPv4-mapped IPv6 address (``::ffff:81.2.69.142``) is truncated with
  the IPv4 prefix and written as IPv4 (``81.2.69.0``) — with the IPv6 prefix it would keep the
  whole IPv4 address; a zone index (``fe80::1%eth0``) is dropped. Outcome HIT.
- drop: ``context.ip`` is removed. Outcome HIT.
- a value that is not an IP address (it cannot be truncated safely: it may hold an address in
  some other spelling) is removed. Outcome MISS.
- in every case above ``context.ip_anonymized`` is set to true.
- no ``context.ip`` (missing, null or empty): nothing changes. Outcome SKIPPED.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from pipeline.enrichers import EnricherContext, EnricherType, Outcome
from pipeline.enrichers.geoip import parse_ip, unmap
from pipeline.topology.model import Strict

# Enum member access costs ~0.2 us in Python 3.11: the hot path uses these.
_HIT, _MISS, _SKIPPED = Outcome.HIT, Outcome.MISS, Outcome.SKIPPED


def _no_bool(value: Any) -> Any:
    # pydantic's lax int accepts true as 1; a boolean here is always a mistake.
    if isinstance(value, bool):
        raise ValueError("expected an integer, not a boolean")  # noqa: TRY004 - pydantic wants ValueError
    return value


Count = Annotated[int, BeforeValidator(_no_bool)]


class IpAnonymizeConfig(Strict):
    mode: Literal["truncate", "drop"] = "truncate"
    """``truncate``: keep the network prefix of the address; ``drop``: remove the address."""
    ipv4_prefix: Count = Field(default=24, ge=0, le=32)
    """Leading bits of an IPv4 address to keep (24 = zero the last octet, as Google Analytics
    does; 16 = Matomo's default)."""
    ipv6_prefix: Count = Field(default=48, ge=0, le=128)
    """Leading bits of an IPv6 address to keep (48 = zero the last 80 bits, as Google Analytics
    and Matomo do)."""
    cache_size: Count = Field(default=20_000, ge=0, le=10_000_000)
    """Truncated forms kept per distinct IP string (LRU); 0 disables the cache."""


def truncator(ipv4_prefix: int, ipv6_prefix: int) -> Callable[[str], str | None]:
    """A function from an IP string to its truncated textual form, or None if it is not an IP."""
    mask4 = ((1 << ipv4_prefix) - 1) << (32 - ipv4_prefix)
    mask6 = ((1 << ipv6_prefix) - 1) << (128 - ipv6_prefix)
    ntop = socket.inet_ntop  # formats like ipaddress, at a fraction of the cost...
    af4, af6 = socket.AF_INET, socket.AF_INET6
    v6 = ipaddress.IPv6Address

    def truncate(ip: str) -> str | None:
        parsed = parse_ip(ip)
        if parsed is None:
            return None
        version, value = unmap(*parsed)
        if version == 4:
            return ntop(af4, (value & mask4).to_bytes(4, "big"))
        value &= mask6
        if value >> 32 in (0, 0xFFFF):  # ...except ::/96 and ::ffff:0:0/96, which it dots
            return str(v6(value))
        return ntop(af6, value.to_bytes(16, "big"))

    return truncate


class IpAnonymizeEnricher:
    def __init__(self, config: IpAnonymizeConfig, context: EnricherContext) -> None:
        self._drop = config.mode == "drop"
        truncate = truncator(config.ipv4_prefix, config.ipv6_prefix)
        self._truncate = (
            functools.lru_cache(maxsize=config.cache_size)(truncate)
            if config.cache_size
            else truncate
        )

    def enrich(self, event: dict[str, Any]) -> Outcome:
        context = event.get("context")
        if type(context) is not dict:
            return _SKIPPED
        ip = context.get("ip")
        if ip is None or ip == "":
            return _SKIPPED
        context["ip_anonymized"] = True
        if self._drop:
            del context["ip"]
            return _HIT
        truncated = self._truncate(ip) if type(ip) is str else None
        if truncated is None:
            del context["ip"]
            return _MISS
        context["ip"] = truncated
        return _HIT

    def status(self) -> str:
        return "enabled"

    def close(self) -> None:
        pass


ENRICHER = EnricherType(
    name="ip_anonymize",
    config_model=IpAnonymizeConfig,
    build=IpAnonymizeEnricher,
    description="Truncates context.ip to a network prefix (or drops it)",
)
