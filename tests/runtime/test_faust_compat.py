"""Guards for the one module that reaches into Faust internals (pipeline/runtime/faust_compat.py).

If faust-streaming changes any method the batch consumer overrides or relies on, these tests
fail and point at the method: re-read it upstream, adapt faust_compat, then update the digest.
"""

from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace
import inspect
from importlib.metadata import version
from typing import Any

import faust
import faust.transport.drivers.aiokafka
import pytest
from faust.sensors.monitor import Monitor
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer, ThreadDelegateConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

from pipeline.runtime.faust_compat import FAUST_VERSION_TESTED, BatchConsumer, BatchTransport
from pipeline.runtime.app import Delivered, PreparedBatch, TopologyAgent
from tests.integration.kafka_helpers import RawHeaderName

# sha256 (first 16 hex digits) of the upstream source each assumption was checked against.
UPSTREAM_DIGESTS = {
    # Replaced for batch topics; other topics keep its per-message logic (_deliver_one).
    (Consumer, "_drain_messages"): "44a2500309e83c63",
    # Overridden for batch topics; commit machinery calls it per TP in _acked.
    (Consumer, "_new_offset"): "1d2c7ea89a7ad4f1",
    # Extended: we await the in-flight batch first.
    (Consumer, "wait_empty"): "e4662fe24f094819",
    # Pops _acked/_read_offset for revoked TPs *before* the app's revoke handler commits: we
    # commit our deliveries first, then pop our delivered offsets too.
    (Consumer, "on_partitions_revoked"): "d04b7ae72c6fc206",
    # Seeks to the committed offsets and sets _read_offset: we commit deliveries before it.
    (Consumer, "perform_seek"): "0e8c130ff4b0afd8",
    # Both resume the stream partitions *before* perform_seek(): the reason for the above.
    (Recovery, "on_recovery_completed"): "6ef567acf072e46d",
    (Recovery, "_resume_streams"): "d986a6710c1aca98",
    # Returns ({TP: [ConsumerRecord]}, active partitions): the batch we hand over.
    (Consumer, "_wait_next_records"): "6218e1969a636b3f",
    # Fetches only the partitions asked for: we leave the batch partitions out until the seek
    # that ends an assignment's recovery.
    (ThreadDelegateConsumer, "_getmany"): "f9d47aa9010b5ff2",
    # Marks every assigned partition active before the app pauses them for the recovery.
    (Consumer, "on_partitions_assigned"): "29ce96596f05a18c",
    # Commits only assigned TPs, flushes Faust's producer, updates _committed_offset.
    (Consumer, "_commit_offsets"): "1a69799041188441",
    # Iterates the keys of _acked: we register batch TPs there.
    (Consumer, "_filter_tps_with_pending_acks"): "f6f9239774234e7e",
    # offset > committed.
    (Consumer, "_should_commit"): "5ce941793947ad42",
    # Returns without committing while another commit runs: wait_empty works around it.
    (Consumer, "commit"): "a354437baaa08bf8",
    (Consumer, "maybe_wait_for_commit_to_finish"): "d687f63a0b5ef0c5",
    # Sets _read_offset to the next offset to read: the meaning we rely on.
    (Consumer, "seek"): "b86a9fe05f956b30",
    (AIOKafkaConsumerThread, "_seek_wait"): "9d221e816d940467",
    # Builds the worker's AIOKafkaConsumer (fetch_max_wait_ms=1500): we change that afterwards.
    (AIOKafkaConsumerThread, "_create_worker_consumer"): "c2701bfc3e6f6cad",
    # Its livelock check reads monitor.stream_inbound_time (set per event by the monitor) and
    # tp_last_committed_at (set by the thread's _commit): the batch path sets both itself. It
    # also reads tp_state.position, which asserts: BatchConsumerThread skips partitions without.
    (AIOKafkaConsumerThread, "verify_event_path"): "b983e7735f647cb3",
    (Monitor, "on_stream_event_in"): "df6d2e5f6397ce44",
    (AIOKafkaConsumerThread, "_commit"): "932852ce7a23f658",
    # Creates the consumer thread: BatchConsumer returns its own subclass.
    (faust.transport.drivers.aiokafka.Consumer, "_new_consumer_thread"): "0870ec53dea75083",
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
    c._seek_pending = False  # as after the seek that ends an assignment's recovery
    return c


class _Handler:
    """Records what the consumer hands over; ``fail`` makes every delivery fail."""

    def __init__(self, fail: bool = False) -> None:
        self.prepared: list[list[object]] = []
        self.delivered: list[list[object]] = []
        self.discarded: list[list[object]] = []
        self.assignments: list[set[TP]] = []
        self.fail = fail
        self.release = asyncio.Event()

    def prepare(self, messages):  # type: ignore[no-untyped-def]
        self.prepared.append(list(messages))
        return list(messages)

    def discard(self, prepared):  # type: ignore[no-untyped-def]
        self.discarded.append(prepared)

    def assigned(self, assigned):  # type: ignore[no-untyped-def]
        self.assignments.append(assigned)

    async def deliver(self, prepared, offsets=None, group_metadata=None):  # type: ignore[no-untyped-def]
        await self.release.wait()
        if self.fail:
            raise RuntimeError("delivery failed")
        self.delivered.append(prepared)
        return Delivered(dict(offsets or {}), committed=False)

    async def settle(self):  # type: ignore[no-untyped-def]
        return {}

    def unsettled_offsets(self):  # type: ignore[no-untyped-def]
        return {}


class _Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def test_batch_topics_commit_delivered_offsets_only(consumer: BatchConsumer) -> None:
    handler = _Handler()
    consumer.use_batches(["raw"], handler)
    tp = TP("raw", 0)
    consumer.assignment = lambda: {tp}  # type: ignore[method-assign]
    first = [_Record(10), _Record(11), _Record(12)]
    second = [_Record(13), _Record(14)]

    async def scenario() -> None:
        assert consumer._new_offset(tp) is None, "nothing delivered yet"
        await consumer._handle_batch({tp: first}, 0)
        assert handler.prepared == [first]
        assert consumer._read_offset[tp] == 13, "read offset = next offset to read, as after a seek"
        assert consumer._new_offset(tp) is None, "prepared but not acknowledged: not committable"

        # The next batch is prepared while the first is still in flight...
        handle_second = asyncio.ensure_future(consumer._handle_batch({tp: second}, 0))
        await asyncio.sleep(0)
        assert handler.prepared == [first, second]
        assert not handle_second.done(), "...but not sent before the first is acknowledged"
        assert consumer._new_offset(tp) is None

        handler.release.set()
        await handle_second
        assert handler.delivered[0] == first
        assert consumer._new_offset(tp) in (13, 15), "the first batch is committable"
        await consumer._wait_inflight()
        assert handler.delivered == [first, second], "deliveries complete in batch order"
        assert consumer._new_offset(tp) == 15

    asyncio.run(scenario())
    assert tp in consumer._acked, "registered with Faust's commit loop"
    assert tp in consumer.app.monitor.stream_inbound_time, "Faust's livelock check sees it processed"
    assert consumer._should_commit(tp, 15)


def test_a_failed_delivery_is_discarded_read_again_and_counted(consumer: BatchConsumer) -> None:
    handler = _Handler(fail=True)
    handler.release.set()
    consumer.use_batches(["raw"], handler)
    tp = TP("raw", 1)
    consumer.assignment = lambda: {tp}  # type: ignore[method-assign]
    seeks: list[int] = []
    consumer._thread = _FakeThread(lambda tp, offset: seeks.append(offset))  # type: ignore[assignment]
    consumer._committed_offset[tp] = 5
    first, second = [_Record(5)], [_Record(6)]

    async def scenario() -> None:
        await consumer._handle_batch({tp: first}, 0)
        # Prepared behind the failing one: discarded too, and read again.
        await consumer._handle_batch({tp: second}, 0)
        await consumer._wait_inflight()

    asyncio.run(scenario())
    assert consumer._new_offset(tp) is None, "never committable"
    assert handler.discarded == [first, second]
    assert seeks and set(seeks) == {5}, "both read again from the first undelivered record"
    assert consumer._read_offset[tp] == 5
    assert consumer.batch_failures == 1 and consumer._failure is not None


class _PipeliningHandler(_Handler):
    """As the topology agent at least once: a batch's state is acknowledged with the next one."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(fail)
        self.unsettled: dict[TP, int] = {}

    async def deliver(self, prepared, offsets=None, group_metadata=None):  # type: ignore[no-untyped-def]
        await self.release.wait()
        if self.fail:
            self.unsettled = {}
            raise RuntimeError("delivery failed")
        self.delivered.append(prepared)
        settled, self.unsettled = self.unsettled, dict(offsets or {})
        return Delivered(settled, committed=False)

    async def settle(self):  # type: ignore[no-untyped-def]
        settled, self.unsettled = self.unsettled, {}
        return settled

    def unsettled_offsets(self):  # type: ignore[no-untyped-def]
        return self.unsettled


def _pipelining(consumer: BatchConsumer) -> tuple[_PipeliningHandler, TP, TP]:
    """A pipelining handler that delivers at once, on a consumer assigned two partitions."""
    handler = _PipeliningHandler()
    handler.release.set()
    consumer.use_batches(["raw"], handler)
    tp0, tp1 = TP("raw", 0), TP("raw", 1)
    consumer.assignment = lambda: {tp0, tp1}  # type: ignore[method-assign]
    return handler, tp0, tp1


def test_offsets_count_as_delivered_once_the_state_is_settled(consumer: BatchConsumer) -> None:
    handler, tp0, tp1 = _pipelining(consumer)

    async def scenario() -> None:
        await consumer._handle_batch({tp0: [_Record(3)]}, 0)
        await consumer._wait_inflight()
        assert consumer._new_offset(tp0) is None, "its outputs are acknowledged, its state not yet"
        await consumer._handle_batch({tp1: [_Record(7)]}, 0)
        await consumer._wait_inflight()
        assert consumer._new_offset(tp0) == 4, "settled with the next batch"
        assert consumer._new_offset(tp1) is None
        # What a commit, a seek, a rebalance and an idle fetch loop do first:
        await consumer._settle_inflight()
        assert consumer._new_offset(tp1) == 8

    asyncio.run(scenario())


def test_a_failed_delivery_reads_the_unsettled_batch_again_too(consumer: BatchConsumer) -> None:
    handler, tp0, tp1 = _pipelining(consumer)
    seeks: list[tuple[TP, int]] = []
    consumer._thread = _FakeThread(lambda tp, offset: seeks.append((tp, offset)))  # type: ignore[assignment]
    consumer._committed_offset.update({tp0: 3, tp1: 7})

    async def scenario() -> None:
        await consumer._handle_batch({tp0: [_Record(3)]}, 0)
        await consumer._wait_inflight()
        handler.fail = True
        await consumer._handle_batch({tp1: [_Record(7)]}, 0)
        await consumer._wait_inflight()

    asyncio.run(scenario())
    assert sorted(seeks) == [(tp0, 3), (tp1, 7)], "both batches read again from their start"
    assert consumer._new_offset(tp0) is None and consumer._new_offset(tp1) is None
    assert consumer.batch_failures == 1


def _in_recovery(consumer: BatchConsumer, monkeypatch: pytest.MonkeyPatch, position: int) -> dict:
    """A recovery of one changelog partition whose last offset is 10, applied up to 5, with the
    consumer's position at ``position``; returns the recovery's applied offsets."""
    changelog = TP("changelog", 0)
    offsets = {changelog: 5}
    recovery = SimpleNamespace(in_recovery=True, active_highwaters={changelog: 10}, active_offsets=offsets)
    tables = SimpleNamespace(recovery=recovery, changelog_queue=SimpleNamespace(empty=lambda: True))
    monkeypatch.setattr(type(consumer.app), "tables", tables, raising=False)

    async def at(tp: TP) -> int:
        return position

    consumer.position = at  # type: ignore[method-assign]
    return offsets


def test_a_changelog_ending_in_a_transaction_marker_completes_its_recovery(
    consumer: BatchConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    offsets = _in_recovery(consumer, monkeypatch, position=11)
    asyncio.run(consumer._skip_transaction_markers_in_recovery())
    assert offsets == {TP("changelog", 0): 10}, "every record fetched: only the marker is left"


def test_no_recovery_is_marked_complete_during_a_rebalance(
    consumer: BatchConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    offsets = _in_recovery(consumer, monkeypatch, position=11)
    # The flow is suspended: records fetched (the position is past them) may have been dropped
    # unapplied when the rebalance began; the next recovery seeks them back.
    consumer.flow_active = False
    asyncio.run(consumer._skip_transaction_markers_in_recovery())
    assert offsets == {TP("changelog", 0): 5}, "not marked complete: they are read again"


def test_failures_back_off_then_give_up(consumer: BatchConsumer, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.runtime.faust_compat import BatchesFailing
    from pipeline.runtime.output import DeliveryFailed

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(consumer, "sleep", sleep)
    consumer.max_batch_failures = 3

    async def scenario() -> None:
        for _ in range(2):
            consumer._batch_failed(DeliveryFailed("1 messages failed", failed=1))
            await consumer._back_off_after_failure()
        consumer._batch_failed(DeliveryFailed("1 messages failed", failed=1))
        with pytest.raises(BatchesFailing, match="3 batches failed in a row"):
            await consumer._back_off_after_failure()

    asyncio.run(scenario())
    assert slept == [1.0, 2.0]


def test_a_fatal_producer_error_is_not_retried(consumer: BatchConsumer) -> None:
    from pipeline.runtime.faust_compat import BatchesFailing
    from pipeline.runtime.output import DeliveryFailed

    consumer._batch_failed(DeliveryFailed("fenced", failed=0, fatal=True))
    with pytest.raises(BatchesFailing, match="cannot go on"):
        asyncio.run(consumer._back_off_after_failure())


def test_a_delivery_after_failures_resets_the_count(consumer: BatchConsumer) -> None:
    handler = _Handler()
    handler.release.set()
    consumer.use_batches(["raw"], handler)
    tp = TP("raw", 0)
    consumer.assignment = lambda: {tp}  # type: ignore[method-assign]
    consumer.batch_failures = 2

    async def scenario() -> None:
        await consumer._handle_batch({tp: [_Record(0)]}, 0)
        await consumer._wait_inflight()

    asyncio.run(scenario())
    assert consumer.batch_failures == 0


def test_a_failing_prepare_reads_the_batch_again(consumer: BatchConsumer) -> None:
    class Failing(_Handler):
        def prepare(self, messages):  # type: ignore[no-untyped-def]
            raise ValueError("a bug in a stage")

    handler = Failing()
    consumer.use_batches(["raw"], handler)
    tp = TP("raw", 0)
    consumer.assignment = lambda: {tp}  # type: ignore[method-assign]
    seeks: list[int] = []
    consumer._thread = _FakeThread(lambda tp, offset: seeks.append(offset))  # type: ignore[assignment]
    consumer._committed_offset[tp] = 7

    asyncio.run(consumer._handle_batch({tp: [_Record(7), _Record(8)]}, 0))
    assert seeks == [7] and consumer._read_offset[tp] == 7
    assert isinstance(consumer._failure, ValueError) and consumer.batch_failures == 1


def test_other_topics_keep_faust_offsets(consumer: BatchConsumer) -> None:
    consumer.use_batches(["raw"], _Handler())
    tp = TP("changelog", 0)
    consumer._acked[tp].extend([0, 1, 2])
    consumer._acked_index[tp].update([0, 1, 2])
    assert consumer._new_offset(tp) == 3


def test_aiokafka_reads_the_fetch_wait_we_set_when_it_starts() -> None:
    from aiokafka.consumer import consumer as aiokafka_consumer

    source = inspect.getsource(aiokafka_consumer.AIOKafkaConsumer.__init__)
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in source
    start = inspect.getsource(aiokafka_consumer.AIOKafkaConsumer.start)
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in start


def test_batch_consumer_uses_its_own_consumer_thread(consumer: BatchConsumer) -> None:
    from pipeline.runtime.faust_compat import BatchConsumerThread

    assert isinstance(consumer._new_consumer_thread(), BatchConsumerThread)


def test_a_batch_fetched_before_a_rebalance_is_discarded_not_sent(consumer: BatchConsumer) -> None:
    handler = _Handler()
    consumer.use_batches(["raw"], handler)
    tp = TP("raw", 0)
    consumer.assignment = lambda: {tp}  # type: ignore[method-assign]
    first, second = [_Record(1)], [_Record(2)]

    async def scenario() -> None:
        await consumer._handle_batch({tp: first}, 0)
        handle_second = asyncio.ensure_future(consumer._handle_batch({tp: second}, 0))
        await asyncio.sleep(0)
        consumer._fetch_epoch += 2  # revoked and assigned while the first was in flight
        handler.release.set()
        await handle_second
        await consumer._wait_inflight()

    asyncio.run(scenario())
    assert handler.delivered == [first]
    assert handler.discarded == [second], "its dedupe keys are unstaged, its records read again"
    assert consumer._new_offset(tp) == 2


class _FakeThread:
    """The consumer thread: seeks must run there (call_thread), never from the app's thread."""

    def __init__(self, seek: Any, seek_to_beginning: Any = None) -> None:
        self._consumer = type(
            "C", (), {"seek": staticmethod(seek), "seek_to_beginning": staticmethod(seek_to_beginning)}
        )()

    def _ensure_consumer(self) -> Any:
        return self._consumer

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        return fun(*args)


def _record_commits(consumer: BatchConsumer, tp: TP) -> list[dict[TP, int]]:
    """Replace Faust's commit (it needs a broker) by one that commits the committable offset."""
    commits: list[dict[TP, int]] = []

    async def commit(*_args: object, **_kwargs: object) -> bool:
        offset = consumer._new_offset(tp)
        if offset is None or not consumer._should_commit(tp, offset):
            return False
        commits.append({tp: offset})
        consumer._committed_offset[tp] = offset
        return True

    consumer.commit = commit  # type: ignore[method-assign]
    return commits


def test_a_seek_commits_what_was_delivered_before_seeking_back(consumer: BatchConsumer) -> None:
    # Faust's recovery resumes the partitions and only then seeks them to the committed
    # offsets: a batch delivered in between must be committed first, or it is read again.
    handler = _Handler()
    consumer.use_batches(["raw"], handler)
    tp = TP("raw", 0)
    consumer.assignment = lambda: {tp}  # type: ignore[method-assign]
    commits = _record_commits(consumer, tp)
    seeks: list[tuple[str, int]] = []

    async def seek_to_committed() -> dict[TP, int]:
        seeks.append(("committed", consumer._committed_offset[tp]))
        return {tp: consumer._committed_offset[tp]}

    consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
    consumer._thread = _FakeThread(lambda tp, offset: seeks.append(("seek", offset)))  # type: ignore[assignment]
    first, second = [_Record(10), _Record(11), _Record(12)], [_Record(13)]
    consumer._committed_offset[tp] = 10

    async def scenario() -> None:
        await consumer._handle_batch({tp: first}, 0)  # in flight
        seek = asyncio.ensure_future(consumer.perform_seek())
        await asyncio.sleep(0)
        # Fetched before the seek, handed over during it.
        handle_second = asyncio.ensure_future(consumer._handle_batch({tp: second}, 0))
        await asyncio.sleep(0)
        assert not seek.done(), "the seek waits for the delivery in flight"
        handler.release.set()
        await seek
        await handle_second

    asyncio.run(scenario())
    assert handler.delivered == [first]
    assert commits == [{tp: 13}], "committed before seeking"
    assert seeks[0] == ("committed", 13), "so the seek does not go back"
    assert handler.discarded == [second], "fetched before the seek: not sent..."
    assert seeks[1:] == [("seek", 13)] and consumer._read_offset[tp] == 13, "...but read again"


def test_records_dropped_before_any_delivery_are_read_again(consumer: BatchConsumer) -> None:
    # Nothing delivered since the assignment: from the committed offset, or, for a partition
    # with none (Faust's seek does not move it), from its beginning, never from where
    # fetching got to.
    handler = _Handler()
    consumer.use_batches(["raw"], handler)
    committed, uncommitted = TP("raw", 3), TP("raw", 4)
    consumer.assignment = lambda: {committed, uncommitted}  # type: ignore[method-assign]
    consumer._committed_offset[committed] = 40
    seeks: list[tuple[object, int]] = []
    consumer._thread = _FakeThread(  # type: ignore[assignment]
        lambda tp, offset: seeks.append((tp, offset)),
        lambda tp: seeks.append((tp, "beginning")),
    )

    async def scenario() -> None:
        consumer._fetch_epoch += 1  # e.g. the recovery's seek, after these were fetched
        await consumer._handle_batch(
            {committed: [_Record(70), _Record(71)], uncommitted: [_Record(9)]}, 0
        )

    asyncio.run(scenario())
    assert handler.discarded and not handler.delivered
    assert [(getattr(t, "partition", None), o) for t, o in seeks] == [(3, 40), (4, "beginning")]
    assert consumer._read_offset[committed] == 40, "the next offset to process"
    assert consumer._read_offset[uncommitted] is None


def test_a_revocation_commits_deliveries_before_faust_forgets_them(consumer: BatchConsumer) -> None:
    handler = _Handler()
    handler.release.set()
    consumer.use_batches(["raw"], handler)
    tp = TP("raw", 0)
    consumer.assignment = lambda: {tp}  # type: ignore[method-assign]
    commits = _record_commits(consumer, tp)
    seen_by_faust: list[dict[TP, int]] = []

    async def app_on_revoked(revoked: set[TP]) -> None:
        # What Faust's own commit in wait_empty() could still commit: nothing, acked is popped.
        seen_by_faust.append({t: consumer._new_offset(t) for t in revoked})

    consumer._on_partitions_revoked = app_on_revoked  # type: ignore[method-assign]

    async def scenario() -> None:
        await consumer._handle_batch({tp: [_Record(7), _Record(8)]}, 0)
        await consumer.on_partitions_revoked({tp})

    asyncio.run(scenario())
    assert commits == [{tp: 9}]
    assert seen_by_faust == [{tp: None}]


def _thread_with_partition_state(consumer: BatchConsumer, state: Any) -> Any:
    thread = consumer._thread
    assignment = SimpleNamespace(state_value=lambda tp: state)
    fake = SimpleNamespace(
        _fetcher=SimpleNamespace(_subscriptions=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment)))
    )
    thread._ensure_consumer = lambda: fake
    return thread


def test_the_livelock_check_skips_a_partition_whose_position_is_being_reset(
    consumer: BatchConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen in CI: Faust's livelock check read the position of a partition just sought to its
    beginning; aiokafka asserts it is set, and the AssertionError crashed the worker."""
    from aiokafka.consumer.subscription_state import TopicPartitionState

    async def states() -> tuple[Any, Any]:  # they need a running loop (a future each)
        return TopicPartitionState(assignment=None), TopicPartitionState(assignment=None)

    awaiting_reset, consuming = asyncio.run(states())
    with pytest.raises(AssertionError):
        awaiting_reset.position  # what upstream's check reads  # noqa: B018
    checked: list[TP] = []
    monkeypatch.setattr(AIOKafkaConsumerThread, "verify_event_path",
                        lambda self, now, tp: checked.append(tp))
    tp = TP("raw", 0)

    _thread_with_partition_state(consumer, awaiting_reset).verify_event_path(100.0, tp)
    assert checked == [], "nothing to check before aiokafka knows where the partition starts"

    consuming.seek(42)
    _thread_with_partition_state(consumer, consuming).verify_event_path(100.0, tp)
    assert checked == [tp], "Faust's own check runs once it has a position"

    def reset_meanwhile(self: Any, now: float, tp: TP) -> None:
        raise AssertionError  # the consumer's thread reset it between the test and the read

    monkeypatch.setattr(AIOKafkaConsumerThread, "verify_event_path", reset_meanwhile)
    _thread_with_partition_state(consumer, consuming).verify_event_path(100.0, tp)


class _AckOnRelease:
    """The output producer's batch protocol: every wait for acknowledgements blocks until the
    broker answers (``answered``)."""

    transactional = False

    def __init__(self) -> None:
        self.answered = asyncio.Event()

    async def send_batch(self, outputs: Any, **_: Any) -> None:
        await self.answered.wait()


class _Changelog:
    def __init__(self) -> None:
        self.applied: list[str] = []

    def produce_staged(self, staged: list[str]) -> None:
        pass

    def apply(self, staged: list[str]) -> None:
        self.applied.extend(staged)

    def unstage(self, staged: list[str]) -> None:
        raise AssertionError("nothing failed: nothing is unstaged")

    def after_delivery(self) -> None:
        pass


def test_a_shutdown_cancelling_the_fetch_loop_mid_settle_still_commits_the_batch(
    consumer: BatchConsumer, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen in CI: SIGTERM cancelled the idle fetch loop while it waited for the last batch's
    changelog records; the batch was forgotten, its offsets never committed, and the restarted
    worker dead-lettered its invalid events a second time."""
    output = _AckOnRelease()
    agent = TopologyAgent(processor=None, output=output)  # type: ignore[arg-type]
    changelog = _Changelog()
    consumer.use_batches(["raw"], agent)
    tp = TP("raw", 0)
    consumer.assignment = lambda: {tp}  # type: ignore[method-assign]
    commits = _record_commits(consumer, tp)

    async def scenario() -> None:
        prepared = PreparedBatch(SimpleNamespace(outputs=[]), [(changelog, ["key"])])  # type: ignore[arg-type]
        output.answered.set()
        await agent.deliver(prepared, {tp: 9})  # outputs acknowledged; its state not yet
        output.answered.clear()
        idle_settle = asyncio.ensure_future(consumer._settle_state())  # the idle fetch loop
        await asyncio.sleep(0.01)
        idle_settle.cancel()  # Faust's _stop_fetcher
        with pytest.raises(asyncio.CancelledError):
            await idle_settle
        output.answered.set()
        with caplog.at_level("INFO"):
            await consumer.wait_empty()  # Faust's _consumer_wait_empty

    asyncio.run(scenario())
    assert commits == [{tp: 9}]
    assert changelog.applied == ["key"]
    assert "Committed offsets: raw[0]=9" in caplog.text


def test_idle_ticks_are_handed_over_like_batches_without_records(consumer: BatchConsumer) -> None:
    handler = _Handler()
    handler.release.set()
    ticks: list[object] = []

    def prepare_idle() -> object:
        ticks.append("tick")
        return ["tick"]

    handler.prepare_idle = prepare_idle  # type: ignore[attr-defined]
    consumer.use_batches(["raw"], handler)
    consumer.assignment = lambda: set()  # type: ignore[method-assign]
    consumer.flow_active = True
    app = consumer.app
    app.rebalancing = False
    app.tables.actives_ready = True

    async def scenario() -> None:
        assert consumer._idle_tick_due()
        await consumer._handle_idle(consumer._fetch_epoch)
        await consumer._wait_inflight()
        assert not consumer._idle_tick_due(), "at most one a second"
        consumer._last_idle_tick -= 1.0
        app.tables.actives_ready = False
        assert not consumer._idle_tick_due(), "never while the state is being recovered"

    asyncio.run(scenario())
    assert ticks == ["tick"] and handler.delivered == [["tick"]]
    assert consumer._delivered_offsets == {}, "no offsets to commit"


def test_where_reading_resumes_is_what_was_delivered_or_committed(consumer: BatchConsumer) -> None:
    tp = TP("raw", 2)
    assert consumer._resume_offset(tp) is None, "neither: the beginning"
    consumer._committed_offset[tp] = 3544
    assert consumer._resume_offset(tp) == 3544
    consumer._delivered_offsets[tp] = 3600
    assert consumer._resume_offset(tp) == 3600, "delivered, maybe not committed yet"


def test_an_error_retrying_cannot_help_stops_at_once(consumer: BatchConsumer) -> None:
    from pipeline.errors import StateMismatch
    from pipeline.runtime.faust_compat import BatchesFailing

    consumer._batch_failed(StateMismatch("aggregate 'x': its stored state was written by another definition"))
    with pytest.raises(BatchesFailing, match="another definition"):
        asyncio.run(consumer._back_off_after_failure())


def test_batch_records_wait_for_the_seek_that_ends_an_assignments_recovery(consumer: BatchConsumer) -> None:
    # Faust marks every assigned partition active before it pauses them for the recovery, and
    # records of the old assignment can still arrive: processed before the seek to the committed
    # offsets, a batch from wherever the fetch position got to committed its offsets past
    # records nobody processed (seen: 54 events lost in the scale-out test).
    consumer.use_batches(["raw"], _Handler())
    raw, changelog = TP("raw", 4), TP("changelog", 4)

    async def assign() -> None:
        consumer._on_partitions_assigned = _noop  # type: ignore[method-assign]
        await consumer.on_partitions_assigned({raw, changelog})

    asyncio.run(assign())
    assert consumer._seek_pending
    records = {raw: [_Record(1115), _Record(1116)], changelog: [_Record(3)]}
    kept = consumer._drop_until_seeked(records)
    assert list(kept) == [changelog], "the recovery's changelog records pass, batch records wait"

    consumer.assignment = lambda: {raw}  # type: ignore[method-assign]
    _record_commits(consumer, raw)

    async def seek_to_committed() -> dict[TP, int]:
        consumer._committed_offset[raw] = 1090
        return {raw: 1090}

    consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
    seeks: list[int] = []
    consumer._thread = _FakeThread(lambda tp, offset: seeks.append(offset))  # type: ignore[assignment]
    asyncio.run(consumer.perform_seek())
    assert not consumer._seek_pending, "read from the committed offset on"
    assert seeks == [], "Faust's seek put it there"


async def _noop(*_args: object, **_kwargs: object) -> None:
    return None


def _one_partition_sought_by(consumer: BatchConsumer, tp: TP, seek_to_committed: Any) -> None:
    """One batch partition assigned; Faust's seek to the committed offsets (it needs a broker)
    replaced by ``seek_to_committed``, its commits by ``_record_commits``."""
    consumer.use_batches([tp.topic], _Handler())
    consumer.assignment = lambda: {tp}  # type: ignore[method-assign]
    _record_commits(consumer, tp)
    consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign]


def test_a_partition_without_committed_offset_restarts_at_its_beginning(consumer: BatchConsumer) -> None:
    # Faust's seek does not move it; records dropped while waiting for the seek moved the fetch
    # position on: nothing of it was processed in this assignment, so from the beginning.
    tp = TP("raw", 0)

    async def seek_to_committed() -> dict[TP, int]:
        return {tp: None}  # type: ignore[dict-item]

    _one_partition_sought_by(consumer, tp, seek_to_committed)
    to_beginning: list[object] = []
    consumer._thread = _FakeThread(  # type: ignore[assignment]
        lambda tp, offset: pytest.fail("no seek to an offset"), to_beginning.append
    )
    consumer._read_offset[tp] = 500
    asyncio.run(consumer.perform_seek())
    assert [(t.topic, t.partition) for t in to_beginning] == [("raw", 0)]  # type: ignore[attr-defined]
    assert consumer._read_offset[tp] is None and not consumer._seek_pending


def test_a_rebalance_during_the_seek_keeps_batches_waiting(consumer: BatchConsumer) -> None:
    tp = TP("raw", 0)

    async def seek_to_committed() -> dict[TP, int]:
        consumer._assignment_epoch += 2  # revoked and assigned again meanwhile
        consumer._committed_offset[tp] = 7
        return {tp: 7}

    _one_partition_sought_by(consumer, tp, seek_to_committed)
    consumer._thread = _FakeThread(lambda tp, offset: None)  # type: ignore[assignment]
    consumer._seek_pending = True
    asyncio.run(consumer.perform_seek())
    assert consumer._seek_pending, "the newer assignment's own seek ends the wait"


def test_records_dropped_while_the_seek_runs_are_read_again_after_it(consumer: BatchConsumer) -> None:
    # Faust resumes the partitions before its seek: a fetch right after the seek returns the
    # backlog, still dropped (the seek has not finished), and the position is past it again.
    tp = TP("raw", 0)
    seeks: list[int] = []

    async def seek_to_committed() -> dict[TP, int]:
        consumer._committed_offset[tp] = 2112
        seeks.append(-1)  # Faust's seek to the committed offset
        consumer._drop_until_seeked({tp: [_Record(2112), _Record(4265)]})  # right after it
        return {tp: 2112}

    _one_partition_sought_by(consumer, tp, seek_to_committed)
    consumer._seek_pending = True
    consumer._thread = _FakeThread(lambda tp, offset: seeks.append(offset))  # type: ignore[assignment]
    consumer._drop_until_seeked({tp: [_Record(2000)]})  # before the seek: the seek covers it
    asyncio.run(consumer.perform_seek())
    assert seeks == [-1, 2112], "sought back once more, after the seek"
    assert not consumer._seek_pending and consumer._dropped_while_pending == set()
    assert consumer._read_offset[tp] == 2112


def test_batch_partitions_are_not_fetched_until_the_seek(consumer: BatchConsumer) -> None:
    # aiokafka moves a position past the records it returns: never asked for, they stay put.
    consumer.use_batches(["raw"], _Handler())
    raw, changelog = TP("raw", 0), TP("changelog", 0)
    asked: list[set[TP] | None] = []

    class Thread:
        async def getmany(self, active_partitions, timeout):  # type: ignore[no-untyped-def]
            asked.append(set(active_partitions))
            return {}

    consumer._thread = Thread()  # type: ignore[assignment]
    consumer._seek_pending = True
    asyncio.run(consumer._getmany({raw, changelog}, 1.0))
    assert asked == [{changelog}], "the recovery's changelog only"
    asyncio.run(consumer._getmany({raw}, 0.01))
    assert asked == [{changelog}], "nothing to fetch: not even called"
    consumer._seek_pending = False
    asyncio.run(consumer._getmany({raw, changelog}, 1.0))
    assert asked[-1] == {raw, changelog}


# ---------------------------------------------------------------- header names that are not UTF-8


def _batch(base: int, names: list[Any], codec: int) -> bytes:
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    builder = _DefaultRecordBatchBuilderPy(
        magic=2, compression_type=codec, is_transactional=0, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20,
    )
    for delta, name in enumerate(names):
        headers = [] if name is None else [(name, b"v")]
        builder.append(delta, timestamp=1_700_000_000_000, key=b"k%d" % (base + delta),
                       value=b"value %d" % (base + delta), headers=headers)
    data = builder.build()
    data[0:8] = base.to_bytes(8, "big")  # the base offset, as the broker assigns it
    return bytes(data)


def _read(records: Any) -> list[tuple[int, bytes, list[tuple[str, bytes]]]]:
    out = []
    while records.has_next():
        for record in records.next_batch():
            out.append((record.offset, record.value, list(record.headers)))
    return out


@pytest.mark.parametrize("codec", [0, 3], ids=["uncompressed", "lz4"])
def test_a_header_name_that_is_not_utf8_is_read_leniently(codec: int) -> None:
    from aiokafka.record.memory_records import MemoryRecords

    from pipeline.runtime.faust_compat import LenientMemoryRecords

    bad = RawHeaderName(b"\xff\xfe-trace")
    fetched = _batch(0, [None, "trace", bad, None], codec) + _batch(4, ["ok", None], codec)

    # aiokafka's own reader (the C one) gives up on the whole fetch: the reason for the class.
    # If this starts passing, upstream fixed it: remove LenientMemoryRecords.
    with pytest.raises(UnicodeDecodeError):
        _read(MemoryRecords(fetched))

    read = _read(LenientMemoryRecords(fetched))
    assert [(offset, value) for offset, value, _ in read] == [
        (n, b"value %d" % n) for n in range(6)
    ]
    assert read[1][2] == [("trace", b"v")]
    assert read[2][2] == [("\ufffd\ufffd-trace", b"v")]
    assert read[4][2] == [("ok", b"v")]


def test_batches_with_valid_header_names_read_the_same() -> None:
    from aiokafka.record.memory_records import MemoryRecords

    from pipeline.runtime.faust_compat import LenientMemoryRecords

    fetched = b"".join(_batch(base, ["a", None, "b"], 3) for base in (0, 3, 6))
    assert _read(LenientMemoryRecords(fetched)) == _read(MemoryRecords(fetched))
    batch = LenientMemoryRecords(fetched).next_batch()
    assert batch.base_offset == 0 and batch.next_offset == 3 and batch.validate_crc()


def test_lenient_record_reading_is_installed_in_aiokafkas_fetcher() -> None:
    import aiokafka.consumer.fetcher

    from pipeline.runtime.faust_compat import LenientMemoryRecords, install_lenient_record_reading

    install_lenient_record_reading()
    assert aiokafka.consumer.fetcher.MemoryRecords is LenientMemoryRecords


# The upstream code LenientMemoryRecords builds on: _read_msg is copied with one change,
# next_batch's slice and the fetcher's use of the MemoryRecords name are relied on.
AIOKAFKA_DIGESTS = {
    "aiokafka.record.default_records._DefaultRecordBatchPy._read_msg": "0997ab7a58505c93",
    "aiokafka.record.memory_records._MemoryRecordsPy.next_batch": "f1779ecb6d0d344c",
    "aiokafka.record.memory_records._MemoryRecordsPy._cache_next": "7bb73a2eabca4ee3",
    "aiokafka.consumer.fetcher.PartitionRecords._unpack_records": "b803e6d46480732c",
}


@pytest.mark.parametrize("name", list(AIOKAFKA_DIGESTS))
def test_upstream_aiokafka_code_unchanged(name: str) -> None:
    import importlib

    module_name, cls, attr = name.rsplit(".", 2)
    owner = getattr(importlib.import_module(module_name), cls)
    source = inspect.getsource(getattr(owner, attr))
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert digest == AIOKAFKA_DIGESTS[name], (
        f"aiokafka changed {name} ({digest}): re-check LenientMemoryRecords in faust_compat.py"
    )
