"""Contender: a plain per-event Faust agent (faust-streaming, ``kafka://`` transport).

    python bench/contenders/naive_faust.py --source TOPIC --prefix PREFIX --expected N --geoip PATH \
        [--group G] [--result PATH]

The same stages as ``classic.py`` inside one ``@app.agent`` (concurrency 1, default client
settings): ``json.loads`` → validate required fields → ``user_agents.parse`` (no cache) →
``geoip2`` city lookup → route by event name → ``await topic.send(...)`` per event (raw
serializers). App id = ``--group``. Consumes ``--source`` from the beginning; after ``--expected``
input events it flushes the producer, records the figures and stops the worker the way Ctrl-C /
SIGTERM does (mode's worker signal handler → ``Worker.stop()`` → loop shutdown). Prints one JSON line
``{"events", "seconds" (first consumed → last flushed), "cpu_s", "peak_rss_mb"}`` to the real
stdout once the worker has exited (also written to ``--result`` when given).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import uuid

import faust
import geoip2.database
import geoip2.errors

BOOTSTRAP = os.environ.get("PIPELINE_TEST_BROKER", "127.0.0.1:9092")
from simple_stages import enrich, validate  # noqa: E402  (beside this script)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--geoip", required=True)
    parser.add_argument("--group", default=None)
    parser.add_argument("--result", default=None, help="also write the JSON result line here")
    args = parser.parse_args()

    datadir = tempfile.mkdtemp(prefix="naive-faust-")  # keep Faust's data dir out of the repo
    app = faust.App(
        args.group or f"naive-faust-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{BOOTSTRAP}",
        value_serializer="raw",
        key_serializer="raw",
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        store="memory://",
        datadir=datadir,
    )
    source = app.topic(args.source, key_serializer="raw", value_serializer="raw")

    def out(name):
        return app.topic(args.prefix + name, key_serializer="raw", value_serializer="raw")

    revenue, errors, processed, invalid = (
        out("revenue_events"), out("error_events"), out("processed_events"), out("invalid_events"))
    reader = geoip2.database.Reader(args.geoip)
    state = {"seen": 0, "started": None, "result": None}

    def route(name):
        if name == "purchase_completed" or name.startswith(("subscription_", "refund_")):
            return revenue
        if name.startswith("error_"):
            return errors
        return processed

    @app.agent(source)
    async def process(stream):
        async for record in stream.events():
            if state["seen"] >= args.expected:
                continue  # already done; the worker is shutting down
            if state["started"] is None:
                state["started"] = time.perf_counter()
            msg = record.message
            try:
                event = json.loads(msg.value)
            except ValueError:  # includes UnicodeDecodeError
                event = None
                error = "not_json"
            else:
                error = validate(event)
            if error is not None:
                await invalid.send(key=msg.key, value=msg.value)
            else:
                name = event.get("event", event.get("event_name"))
                event = enrich(event, reader)
                await route(name).send(key=msg.key, value=json.dumps(event).encode())
            state["seen"] += 1
            if state["seen"] >= args.expected:
                await app.producer.flush()
                elapsed = time.perf_counter() - state["started"]
                usage = resource.getrusage(resource.RUSAGE_SELF)
                state["result"] = {
                    "events": state["seen"],
                    "seconds": round(elapsed, 4),
                    "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
                    "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                }
                # Stop the way Ctrl-C/SIGTERM does: mode's worker handler schedules Worker.stop().
                os.kill(os.getpid(), signal.SIGTERM)

    # Faust's progress spinner writes terminal escapes to `stdout`; keep the real stdout for the result.
    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False,
                          stdout=sys.stderr)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    finally:
        reader.close()
        shutil.rmtree(datadir, ignore_errors=True)
    result = state["result"]
    if result is None:
        print(f"naive_faust: stopped after {state['seen']} of {args.expected} events", file=sys.stderr)
        return 1
    line = json.dumps(result)
    if args.result:
        with open(args.result, "w") as fh:
            fh.write(line + "\n")
    sys.__stdout__.write(line + "\n")
    sys.__stdout__.flush()
    return 0


if __name__ == "__main__":
    logging.getLogger("faust").setLevel(logging.WARNING)
    sys.exit(main())
