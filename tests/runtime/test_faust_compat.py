"""Guards for the one module that reaches into Faust internals (pipeline/runtime/faust_compat.py).

If faust-streaming changes any method the batch consumer overrides or relies on, these tests
fail and point at the method: re-read it upstream, adapt faust_compat, then update the digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from importlib.metadata import version

import faust
import pytest
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

from pipeline.runtime.faust_compat import FAUST_VERSION_TESTED, BatchConsumer, BatchTransport

# sha256 (first 16 hex digits) of the upstream source each assumption was checked against.
UPSTREAM_DIGESTS = {
    # Replaced for batch topics; other topics keep its per-message logic (_deliver_one).
    (Consumer, "_drain_messages"): "44a2500309e83c63",
    # Overridden for batch topics; commit machinery calls it per TP in _acked.
    (Consumer, "_new_offset"): "1d2c7ea89a7ad4f1",
    # Extended: we await the in-flight batch first.
    (Consumer, "wait_empty"): "e4662fe24f094819",
    # Pops _acked/_read_offset for revoked TPs; we pop our delivered offsets too.
    (Consumer, "on_partitions_revoked"): "d04b7ae72c6fc206",
    # Returns ({TP: [ConsumerRecord]}, active partitions): the batch we hand over.
    (Consumer, "_wait_next_records"): "6218e1969a636b3f",
    # Commits only assigned TPs, flushes Faust's producer, updates _committed_offset.
    (Consumer, "_commit_offsets"): "1a69799041188441",
    # Iterates the keys of _acked: we register batch TPs there.
    (Consumer, "_filter_tps_with_pending_acks"): "f6f9239774234e7e",
    # offset > committed.
    (Consumer, "_should_commit"): "5ce941793947ad42",
    # Sets _read_offset to the next offset to read: the meaning we rely on.
    (Consumer, "seek"): "b86a9fe05f956b30",
    (AIOKafkaConsumerThread, "_seek_wait"): "9d221e816d940467",
}


def test_faust_version_is_the_one_checked() -> None:
    assert version("faust-streaming") == FAUST_VERSION_TESTED


@pytest.mark.parametrize(
    ("owner", "name"), list(UPSTREAM_DIGESTS), ids=[n for _, n in UPSTREAM_DIGESTS]
)
def test_upstream_method_unchanged(owner: type, name: str) -> None:
    source = inspect.getsource(getattr(owner, name))
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert digest == UPSTREAM_DIGESTS[(owner, name)], (
        f"faust changed {owner.__name__}.{name}: re-check pipeline/runtime/faust_compat.py"
    )


class _App(faust.App):
    def _new_transport(self):  # type: ignore[no-untyped-def]
        return BatchTransport(self.conf.broker_consumer, self)


@pytest.fixture
def consumer() -> BatchConsumer:
    app = _App("compat-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    c = app.consumer
    assert isinstance(c, BatchConsumer)
    return c


def test_batch_topics_commit_delivered_offsets_only(consumer: BatchConsumer) -> None:
    handled: list[list[object]] = []

    async def handler(messages):  # type: ignore[no-untyped-def]
        handled.append(list(messages))

    consumer.use_batches(["raw"], handler)
    tp = TP("raw", 0)

    class Record:
        def __init__(self, offset: int) -> None:
            self.offset = offset

    records = [Record(10), Record(11), Record(12)]
    assert consumer._new_offset(tp) is None, "nothing delivered yet"
    consumer.assignment = lambda: {tp}  # type: ignore[method-assign]
    asyncio.run(consumer._run_batch(handler, records, {tp: records}))
    assert handled == [records]
    assert consumer._new_offset(tp) == 13, "commit the next offset after the last delivered"
    assert consumer._read_offset[tp] == 13, "read offset means next offset to read, as after a seek"
    assert tp in consumer._acked, "registered with Faust's commit loop"
    assert consumer._should_commit(tp, 13)


def test_failed_batch_is_not_committable(consumer: BatchConsumer) -> None:
    async def failing(messages):  # type: ignore[no-untyped-def]
        raise RuntimeError("delivery failed")

    consumer.use_batches(["raw"], failing)
    tp = TP("raw", 1)

    class Record:
        offset = 5

    with pytest.raises(RuntimeError):
        asyncio.run(consumer._run_batch(failing, [Record()], {tp: [Record()]}))
    assert consumer._new_offset(tp) is None


def test_other_topics_keep_faust_offsets(consumer: BatchConsumer) -> None:
    consumer.use_batches(["raw"], lambda m: None)  # type: ignore[arg-type,return-value]
    tp = TP("changelog", 0)
    consumer._acked[tp].extend([0, 1, 2])
    consumer._acked_index[tp].update([0, 1, 2])
    assert consumer._new_offset(tp) == 3
