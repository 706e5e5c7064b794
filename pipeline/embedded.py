"""``pipeline run``: the topology's stages in-process, file in, files out, no broker.

The same ``Processor`` the worker uses, so what a data engineer sees here is what the worker
does. Every input line ends up in exactly one output file. Stages that derive records of their
own (the aggregate stage's final windowed records and late-event copies) write them to their
topics' files too; those are counted apart, under ``aggregates``, so ``outputs + dropped = input``
still holds. At the end of the input every aggregate window is closed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import orjson

from pipeline.core.processor import Processor
from pipeline.core.records import Output, RawMessage
from pipeline.topology.model import Topology

BATCH_SIZE = 5000
DROP_OUTCOMES = ("duplicate", "drop")
"""Stage outcomes that remove an event on purpose (counted, never silent)."""


@dataclass
class RunSummary:
    input: int
    outputs: dict[str, int]
    dead_letters: dict[str, int]
    seconds: float
    dropped: dict[str, int] = field(default_factory=dict)
    """Events removed on purpose, by ``<stage>:<why>`` (duplicates, dropped bots): with the
    outputs they account for every input line."""
    aggregates: dict[str, int] = field(default_factory=dict)
    """Records derived from the events rather than one per event (aggregate records, copies of
    late events), by topic. Not part of ``outputs``."""

    def to_json(self) -> dict[str, object]:
        return {
            "input": self.input,
            "outputs": self.outputs,
            "dropped": self.dropped,
            "dead_letters": self.dead_letters,
            "aggregates": self.aggregates,
        }


def read_lines(stream: BinaryIO) -> Iterator[bytes]:
    """One raw message value per line; any bytes; the line break (\\n or \\r\\n) is not part."""
    for line in stream:
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        yield line


def run_file(
    topology: Topology,
    input_path: Path,
    output_dir: Path,
    *,
    clock: Callable[[], float] = time.time,
) -> RunSummary:
    processor = Processor(topology, clock=clock)
    output_dir.mkdir(parents=True, exist_ok=True)
    topics = list(topology.spec.topics)
    derived = {t for stage in processor.middle for t in getattr(stage, "derived_topics", ())}
    counts = dict.fromkeys(topics, 0)
    dead: dict[str, int] = {}
    dropped: dict[str, int] = {}
    files = {topic: (output_dir / f"{topic}.jsonl").open("wb") for topic in topics}
    started = time.monotonic()
    total = 0
    source = f"file:{input_path}"
    try:
        with input_path.open("rb") as stream:
            batch: list[RawMessage] = []
            for offset, value in enumerate(read_lines(stream)):
                # Dead letters point back at the line: topic "file:<path>", offset = line index.
                batch.append(RawMessage(value=value, topic=source, partition=0, offset=offset))
                if len(batch) >= BATCH_SIZE:
                    total += _flush(processor, batch, files, counts, dead, dropped)
                    batch = []
            if batch:
                total += _flush(processor, batch, files, counts, dead, dropped)
        for stage in processor.middle:
            close_all = getattr(stage, "close_all", None)
            if close_all is not None:
                _write(close_all(), files, counts)
    finally:
        for f in files.values():
            f.close()
    summary = RunSummary(
        total,
        {t: n for t, n in counts.items() if t not in derived},
        dict(sorted(dead.items())),
        time.monotonic() - started,
        dict(sorted(dropped.items())),
        {t: n for t, n in counts.items() if t in derived},
    )
    (output_dir / "summary.json").write_bytes(
        orjson.dumps(summary.to_json(), option=orjson.OPT_INDENT_2) + b"\n"
    )
    return summary


def _flush(
    processor: Processor,
    batch: list[RawMessage],
    files: dict[str, BinaryIO],
    counts: dict[str, int],
    dead: dict[str, int],
    dropped: dict[str, int],
) -> int:
    ctx = processor.process(batch)
    _write(ctx.outputs, files, counts)
    for (stage, outcome), n in ctx.counters.items():
        if outcome in DROP_OUTCOMES:
            name = f"{stage}:{outcome}"
            dropped[name] = dropped.get(name, 0) + n
    for (reason, stage), n in ctx.dead_letters.items():
        name = f"{stage}:{reason}"
        dead[name] = dead.get(name, 0) + n
    return len(batch)


def _write(outputs: list[Output], files: dict[str, BinaryIO], counts: dict[str, int]) -> None:
    for topic, _key, value in outputs:
        out = files[topic]
        out.write(value)
        out.write(b"\n")
        counts[topic] += 1
