"""Small MaxMind DB (``.mmdb``) files written at test time, so GeoIP tests need no download.

Uses the ``mmdb-writer`` package (dev extra). Databases are IPv6 with IPv4 stored at ``::/96``,
as MaxMind's own are, and carry the ``database_type`` that the readers check.

    write_city_db(path, {"81.2.69.0/24": city_record("GB", "United Kingdom", city="London")})
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def write_mmdb(
    path: Path,
    records: Mapping[str, Mapping[str, Any]],
    *,
    database_type: str,
    languages: tuple[str, ...] = ("en",),
) -> Path:
    """Write ``{network: record}`` as a database at ``path``, atomically (write, then rename).

    Networks are CIDR strings, IPv4 or IPv6; a more specific network inserted after a wider one
    overrides it for its addresses.
    """
    writer = MMDBWriter(
        ip_version=6,
        database_type=database_type,
        languages=list(languages),
        description="pipeline test fixture",
        ipv4_compatible=True,
    )
    for network, record in records.items():
        writer.insert_network(IPSet([network]), dict(record))
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    writer.to_db_file(str(partial))
    os.replace(partial, path)
    return path


def city_record(
    country_code: str,
    country_name: str,
    *,
    city: str | None = None,
    region: str | None = None,
    region_code: str | None = None,
    postal_code: str | None = None,
    latitude: float | None = None,
    longitude: float | None = None,
    accuracy_radius: int | None = None,
    time_zone: str | None = None,
    names: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """A GeoIP2-City record; ``names`` adds translations: ``{"city": {"de": "London"}}``."""
    extra = names or {}
    record: dict[str, Any] = {
        "country": {
            "iso_code": country_code,
            "geoname_id": 1000,
            "names": {"en": country_name, **extra.get("country", {})},
        }
    }
    if city is not None:
        record["city"] = {"geoname_id": 2000, "names": {"en": city, **extra.get("city", {})}}
    if region is not None or region_code is not None:
        subdivision: dict[str, Any] = {"geoname_id": 3000}
        if region is not None:
            subdivision["names"] = {"en": region, **extra.get("region", {})}
        if region_code is not None:
            subdivision["iso_code"] = region_code
        record["subdivisions"] = [subdivision]
    if postal_code is not None:
        record["postal"] = {"code": postal_code}
    location = {
        "latitude": latitude,
        "longitude": longitude,
        "accuracy_radius": accuracy_radius,
        "time_zone": time_zone,
    }
    location = {k: v for k, v in location.items() if v is not None}
    if location:
        record["location"] = location
    return record


def write_city_db(path: Path, records: Mapping[str, Mapping[str, Any]]) -> Path:
    return write_mmdb(path, records, database_type="GeoIP2-City", languages=("de", "en", "fr"))


def write_asn_db(path: Path, records: Mapping[str, tuple[int, str]]) -> Path:
    """``{network: (asn, organisation)}``."""
    return write_mmdb(
        path,
        {
            net: {"autonomous_system_number": asn, "autonomous_system_organization": org}
            for net, (asn, org) in records.items()
        },
        database_type="GeoLite2-ASN",
    )


def write_anonymous_ip_db(path: Path, records: Mapping[str, Mapping[str, bool]]) -> Path:
    """``{network: {"is_anonymous": True, "is_tor_exit_node": True, ...}}`` (absent = false)."""
    return write_mmdb(path, records, database_type="GeoIP2-Anonymous-IP")
