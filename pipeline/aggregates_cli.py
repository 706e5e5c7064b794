"""``pipeline aggregates show``: a running worker's live aggregates, as a table.

Asks the worker's HTTP API (``pipeline.runtime.app.add_aggregate_views``): ``GET /aggregates``
lists the aggregates, ``GET /aggregates/{name}`` gives one aggregate's pending windows (merged
over the partials received so far) and its recent final ones. Any worker of the group answers
(it forwards to the worker combining the aggregate). Standard library only (urllib), every
request bounded by a timeout: no worker at the URL is a one-line error, never a hang.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from pipeline.errors import PipelineError
from pipeline.topics import render_table

if TYPE_CHECKING:
    from pipeline.topology.model import Topology

DEFAULT_TIMEOUT_S = 10.0


class WorkerUnavailable(PipelineError):
    """No worker answered at the URL."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any
    """The JSON body (None when it was not JSON)."""


def normalize_url(url: str) -> str:
    """``host:port`` → ``http://host:port``; no trailing slash."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise PipelineError(f"--url {url!r} is not an http:// URL of a worker (e.g. http://127.0.0.1:6066)")
    return url.rstrip("/")


def get(base_url: str, path: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> Answer:
    """GET ``base_url + path``; any HTTP status is an ``Answer``; no answer at all raises
    ``WorkerUnavailable``."""
    url = base_url + path
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, data = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, (TimeoutError, socket.timeout)):
            reason = f"no answer within {timeout:g}s"
        raise WorkerUnavailable(
            f"no worker answers at {base_url}: {reason} (is `pipeline worker` running there? "
            "see --url)"
        ) from None
    try:
        body = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        body = None
    return Answer(status, body)


def _error_text(answer: Answer) -> str:
    if isinstance(answer.body, dict) and isinstance(answer.body.get("error"), str):
        return answer.body["error"]
    return f"HTTP {answer.status}"


def list_aggregates(base_url: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
    answer = get(base_url, "/aggregates", timeout=timeout)
    if answer.status == 404:
        raise PipelineError(
            f"the worker at {base_url} serves no aggregates (its topology has no aggregate stage)"
        )
    if answer.status != 200 or not isinstance(answer.body, dict) or not isinstance(
        answer.body.get("aggregates"), list
    ):
        raise PipelineError(
            f"{base_url}/aggregates answered {_error_text(answer)}: not a pipeline worker?"
        )
    return answer.body["aggregates"]


def aggregate_snapshot(base_url: str, name: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """One aggregate's windows; a clear ``PipelineError`` for an unknown aggregate (404), a
    rebalance (503) or an unreachable combining worker (502)."""
    answer = get(base_url, "/aggregates/" + urllib.parse.quote(name, safe=""), timeout=timeout)
    if answer.status == 200 and isinstance(answer.body, dict):
        return answer.body
    if answer.status == 404:
        known = answer.body.get("aggregates") if isinstance(answer.body, dict) else None
        if isinstance(known, list):
            raise PipelineError(
                f"unknown aggregate {name} (known: {', '.join(map(str, known)) or 'none'})"
            )
        raise PipelineError(
            f"the worker at {base_url} serves no aggregates (its topology has no aggregate stage)"
        )
    if answer.status == 503:
        raise PipelineError(
            f"aggregate {name}: rebalancing, try again ({_error_text(answer)})"
        )
    if answer.status == 502:
        raise PipelineError(f"aggregate {name}: {_error_text(answer)}; try again")
    raise PipelineError(f"{base_url}/aggregates/{name} answered {_error_text(answer)}")


# ------------------------------------------------------------------ rendering


def format_ms(ms: Any) -> str:
    if not isinstance(ms, int):
        return "-"
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    if moment.second == 0 and moment.microsecond == 0:
        return moment.strftime("%Y-%m-%d %H:%M")
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _duration(ms: Any) -> str:
    if not isinstance(ms, int):
        return "?"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def describe_window(window: dict[str, Any]) -> str:
    kind = window.get("type", "?")
    text = f"{kind} {_duration(window.get('size_ms'))}"
    advance = window.get("advance_ms")
    if advance and advance != window.get("size_ms"):
        text += f" every {_duration(advance)}"
    if window.get("grace_ms"):
        text += f", grace {_duration(window['grace_ms'])}"
    return text


def _measure_text(measure: dict[str, Any]) -> str:
    kind = measure.get("type", "?")
    field = measure.get("field")
    return f"{measure.get('id', '?')} ({kind}{' of ' + field if field else ''})"


def format_listing(aggregates: list[dict[str, Any]], snapshots: dict[str, dict[str, Any] | str]) -> str:
    """``GET /aggregates`` and, per aggregate, its snapshot (or why there is none)."""
    rows = []
    for a in aggregates:
        name = a.get("aggregate", "?")
        snapshot = snapshots.get(name)
        if isinstance(snapshot, dict):
            windows = snapshot.get("windows") or []
            pending = [w for w in windows if not w.get("final")]
            final = [w for w in windows if w.get("final")]
            latest = max((w.get("window_start", 0) for w in pending), default=None)
            state = f"{len(pending)} pending, {len(final)} recent final"
            if latest is not None:
                state += f"; latest {format_ms(latest)}"
        else:
            state = snapshot or "-"
        rows.append((
            name,
            describe_window(a.get("window") or {}),
            ", ".join(a.get("group_by") or []) or "-",
            ", ".join(_measure_text(m) for m in a.get("measures") or []),
            a.get("output_topic"),
            state,
        ))
    return "\n".join(render_table(
        ["AGGREGATE", "WINDOW", "GROUP BY", "MEASURES", "OUTPUT", "WINDOWS"], rows
    ))


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e15 else f"{value:.6e}"
    if value is None:
        return "-"
    return str(value)


def format_snapshot(snapshot: dict[str, Any], *, windows: int = 10) -> str:
    """One aggregate's windows, latest last: one row per window and group. ``windows``: how many
    of the latest windows (0 = all)."""
    name = snapshot.get("aggregate", "?")
    all_windows = sorted(
        snapshot.get("windows") or [], key=lambda w: (w.get("window_start", 0), w.get("final", False))
    )
    shown = all_windows[-windows:] if windows > 0 else all_windows
    group_fields: list[str] = []
    measure_ids: list[str] = []
    for window in shown:
        for record in window.get("groups") or []:
            for key in (record.get("group") or {}):
                if key not in group_fields:
                    group_fields.append(key)
            for key in (record.get("measures") or {}):
                if key not in measure_ids:
                    measure_ids.append(key)
    watermarks = snapshot.get("watermarks") or {}
    lines = [
        f"aggregate {name}: partitions reporting "
        f"{', '.join(map(str, snapshot.get('partitions') or [])) or 'none'}; watermarks "
        + (", ".join(f"{p}: {format_ms(w)}" for p, w in watermarks.items()) or "none")
    ]
    if not shown:
        lines.append("no pending or recent windows yet")
        return "\n".join(lines)
    rows = []
    for window in shown:
        state = "final" if window.get("final") else "pending"
        span = f"{format_ms(window.get('window_start'))} - {format_ms(window.get('window_end'))}"
        records = window.get("groups") or []
        if not records:
            rows.append((span, state, *[""] * len(group_fields), *[""] * len(measure_ids)))
        for record in records:
            group = record.get("group") or {}
            values = [
                "(other groups)" if record.get("overflow") else _value(group.get(f))
                for f in group_fields
            ]
            measures = record.get("measures") or {}
            rows.append((span, state, *values, *[_value(measures.get(m)) for m in measure_ids]))
    lines += render_table(
        ["WINDOW (UTC)", "STATE", *group_fields, *measure_ids], rows,
        right=range(2 + len(group_fields), 2 + len(group_fields) + len(measure_ids)),
    )
    if len(shown) < len(all_windows):
        lines.append(f"({len(all_windows) - len(shown)} earlier window(s) not shown; --windows 0 shows all)")
    extra = []
    if snapshot.get("late_events_here"):
        extra.append(f"late events (counted, not added) on this worker: {snapshot['late_events_here']}")
    if snapshot.get("stale_partials"):
        extra.append(f"stale partials ignored: {snapshot['stale_partials']}")
    return "\n".join(lines + extra)


# ------------------------------------------------------------------ the command


def topology_aggregates(topology: Topology) -> list[str]:
    from pipeline.stages.aggregate import AggregateConfig

    return [sid for sid, c in topology.stage_configs.items() if isinstance(c, AggregateConfig)]


@dataclass
class ShowResult:
    text: str
    json: Any
    warnings: list[str]


def show(
    base_url: str, topology: Topology, name: str | None = None, *,
    timeout: float = DEFAULT_TIMEOUT_S, windows: int = 10,
) -> ShowResult:
    """What ``pipeline aggregates show`` prints: one aggregate's windows (``name``), or every
    aggregate with a summary of its windows."""
    if timeout <= 0:
        raise PipelineError("--timeout must be more than 0 seconds")
    declared = topology_aggregates(topology)
    if not declared:
        raise PipelineError(f"topology {topology.name} has no aggregate stage")
    url = normalize_url(base_url)
    warnings = []
    if name is not None:
        snapshot = aggregate_snapshot(url, name, timeout=timeout)
        if name not in declared:
            warnings.append(
                f"the worker at {url} has aggregate {name}, topology {topology.name} does not "
                "(another topology or version?)"
            )
        return ShowResult(format_snapshot(snapshot, windows=windows), snapshot, warnings)
    listing = list_aggregates(url, timeout=timeout)
    served = [a.get("aggregate") for a in listing]
    if set(served) != set(declared):
        warnings.append(
            f"the worker at {url} serves aggregates {', '.join(map(str, served)) or 'none'}; "
            f"topology {topology.name} declares {', '.join(declared)} (another topology or version?)"
        )
    snapshots: dict[str, dict[str, Any] | str] = {}
    for aggregate in served:
        try:
            snapshots[str(aggregate)] = aggregate_snapshot(url, str(aggregate), timeout=timeout)
        except WorkerUnavailable:
            raise
        except PipelineError as exc:
            snapshots[str(aggregate)] = str(exc).removeprefix(f"aggregate {aggregate}: ")
    text = f"aggregates of the worker at {url}:\n" + format_listing(listing, snapshots)
    as_json = {
        "url": url,
        "aggregates": listing,
        "windows": {
            name: snapshot if isinstance(snapshot, dict) else {"error": snapshot}
            for name, snapshot in snapshots.items()
        },
    }
    return ShowResult(text, as_json, warnings)
