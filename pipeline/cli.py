"""The ``pipeline`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from pipeline import __version__
from pipeline.errors import PipelineError, TopologyError


def _cmd_check(args: argparse.Namespace) -> int:
    from pipeline.topology import check_topologies

    problems = check_topologies(args.topology)
    bad_files = {p.file for p in problems}
    failures = len(problems)
    for problem in problems:
        print(problem, file=sys.stderr)
    for path in args.topology:
        if str(path) in bad_files:
            continue
        if not args.start:
            print(f"{path}: ok")
            continue
        from pipeline.core.processor import start_each_stage
        from pipeline.topology import load_topology

        statuses, cannot_start = start_each_stage(load_topology(path))
        for problem in cannot_start:
            print(f"{path}: {problem}", file=sys.stderr)
        if cannot_start:
            bad_files.add(str(path))
            failures += len(cannot_start)
            continue
        print(f"{path}: ok")
        for stage_id, status in statuses.items():
            print(f"  {stage_id}: {status}")
    if failures:
        print(f"{failures} problem(s) in {len(bad_files)} file(s)", file=sys.stderr)
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
        web_bind=args.web_bind,
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


def _cmd_dlq_inspect(args: argparse.Namespace) -> int:
    from pipeline.dlq import Filter, format_summary, inspect
    from pipeline.topology import load_topology

    flt = Filter.from_args(args.reason, args.since, args.until)
    if args.samples < 0:
        raise PipelineError("--samples must be 0 or more")
    topology = load_topology(args.topology)
    summary = inspect(_settings(args), topology, flt=flt, samples=args.samples)
    if args.json:
        print(orjson.dumps(summary.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_summary(summary))
    return 0


def _cmd_dlq_replay(args: argparse.Namespace) -> int:
    from pipeline.dlq import Filter, replay
    from pipeline.topology import load_topology

    flt = Filter.from_args(args.reason, args.since, args.until)
    if args.max_records is not None and args.max_records < 0:
        raise PipelineError("--max-records must be 0 or more")
    topology = load_topology(args.topology)
    settings = _settings(args, group_id=args.group_id)
    result = replay(
        settings,
        topology,
        flt=flt,
        # The worker's group, as pipeline.runtime.app.group_id_for names it (that module
        # imports Faust: seconds, for one line).
        base_group=settings.group_id or f"pipeline-{topology.name}",
        dry_run=args.dry_run,
        max_records=args.max_records,
    )
    if args.json:
        print(orjson.dumps(
            {"group": result.group_id, "dry_run": args.dry_run, "stopped": result.stopped,
             **result.stats.to_json()},
            option=orjson.OPT_INDENT_2,
        ).decode())
    else:
        print(result.report)
    return 0


def _print_json(value: object) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _cmd_topics_create(args: argparse.Namespace) -> int:
    from pipeline.topics import create, format_create
    from pipeline.topology import load_topology

    topology = load_topology(args.topology)
    report = create(
        _settings(args, group_id=args.group_id), topology, dry_run=args.dry_run,
        timeout=args.timeout,
    )
    if args.json:
        _print_json(report.to_json())
    else:
        print(format_create(report))
    problems = report.problems()
    if problems:
        raise PipelineError("; ".join(problems))
    return 0


def _cmd_topics_describe(args: argparse.Namespace) -> int:
    from pipeline.topics import describe, format_describe
    from pipeline.topology import load_topology

    topology = load_topology(args.topology)
    report = describe(
        _settings(args, group_id=args.group_id), topology, timeout=args.timeout,
        offsets=not args.no_offsets,
    )
    if args.json:
        _print_json(report.to_json())
    else:
        print(format_describe(report))
    return 0


def _cmd_reset(args: argparse.Namespace) -> int:
    from pipeline.reset import execute, format_plan, parse_target, plan_reset
    from pipeline.topology import load_topology

    topology = load_topology(args.topology)
    target = parse_target(args.to) if args.to is not None else None
    settings = _settings(args, group_id=args.group_id, data_dir=args.data_dir)
    plan = plan_reset(settings, topology, target=target, state=args.state, timeout=args.timeout)
    problems = plan.problems()
    if args.execute and not problems:
        execute(settings, plan, timeout=args.timeout)
    if args.json:
        _print_json(plan.to_json())
    else:
        print(format_plan(plan))
    return 1 if problems else 0


def _cmd_aggregates_show(args: argparse.Namespace) -> int:
    from pipeline.aggregates_cli import show
    from pipeline.topology import load_topology

    topology = load_topology(args.topology)
    url = args.url
    if url is None:
        settings = _settings(args)
        url = f"http://{settings.web_host}:{settings.web_port}"
    if args.windows < 0:
        raise PipelineError("--windows must be 0 or more")
    result = show(url, topology, args.name, timeout=args.timeout, windows=args.windows)
    if args.json:
        _print_json(result.json)
    else:
        print(result.text)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
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
    check.add_argument(
        "--start", action="store_true",
        help="also start every stage as the worker would, with this environment (open the "
        "GeoIP databases, read PIPELINE_PII_KEY, ...): a stage that cannot start is a problem; "
        "an optional one that runs disabled is listed with why",
    )
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
    worker.add_argument("--web-host", help="the worker's HTTP address as other workers reach it; "
                        "also the bind address unless --web-bind (default 127.0.0.1)")
    worker.add_argument("--web-bind", help="address the HTTP server listens on (default: --web-host)")
    worker.add_argument("--data-dir", type=Path, help="local state directory (default .local/state)")
    worker.add_argument("--store", choices=["memory", "rocksdb"], help="table store")
    worker.add_argument("--group-id", help="consumer group id (default pipeline-<topology name>)")
    worker.add_argument("--loglevel", choices=["debug", "info", "warning", "error"],
                        help="log level (default info, PIPELINE_LOG_LEVEL)")
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

    dlq = sub.add_parser(
        "dlq", help="inspect and replay a topology's dead letters",
        description="Inspect the topology's dead-letter topic, and replay dead letters into "
        "the source topic once the cause is fixed (see the README, Dead-letter recovery).",
    )
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    reasons = "a reason code (see the README); repeat for several"
    times = "ISO-8601 (UTC unless it has an offset) or epoch milliseconds"

    inspect = dlq_sub.add_parser(
        "inspect", help="count dead letters by reason and stage, with samples",
        description="Read the dead-letter topic from the beginning to its current end (no "
        "consumer group is joined, no offset committed) and print the counts by reason and "
        "stage, the failure-time range and the latest samples of each reason.",
    )
    inspect.add_argument("topology", type=Path, metavar="TOPOLOGY")
    inspect.add_argument("--broker", help="bootstrap servers (default 127.0.0.1:9092)")
    inspect.add_argument("--reason", action="append", metavar="R", help=f"only {reasons}")
    inspect.add_argument("--since", metavar="T", help=f"only dead letters that failed at or after T: {times}")
    inspect.add_argument("--until", metavar="T", help="only dead letters that failed before T")
    inspect.add_argument("--samples", type=int, default=3, metavar="N", help="samples per reason (default 3)")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(func=_cmd_dlq_inspect)

    replay = dlq_sub.add_parser(
        "replay", help="re-send dead letters' original payloads to the source topic",
        description="Re-produce the original payload and key of each matching dead letter to "
        "the source topic, with the header pipeline-replay-of: <topic>/<partition>/<offset>. "
        "Exactly once per dead letter: each chunk's replays and progress are committed in one "
        "Kafka transaction under the consumer group <group>-dlq-replay-<reasons>[-since-<ms>]"
        "[-until-<ms>], so an interrupted replay resumes where it stopped and running it again "
        "sends nothing already sent. Dead letters whose payload was not kept in full are "
        "counted, never sent.",
    )
    replay.add_argument("topology", type=Path, metavar="TOPOLOGY")
    replay.add_argument("--reason", action="append", required=True, metavar="R", help=reasons)
    replay.add_argument("--since", metavar="T", help=f"only dead letters that failed at or after T: {times}")
    replay.add_argument("--until", metavar="T", help="only dead letters that failed before T")
    replay.add_argument("--dry-run", action="store_true", help="count what would be sent; send and commit nothing")
    replay.add_argument("--broker", help="bootstrap servers (default 127.0.0.1:9092)")
    replay.add_argument("--group-id", help="the worker's consumer group (default pipeline-<topology name>)")
    replay.add_argument("--json", action="store_true", help="print JSON")
    # Stop after N replays (tests of resuming; operators who want a canary first).
    replay.add_argument("--max-records", type=int, help=argparse.SUPPRESS)
    replay.set_defaults(func=_cmd_dlq_replay)

    topics = sub.add_parser(
        "topics", help="create and describe the topics a topology needs",
        description="Create, or describe, every topic a topology needs: its source and output "
        "topics as declared, and the worker's internal topics (a repartition topic per dedupe "
        "stage, <group>-aggregate-partials) with the source's partition count. Faust creates "
        "its tables' changelog topics (<group>-<table>-changelog) itself when the worker "
        "starts; describe shows them too.",
    )
    topics_sub = topics.add_subparsers(dest="topics_command", required=True, metavar="COMMAND")
    timeout_help = "seconds each request to the broker may take (default 10)"

    create = topics_sub.add_parser(
        "create", help="create every missing topic (idempotent)",
        description="Create every missing topic the topology needs, with its declared "
        "partitions, replication factor and configs, and report each: created, exists or "
        "(--dry-run) would create. Existing topics are never changed: a warning says when their "
        "partitions, replication factor or configs differ from the declared ones. Faust creates "
        "the tables' changelog topics when the worker starts. Exit 0 when every topic exists; "
        "2 when the broker cannot be reached, a topic cannot be created, or an internal topic "
        "has another partition count than the source (the worker would refuse to start).",
    )
    describe = topics_sub.add_parser(
        "describe", help="show the topics: partitions, configs, offsets, group lag",
        description="For every topic the topology needs (Faust's changelog topics included): "
        "whether it exists, partitions, replication factor, the declared configs next to the "
        "broker's, and per partition the low/high offsets (~messages) and the worker group's "
        "committed offset and lag. Reads only: joins no consumer group.",
    )
    for cmd in (create, describe):
        cmd.add_argument("topology", type=Path, metavar="TOPOLOGY")
        cmd.add_argument("--broker", help="bootstrap servers (default 127.0.0.1:9092, PIPELINE_BROKER)")
        cmd.add_argument("--group-id", help="the worker's consumer group, which names the internal "
                         "topics (default pipeline-<topology name>)")
        cmd.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help=timeout_help)
        cmd.add_argument("--json", action="store_true", help="print JSON")
    create.add_argument("--dry-run", action="store_true", help="report what would be created; create nothing")
    create.set_defaults(func=_cmd_topics_create)
    describe.add_argument("--no-offsets", action="store_true",
                          help="skip the offsets and the group's lag")
    describe.set_defaults(func=_cmd_topics_describe)

    reset = sub.add_parser(
        "reset", help="move the worker group's source offsets; forget its state (--state)",
        description="Where the worker group resumes on the source (--to earliest, latest, or "
        "an ISO-8601 time: the first record at or after it), and with --state its dedupe and "
        "aggregate state forgotten: the internal and changelog topics deleted (the next worker "
        "creates them again, empty) and the local state directory <data dir>/<group> of this "
        "host deleted. A dry run unless --execute; refused (exit 1) while any worker of the "
        "group runs. Exit 2 when the broker cannot be reached or a change fails.",
    )
    reset.add_argument("topology", type=Path, metavar="TOPOLOGY")
    reset.add_argument("--to", metavar="WHERE",
                       help="earliest, latest or an ISO-8601 time (UTC unless it names a zone)")
    reset.add_argument("--state", action="store_true",
                       help="also delete the group's internal and changelog topics and local state")
    reset.add_argument("--execute", action="store_true", help="apply it (default: a dry run)")
    reset.add_argument("--broker", help="bootstrap servers (default 127.0.0.1:9092, PIPELINE_BROKER)")
    reset.add_argument("--group-id", help="the worker's consumer group (default pipeline-<topology name>)")
    reset.add_argument("--data-dir", type=Path,
                       help="the workers' state directory on this host (default .local/state, PIPELINE_DATA_DIR)")
    reset.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                       help="seconds each request to the broker may take (default 30)")
    reset.add_argument("--json", action="store_true", help="print JSON")
    reset.set_defaults(func=_cmd_reset)

    aggregates = sub.add_parser(
        "aggregates", help="show a running worker's live aggregates",
        description="Ask a running worker's HTTP API for its aggregates.",
    )
    aggregates_sub = aggregates.add_subparsers(dest="aggregates_command", required=True, metavar="COMMAND")
    show = aggregates_sub.add_parser(
        "show", help="pending and recent windows of the aggregates",
        description="Without NAME: every aggregate (window, group by, measures, output topic) "
        "and how many windows are pending and recently final. With NAME: its windows, one row "
        "per window and group (pending ones are merged over the partitions reported so far). "
        "Any worker of the group answers (GET /aggregates, /aggregates/NAME).",
    )
    show.add_argument("topology", type=Path, metavar="TOPOLOGY")
    show.add_argument("name", nargs="?", metavar="NAME", help="an aggregate stage id")
    show.add_argument("--url", help="the worker's HTTP address (default "
                      "http://<PIPELINE_WEB_HOST>:<PIPELINE_WEB_PORT>, i.e. http://127.0.0.1:6066)")
    show.add_argument("--windows", type=int, default=10, metavar="N",
                      help="show the latest N windows (default 10; 0: all)")
    show.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                      help="seconds to wait for the worker (default 10)")
    show.add_argument("--json", action="store_true", help="print the worker's answer as JSON")
    show.set_defaults(func=_cmd_aggregates_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        # The worker's --loglevel, else PIPELINE_LOG_LEVEL (the worker's settings read it too).
        level=getattr(
            logging,
            str(getattr(args, "loglevel", None) or os.environ.get("PIPELINE_LOG_LEVEL", "info")).upper(),
            logging.INFO,
        ),
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
