"""GeoIP: where an event's ``context.ip`` is, from MaxMind databases (GeoIP2/GeoLite2).

    - id: geo
      type: enrich
      enricher: geoip
      optional: true                  # no database configured: run disabled and say so
      config:
        city_db: "${GEOIP_CITY_DB:-}" # GeoIP2-City / GeoLite2-City (.mmdb)
        asn_db: "${GEOIP_ASN_DB:-}"   # optional: GeoLite2-ASN / GeoIP2-ISP
        anonymous_ip_db: ""           # optional: GeoIP2-Anonymous-IP
        cache_size: 20000
        reload_check_interval: 60s
        locale: en

Writes ``context.geo`` (every key always present; unknown values are null)::

    {"ip_type": "public", "found": true, "country_code": "GB", "country_name": "United Kingdom",
     "region": "England", "region_code": "ENG", "city": "London", "postal_code": "SW1A",
     "latitude": 51.5142, "longitude": -0.0931, "accuracy_radius_km": 100,
     "time_zone": "Europe/London", "asn": 20712, "as_org": "Andrews & Arnold Ltd",
     "is_anonymous": false, "is_anonymous_vpn": false, "is_hosting_provider": false,
     "is_public_proxy": false, "is_tor_exit_node": false}

- ``ip_type``: ``public`` addresses are looked up; ``private`` (not globally reachable per IANA:
  RFC 1918, carrier-grade NAT, unique-local, documentation ranges...), ``loopback``,
  ``link_local``, ``multicast``, ``reserved`` and ``unspecified`` ones are not (they have no
  location), and ``invalid`` marks a value that is not an IP address. An IPv4-mapped IPv6
  address (``::ffff:1.2.3.4``) is the IPv4 address it carries. The classification is Python's
  ``ipaddress`` (see :func:`classify`).
- ``found``: the city database has a record for the address. ``region``/``region_code`` are the
  first (largest) subdivision: a state, a province, a UK country. Names are in ``locale``,
  falling back to English when the database has no name in that language.
- ``asn``/``as_org`` come from ``asn_db`` (or from the city record itself in databases that
  carry them, such as GeoIP2-Enterprise).
- The ``is_*`` flags are null without ``anonymous_ip_db``; with it, an address that the
  database does not list is ``false`` throughout.

Outcomes: HIT (found in the city database), MISS (public but not found), SKIPPED (no IP: no
``geo`` key; not a public address or not an address: ``geo`` with ``found: false``).

Start-up: ``city_db`` empty (the ``${GEOIP_CITY_DB:-}`` of the example, with the variable
unset) raises :class:`EnricherUnavailable`, so a stage marked ``optional: true`` runs disabled
and reports ``disabled: no city database configured (set GEOIP_CITY_DB)``; without
``optional`` the worker refuses to start. A missing, unreadable or corrupt file, or a database
of the wrong type (an ASN database given as ``city_db``), is reported the same way, naming the
path. A relative path is relative to the topology file.

Database updates: operators replace the files (weekly, with ``geoipupdate``). At most once per
``reload_check_interval`` (measured with the injected clock, on the event path: no thread)
the files' identity (device, inode, size, mtime) is compared with the loaded one's; a changed
file is opened and checked and only then swapped in (and the cache emptied). A replacement that
does not open is logged once and the loaded database stays in use. Replace files atomically
(write beside, then rename, as geoipupdate does): the reader maps the file into memory, so a
file overwritten in place can be read half-written.

Speed: lookups go straight to ``maxminddb``'s C extension (``Reader.get``), the reader under
``geoip2``, and the raw record is mapped here; ``geoip2``'s ``Reader.city()`` builds a model
object per lookup for the same values (about 2.3-2.5x the cost; both measured in
``tests/enrichers/test_geoip.py``, which also checks that the results equal ``geoip2``'s on
MaxMind's test databases). Addresses are classified with ``inet_pton`` and a table of special
ranges, not ``ipaddress`` properties (those cost more than the lookup). Results are kept in an
LRU cache keyed by the IP string: real traffic repeats addresses.
"""

from __future__ import annotations

import bisect
import datetime
import functools
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import maxminddb
from pydantic import BeforeValidator, Field

from pipeline.enrichers import EnricherContext, EnricherType, EnricherUnavailable, Outcome
from pipeline.topology.model import Duration, Strict

log = logging.getLogger(__name__)

# Enum member access costs ~0.2 us in Python 3.11: the hot path uses these.
_HIT, _MISS, _SKIPPED = Outcome.HIT, Outcome.MISS, Outcome.SKIPPED

GEO_KEYS = (
    "ip_type",
    "found",
    "country_code",
    "country_name",
    "region",
    "region_code",
    "city",
    "postal_code",
    "latitude",
    "longitude",
    "accuracy_radius_km",
    "time_zone",
    "asn",
    "as_org",
    "is_anonymous",
    "is_anonymous_vpn",
    "is_hosting_provider",
    "is_public_proxy",
    "is_tor_exit_node",
)
"""The keys of ``context.geo``, in order (the schema is stable: absent values are null)."""

ANONYMOUS_FLAGS = (
    "is_anonymous",
    "is_anonymous_vpn",
    "is_hosting_provider",
    "is_public_proxy",
    "is_tor_exit_node",
)

IpType = Literal[
    "public", "private", "loopback", "link_local", "multicast", "reserved", "unspecified", "invalid"
]

# Languages of MaxMind's GeoIP2/GeoLite2 databases.
Locale = Literal["de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"]


def _no_bool(value: Any) -> Any:
    # pydantic's lax int accepts true as 1; a boolean here is always a mistake.
    if isinstance(value, bool):
        raise ValueError("expected an integer, not a boolean")  # noqa: TRY004 - pydantic wants ValueError
    return value


Count = Annotated[int, BeforeValidator(_no_bool)]


class GeoipConfig(Strict):
    city_db: str = ""
    """Path of a City database (GeoIP2-City, GeoLite2-City or GeoIP2-Enterprise ``.mmdb``),
    relative to the topology file. Empty means not configured: the enricher cannot start
    (mark the stage ``optional: true`` to run without it)."""
    asn_db: str = ""
    """Optional path of an ASN database (GeoLite2-ASN or GeoIP2-ISP) for ``asn``/``as_org``.
    Empty: not used."""
    anonymous_ip_db: str = ""
    """Optional path of a GeoIP2-Anonymous-IP database for the ``is_*`` flags. Empty: not used
    (the flags are null)."""
    cache_size: Count = Field(default=20_000, ge=0, le=10_000_000)
    """Results kept per distinct IP string (LRU); 0 disables the cache. About 1 KB each."""
    reload_check_interval: Duration = 60.0
    """How often (at most) to check whether a database file was replaced; 0 checks on every
    event."""
    locale: Locale = "en"
    """Language of country, region and city names (English when a name is missing in it)."""


# --------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_inet_pton = socket.inet_pton
_MAPPED_PREFIX = 0xFFFF  # ::ffff:0:0/96, shifted right by 32 bits


def parse_ip(text: str) -> tuple[int, int] | None:
    """``(version, integer value)`` of an IP address string, or None when it is not one.

    Accepts exactly what :func:`ipaddress.ip_address` accepts (``inet_pton`` is the fast path;
    only a zone index such as ``fe80::1%eth0`` takes the slow one, and the zone is dropped).
    An IPv4-mapped IPv6 address stays version 6 here; see :func:`unmap`.
    """
    try:
        if ":" in text:
            return 6, int.from_bytes(_inet_pton(_AF_INET6, text), "big")
        return 4, int.from_bytes(_inet_pton(_AF_INET, text), "big")
    except (OSError, ValueError):  # ValueError: an embedded NUL character
        pass
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address.version, int(address)


def unmap(version: int, value: int) -> tuple[int, int]:
    """An IPv4-mapped IPv6 address (``::ffff:1.2.3.4``) as the IPv4 address; others unchanged."""
    if version == 6 and value >> 32 == _MAPPED_PREFIX:
        return 4, value & 0xFFFFFFFF
    return version, value


# A superset of every address that ipaddress does not call global, per family, as sorted,
# disjoint [start, end] integer ranges. Outside them an address is public without asking
# ipaddress (whose properties cost more than a database lookup); inside, ipaddress decides.
# IANA special-purpose registries, plus ranges newer Pythons classify (2002::/16, 3fff::/20).
_SPECIAL_V4 = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24",
    "192.88.99.0/24", "192.168.0.0/16", "192.175.48.0/24", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/3",
)  # fmt: skip
_SPECIAL_V6 = (
    "::/3",  # everything below 2000::/3 (global unicast): ::1, ::, ::/96, 64:ff9b::/96, 100::/64...
    "2001::/23", "2001:db8::/32", "2002::/16", "2620:4f:8000::/48", "3fff::/20",
    "4000::/2", "8000::/1",  # everything above 2000::/3: fc00::/7, fe80::/10, ff00::/8...
)  # fmt: skip


@functools.cache
def _special_ranges() -> dict[int, tuple[list[int], list[int]]]:
    """Per version, the starts and ends of the special ranges (built once, on first use)."""
    out: dict[int, tuple[list[int], list[int]]] = {}
    for version, networks in ((4, _SPECIAL_V4), (6, _SPECIAL_V6)):
        spans = sorted(
            (int(n.network_address), int(n.broadcast_address))
            for n in map(ipaddress.ip_network, networks)
        )
        merged: list[list[int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out[version] = ([s for s, _ in merged], [e for _, e in merged])
    return out


def _ipaddress_type(version: int, value: int) -> IpType:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address = (
        ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)
    )
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:  # before private: 240.0.0.0/4 is both
        return "reserved"
    if address.is_private or not address.is_global:
        return "private"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:  # fec0::/10
        return "private"
    return "public"


def classify(version: int, value: int) -> IpType:
    """The ``ip_type`` of an (unmapped) address: ``public`` or why it is not looked up."""
    starts, ends = _special_ranges()[version]
    i = bisect.bisect_right(starts, value) - 1
    if i < 0 or value > ends[i]:
        return "public"
    return _ipaddress_type(version, value)


# --------------------------------------------------------------------------------------------
# Databases
# --------------------------------------------------------------------------------------------

_CITY_TYPES = ("City", "Enterprise")
_ASN_TYPES = ("ASN", "ISP")
_ANONYMOUS_TYPES = ("Anonymous-IP", "Anonymous-Plus")


def _file_identity(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _Database:
    """One database file, open, and the identity of the file it was opened from."""

    def __init__(self, role: str, path: Path, accepted_types: tuple[str, ...]) -> None:
        self.role = role
        self.path = path
        self.accepted_types = accepted_types
        self.identity, self.reader = self._open()
        self.rejected: tuple[int, int, int, int] | None = None
        """Identity of a replacement that failed to open (not retried until it changes)."""
        self.failure: str | None = None

    def _open(self) -> tuple[tuple[int, int, int, int], Any]:
        path, role = self.path, self.role
        try:
            identity = _file_identity(path)
        except FileNotFoundError:
            raise EnricherUnavailable(f"{role} database {path} does not exist") from None
        except OSError as exc:
            raise EnricherUnavailable(f"cannot read {role} database {path}: {exc}") from None
        try:
            reader = maxminddb.open_database(str(path), maxminddb.MODE_AUTO)
        except Exception as exc:  # noqa: BLE001 - anything that stops it opening is "corrupt"
            raise EnricherUnavailable(
                f"{role} database {path} is not a valid MaxMind DB file "
                f"({type(exc).__name__}: {exc})"
            ) from None
        try:
            database_type = str(reader.metadata().database_type)
            if not any(t in database_type for t in self.accepted_types):
                raise EnricherUnavailable(
                    f"{role} database {path} is a {database_type!r} database, expected one whose "
                    f"type contains {' or '.join(map(repr, self.accepted_types))}"
                )
            # One lookup walks the search tree and decodes a record: catches a damaged body
            # that still has valid metadata.
            reader.get("1.1.1.1")
        except EnricherUnavailable:
            reader.close()
            raise
        except Exception as exc:  # noqa: BLE001
            reader.close()
            raise EnricherUnavailable(
                f"{role} database {path} is corrupt ({type(exc).__name__}: {exc})"
            ) from None
        return identity, reader

    @property
    def ipv4_only(self) -> bool:
        return self.reader.metadata().ip_version == 4

    def refresh(self) -> bool:
        """Swap in the file at ``path`` if it is a new one that opens fine. True if swapped."""
        try:
            identity = _file_identity(self.path)
        except OSError as exc:
            self._fail(f"cannot read {self.path} ({exc}); keeping the loaded database", None)
            return False
        if identity == self.identity or identity == self.rejected:
            return False
        try:
            identity_opened, reader = self._open()
        except EnricherUnavailable as exc:
            self._fail(f"{exc}; keeping the database loaded before", identity)
            return False
        old, self.reader, self.identity = self.reader, reader, identity_opened
        self.rejected = self.failure = None
        old.close()
        log.info("%s database %s reloaded (%s)", self.role, self.path, describe(reader))
        return True

    def _fail(self, message: str, identity: tuple[int, int, int, int] | None) -> None:
        self.rejected = identity
        if message != self.failure:  # once per failure, not once per check
            log.error("geoip: %s", message)
            self.failure = message

    def close(self) -> None:
        self.reader.close()


def describe(reader: Any) -> str:
    """``GeoLite2-City built 2018-07-03`` (for logs)."""
    meta = reader.metadata()
    built = datetime.datetime.fromtimestamp(meta.build_epoch, datetime.UTC).date()
    slow = "" if type(reader).__module__ == "maxminddb.extension" else ", pure-Python reader (slow)"
    return f"{meta.database_type} built {built.isoformat()}{slow}"


# --------------------------------------------------------------------------------------------
# The enricher
# --------------------------------------------------------------------------------------------

_EMPTY: dict[str, Any] = dict.fromkeys(GEO_KEYS)


def _empty(ip_type: str) -> dict[str, Any]:
    geo = _EMPTY.copy()
    geo["ip_type"] = ip_type
    geo["found"] = False
    return geo


def _namer(locale: str) -> Callable[[Any], str | None]:
    def name(names: Any) -> str | None:
        if not names:
            return None
        found = names.get(locale)
        if found is None and locale != "en":
            found = names.get("en")
        return found

    return name


class GeoipEnricher:
    def __init__(self, config: GeoipConfig, context: EnricherContext) -> None:
        if not config.city_db.strip():
            raise EnricherUnavailable("no city database configured (set GEOIP_CITY_DB)")
        self._clock = context.clock
        self._interval = config.reload_check_interval
        self._name = _namer(config.locale)
        self._cache_size = config.cache_size
        self._databases: list[_Database] = []
        self._lookup: Callable[[str], tuple[Outcome, dict[str, Any]]] = self.lookup
        try:
            city = self._add("city", config.city_db, _CITY_TYPES, context)
            assert city is not None  # checked above
            self._city = city
            self._asn = self._add("asn", config.asn_db, _ASN_TYPES, context)
            self._anonymous = self._add(
                "anonymous_ip", config.anonymous_ip_db, _ANONYMOUS_TYPES, context
            )
        except EnricherUnavailable:
            self.close()
            raise
        _special_ranges()
        self._bind()
        self._next_check = self._clock() + self._interval
        for db in self._databases:
            log.info("geoip: %s database %s (%s)", db.role, db.path, describe(db.reader))

    def _add(
        self, role: str, path: str, types: tuple[str, ...], context: EnricherContext
    ) -> _Database | None:
        if not path.strip():
            return None
        db = _Database(role, context.resolve(path.strip()), types)
        self._databases.append(db)
        return db

    def _bind(self) -> None:
        """(Re)build the hot-path references after a database was (re)opened; empties the cache."""
        self._city_get = self._city.reader.get
        self._city_v4_only = self._city.ipv4_only
        self._asn_get = self._asn.reader.get if self._asn else None
        self._asn_v4_only = self._asn.ipv4_only if self._asn else False
        self._anonymous_get = self._anonymous.reader.get if self._anonymous else None
        self._anonymous_v4_only = self._anonymous.ipv4_only if self._anonymous else False
        if self._cache_size:
            self._lookup = functools.lru_cache(maxsize=self._cache_size)(self.lookup)
        else:
            self._lookup = self.lookup

    def _check_files(self, now: float) -> None:
        self._next_check = now + self._interval
        swapped = False
        for db in self._databases:
            swapped |= db.refresh()
        if swapped:
            self._bind()

    # The hot path ----------------------------------------------------------------------------

    def enrich(self, event: dict[str, Any]) -> Outcome:
        context = event.get("context")
        if type(context) is not dict:
            return _SKIPPED
        ip = context.get("ip")
        if ip is None or ip == "":
            return _SKIPPED
        now = self._clock()
        if now >= self._next_check:
            self._check_files(now)
        outcome, geo = self._lookup(ip) if type(ip) is str else _INVALID
        context["geo"] = geo.copy()  # cached dicts are shared: each event gets its own
        return outcome

    def lookup(self, ip: str) -> tuple[Outcome, dict[str, Any]]:
        """The outcome and ``geo`` object for one IP string (uncached)."""
        parsed = parse_ip(ip)
        if parsed is None:
            return _INVALID
        version, value = unmap(*parsed)
        ip_type = classify(version, value)
        if ip_type != "public":
            return _SKIPPED, _empty(ip_type)
        address = ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)
        geo = _empty("public")
        if version == 4 or not self._city_v4_only:
            record = self._city_get(address)
            if record:
                self._map_city(geo, record)
        if self._asn_get is not None and (version == 4 or not self._asn_v4_only):
            record = self._asn_get(address)
            if record:
                geo["asn"] = record.get("autonomous_system_number")
                geo["as_org"] = record.get("autonomous_system_organization")
        if self._anonymous_get is not None:
            record = None
            if version == 4 or not self._anonymous_v4_only:
                record = self._anonymous_get(address)
            record = record or {}
            for flag in ANONYMOUS_FLAGS:
                geo[flag] = bool(record.get(flag, False))
        return (_HIT if geo["found"] else _MISS), geo

    def _map_city(self, geo: dict[str, Any], record: dict[str, Any]) -> None:
        # The same fields geoip2's City model exposes (country, not registered_country; see
        # the conformance test), read from the raw record.
        name = self._name
        geo["found"] = True
        country = record.get("country")
        if country:
            geo["country_code"] = country.get("iso_code")
            geo["country_name"] = name(country.get("names"))
        subdivisions = record.get("subdivisions")
        if subdivisions:
            region = subdivisions[0]
            geo["region"] = name(region.get("names"))
            geo["region_code"] = region.get("iso_code")
        city = record.get("city")
        if city:
            geo["city"] = name(city.get("names"))
        postal = record.get("postal")
        if postal:
            geo["postal_code"] = postal.get("code")
        location = record.get("location")
        if location:
            geo["latitude"] = location.get("latitude")
            geo["longitude"] = location.get("longitude")
            geo["accuracy_radius_km"] = location.get("accuracy_radius")
            geo["time_zone"] = location.get("time_zone")
        traits = record.get("traits")
        if traits and "autonomous_system_number" in traits:  # Enterprise databases
            geo["asn"] = traits.get("autonomous_system_number")
            geo["as_org"] = traits.get("autonomous_system_organization")

    def status(self) -> str:
        return "enabled"

    def close(self) -> None:
        self._lookup = self.lookup
        for db in self._databases:
            db.close()
        self._databases = []


_INVALID: tuple[Outcome, dict[str, Any]] = (Outcome.SKIPPED, _empty("invalid"))

ENRICHER = EnricherType(
    name="geoip",
    config_model=GeoipConfig,
    build=GeoipEnricher,
    description="Country, region, city, location, ASN and anonymity of context.ip (MaxMind)",
)
