"""The ``pipeline`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from pipeline import __version__
from pipeline.errors import PipelineError, TopologyError


def _cmd_check(args: argparse.Namespace) -> int:
    from pipeline.topology import check_topologies

    problems = check_topologies(args.topology)
    for problem in problems:
        print(problem, file=sys.stderr)
    bad_files = {p.file for p in problems}
    for path in args.topology:
        if str(path) not in bad_files:
            print(f"{path}: ok")
    if problems:
        print(f"{len(problems)} problem(s) in {len(bad_files)} file(s)", file=sys.stderr)
        return 1
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.embedded import run_file
    from pipeline.topology import load_topology

    topology = load_topology(args.topology)
    if not args.input.is_file():
        raise PipelineError(f"input file {args.input} not found")
    summary = run_file(topology, args.input, args.output)
    rate = summary.input / summary.seconds if summary.seconds > 0 else 0.0
    print(f"{summary.input} input lines in {summary.seconds:.2f}s ({rate:,.0f}/s) -> {args.output}/")
    width = max(len(t) for t in summary.outputs)
    for topic, n in summary.outputs.items():
        print(f"  {topic:<{width}}  {n}")
    if summary.dropped:
        print("dropped on purpose (stage:why):")
        for name, n in summary.dropped.items():
            print(f"  {name}  {n}")
    if summary.dead_letters:
        print("dead letters by stage:reason:")
        for name, n in summary.dead_letters.items():
            print(f"  {name}  {n}")
    return 0


def _settings(args: argparse.Namespace, **extra: object):
    from pipeline.settings import Settings

    return Settings.from_env(broker=getattr(args, "broker", None), **extra)


def _cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.runtime.worker import run_worker
    from pipeline.topology import load_topology

    topology = load_topology(args.topology)
    settings = _settings(
        args,
        web_port=args.web_port,
        web_host=args.web_host,
        data_dir=args.data_dir,
        store=args.store,
        log_level=args.loglevel,
        group_id=args.group_id,
    )
    return run_worker(topology, settings)


def _cmd_produce(args: argparse.Namespace) -> int:
    from pipeline.produce import file_records, produce
    from pipeline.runtime.admin import ensure_topics
    from pipeline.topology import load_topology

    topology = load_topology(args.topology)
    settings = _settings(args)
    if args.input is not None:
        if not args.input.is_file():
            raise PipelineError(f"input file {args.input} not found")
        records = file_records(args.input)
    else:
        from pipeline.traffic import TrafficProfile, generate

        profile = TrafficProfile(
            seed=args.seed,
            users=args.users,
            invalid_fraction=args.invalid_fraction,
            duplicate_fraction=args.duplicate_fraction,
            # Spread event time over the last hour whatever N is, so a large run does not run
            # into the future (and the validator's max_future_skew).
            events_per_second_of_event_time=max(200.0, args.generate / 3600),
        )
        records = ((r.key, r.value) for r in generate(args.generate, profile))
    ensure_topics(topology, settings)
    topic = topology.spec.source.topic
    result = produce(settings, topic, records, rate=args.rate)
    rate = result.sent / result.seconds if result.seconds > 0 else 0.0
    print(f"sent {result.sent} events to {topic} in {result.seconds:.2f}s ({rate:,.0f}/s)")
    if result.failed:
        print(f"{result.failed} failed: {result.first_error}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Validate, dedupe, enrich and route behavioural events on Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser(
        "check", help="validate topology files and list every problem",
        description="Load and check topology files. Lists every problem with its file and "
        "path; exit status 0 when all are valid, 1 otherwise.",
    )
    check.add_argument("topology", nargs="+", type=Path, metavar="TOPOLOGY")
    check.set_defaults(func=_cmd_check)

    run = sub.add_parser(
        "run", help="run a topology in-process on a file (no broker)",
        description="Embedded mode: run the topology's stages on FILE (one raw message value "
        "per line, any bytes) and write DIR/<topic>.jsonl per output topic and "
        "DIR/summary.json. Invalid events are data: the exit status is 0.",
    )
    run.add_argument("topology", type=Path, metavar="TOPOLOGY")
    run.add_argument("--input", required=True, type=Path, metavar="FILE")
    run.add_argument("--output", required=True, type=Path, metavar="DIR")
    run.set_defaults(func=_cmd_run)

    worker = sub.add_parser(
        "worker", help="run a stream worker for a topology",
        description="Consume the topology's source topic and produce to its output topics "
        "(Faust worker). Creates missing topics first. SIGTERM stops gracefully: finish the "
        "batch in hand, deliver, commit, exit 0. Settings also come from PIPELINE_* "
        "environment variables (see the README).",
    )
    worker.add_argument("topology", type=Path, metavar="TOPOLOGY")
    worker.add_argument("--broker", help="bootstrap servers (default 127.0.0.1:9092, PIPELINE_BROKER)")
    worker.add_argument("--web-port", type=int, help="HTTP port (default 6066)")
    worker.add_argument("--web-host", help="HTTP bind address (default 127.0.0.1)")
    worker.add_argument("--data-dir", type=Path, help="local state directory (default .local/state)")
    worker.add_argument("--store", choices=["memory", "rocksdb"], help="table store")
    worker.add_argument("--group-id", help="consumer group id (default pipeline-<topology name>)")
    worker.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    worker.set_defaults(func=_cmd_worker)

    prod = sub.add_parser(
        "produce", help="send events to a topology's source topic",
        description="Send events to the source topic with confluent-kafka, keyed by user "
        "identity: lines of a file, or realistic generated traffic.",
    )
    prod.add_argument("topology", type=Path, metavar="TOPOLOGY")
    what = prod.add_mutually_exclusive_group(required=True)
    what.add_argument("--input", type=Path, metavar="FILE", help="one raw message value per line")
    what.add_argument("--generate", type=int, metavar="N", help="generate N events")
    prod.add_argument("--rate", type=float, metavar="EPS", help="events per second (default: as fast as possible)")
    prod.add_argument("--broker", help="bootstrap servers (default 127.0.0.1:9092)")
    prod.add_argument("--seed", type=int, default=42, help="generator seed")
    prod.add_argument("--users", type=int, default=5000, help="distinct users to generate")
    prod.add_argument("--invalid-fraction", type=float, default=0.02)
    prod.add_argument("--duplicate-fraction", type=float, default=0.01)
    prod.set_defaults(func=_cmd_produce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(getattr(args, "loglevel", "info")).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except TopologyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
