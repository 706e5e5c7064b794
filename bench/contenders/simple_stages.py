"""The stages both simple contenders run, written the straightforward way most teams start with:
required-field checks, uncached ``user_agents.parse``, a ``geoip2`` city lookup per event."""

import geoip2.errors
import user_agents

IDENTITY_FIELDS = ("user_id", "anonymous_id", "device_id")


def validate(event):
    """Return an error string, or None when the event is usable."""
    if not isinstance(event, dict):
        return "not_an_object"
    name = event.get("event", event.get("event_name"))
    if not isinstance(name, str) or not name:
        return "missing_event_name"
    if event.get("timestamp") in (None, ""):
        return "missing_timestamp"
    if not any(event.get(f) for f in IDENTITY_FIELDS):
        return "missing_identity"
    return None


def enrich(event, reader):
    context = event.get("context")
    if not isinstance(context, dict):
        return event
    ua = context.get("user_agent")
    if isinstance(ua, str) and ua:
        parsed = user_agents.parse(ua)
        context["ua"] = {
            "browser": parsed.browser.family,
            "browser_version": parsed.browser.version_string,
            "os": parsed.os.family,
            "os_version": parsed.os.version_string,
            "device": parsed.device.family,
            "is_mobile": parsed.is_mobile,
            "is_bot": parsed.is_bot,
        }
    ip = context.get("ip")
    if isinstance(ip, str) and ip:
        try:
            city = reader.city(ip)
            context["geo"] = {
                "country": city.country.iso_code,
                "city": city.city.name,
                "lat": city.location.latitude,
                "lon": city.location.longitude,
            }
        except (geoip2.errors.AddressNotFoundError, ValueError):
            context["geo"] = None
    return event
