"""Send a batch's outputs with confluent-kafka and wait until the broker has them all.

Why confluent-kafka and not Faust's producer: ``Producer.produce()`` is a ~0.4 µs local enqueue
in C, while a Faust/aiokafka send costs tens of µs of Python per event. librdkafka batches,
compresses and retries in its own threads.

Offsets are committed only after ``send_batch`` returns, and it returns only when every message
of the batch is acknowledged by the broker (``acks=all``, idempotent producer), so a crash can
repeat events (at least once) but never lose one.

Exactly once (``transactional_id`` set): each batch is one Kafka transaction holding its
outputs, its state changelog records and its source offsets (``send_offsets_to_transaction``
with the consumer group's generation and member id, so a worker that lost its partitions in a
rebalance is fenced). A ``read_committed`` consumer sees a batch's outputs only if its offsets
were committed with them. Faust's own exactly-once mode is not used: it keeps one producer per
source partition and sends to topics the app does not consume outside any transaction
(faust-streaming #177).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, Mapping, Sequence

import struct

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from pipeline.core.records import Output
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


ACK_POLL_INTERVAL_S = 0.001
"""How often a batch waiting for its acknowledgements polls for delivery reports."""
ACK_DEADLINE_MARGIN_S = 5.0
"""Waited beyond the delivery timeout before messages librdkafka has not failed count as lost."""


class DeliveryFailed(PipelineError):
    """The broker did not take some outputs within the delivery timeout."""

    def __init__(self, message: str, *, failed: int, fatal: bool = False) -> None:
        super().__init__(message)
        self.failed = failed
        """How many messages were not delivered."""
        self.fatal = fatal
        """The producer cannot be used any more (a fatal librdkafka error, e.g. fenced by a
        newer instance with the same transactional id): retrying is pointless."""


class StaleBatch(PipelineError):
    """A transaction was aborted because the group rebalanced meanwhile: the batch was not
    delivered and its records are read again (by this worker or the partition's new owner)."""


# Errors of a transactional offset commit that mean "the group moved on": not fatal.
_REBALANCE_ERRORS = frozenset(
    code
    for code in (
        getattr(KafkaError, name, None)
        for name in (
            "ILLEGAL_GENERATION",
            "UNKNOWN_MEMBER_ID",
            "REBALANCE_IN_PROGRESS",
            "FENCED_INSTANCE_ID",
            "NOT_COORDINATOR",
        )
    )
    if code is not None
)


def group_metadata(group_id: str, generation: int, member_id: str) -> bytes:
    """What ``Consumer.consumer_group_metadata()`` returns (librdkafka's serialised form) for
    the group member Faust's aiokafka consumer is: ``send_offsets_to_transaction`` needs it."""
    return (
        b"CGMDv2:" + struct.pack("=i", generation) + group_id.encode() + b"\0"
        + member_id.encode() + b"\0" + b"\x01"  # \x01: no group.instance.id
    )


class OutputProducer:
    def __init__(
        self,
        *,
        bootstrap_servers: str,
        linger_ms: int = 1,
        extra: Mapping[str, str] | None = None,
        delivery_timeout_s: float = 120.0,
        transactional_id: str | None = None,
        transaction_timeout_s: float = 60.0,
    ) -> None:
        self._config = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,  # no duplicates or reordering from librdkafka retries
            "acks": "all",
            "linger.ms": linger_ms,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "compression.type": "lz4",
            "delivery.timeout.ms": int(delivery_timeout_s * 1000),
            # Outputs keep the input key; partition them the way the Java client and
            # aiokafka do (murmur2) so a key lands on the same partition number everywhere.
            "partitioner": "murmur2_random",
            **(extra or {}),
        }
        self._delivery_timeout_s = delivery_timeout_s
        self.transactional_id = transactional_id
        if transactional_id is not None:
            # A restarted worker with the same id aborts its predecessor's open transaction
            # at once (init_transactions) instead of leaving read_committed consumers waiting.
            self._config["transactional.id"] = transactional_id
            self._config["transaction.timeout.ms"] = int(transaction_timeout_s * 1000)
            # librdkafka: a message may not outlive the transaction it belongs to.
            timeout_ms = min(int(delivery_timeout_s * 1000), int(transaction_timeout_s * 1000))
            self._config["delivery.timeout.ms"] = timeout_ms
            self._delivery_timeout_s = timeout_ms / 1000
        self._in_transaction = False
        self._transactions_ready = False
        self._producer = Producer(self._config)
        self._failures: list[KafkaError] = []
        self.sent: Counter[str] = Counter()

    def _on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._failures.append(err)

    def record_failure(self, err: KafkaError) -> None:
        """A delivery failure seen by another callback (changelogs): fails the batch."""
        self._failures.append(err)

    def produce_all(self, outputs: Sequence[Output]) -> None:
        """Enqueue every output (blocking only while librdkafka's local queue is full)."""
        produce = self._producer.produce
        on_delivery = self._on_delivery
        sent = self.sent
        for topic, key, value in outputs:
            while True:
                try:
                    produce(topic, value, key, on_delivery=on_delivery)
                    break
                except BufferError:
                    self._producer.poll(0.05)
            sent[topic] += 1

    def produce_to_partition(
        self, topic: str, key: bytes, value: bytes, partition: int, on_delivery: Any
    ) -> None:
        """Enqueue one message to an explicit partition (table changelogs)."""
        while True:
            try:
                self._producer.produce(
                    topic, value, key, partition=partition, on_delivery=on_delivery
                )
                return
            except BufferError:
                self._producer.poll(0.05)

    @property
    def transactional(self) -> bool:
        return self.transactional_id is not None

    def init_transactions(self, timeout_s: float = 60.0) -> None:
        """Fence a predecessor with the same transactional id and wait until its last
        transaction is resolved (exactly-once mode; a no-op otherwise).

        Call it before the consumer reads its committed offsets: a predecessor killed while
        committing leaves a transaction the coordinator still completes, and until it has, the
        group's committed offsets are the older ones (aiokafka cannot ask for stable offsets,
        KIP-447): the batch would be processed again. Measured in CI: two events twice.
        """
        if self.transactional_id is None or self._transactions_ready:
            return
        self._producer.init_transactions(timeout_s)
        self._transactions_ready = True

    def begin(self) -> None:
        """Start the batch's transaction (exactly-once mode; a no-op otherwise)."""
        if self.transactional_id is None:
            return
        self.init_transactions()
        self._producer.begin_transaction()
        self._in_transaction = True

    def _commit_transaction(
        self, offsets: Mapping[tuple[str, int], int], metadata: bytes | None
    ) -> None:
        """Send the offsets into the transaction and commit it (blocking; an executor thread)."""
        producer = self._producer
        try:
            if offsets:
                positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                producer.send_offsets_to_transaction(positions, metadata, 30)
            producer.commit_transaction(self._delivery_timeout_s)
        except KafkaException as exc:
            error = exc.args[0]
            self._in_transaction = False
            if error.fatal():
                raise DeliveryFailed(
                    f"transaction failed: {error.str()}", failed=0, fatal=True
                ) from None
            try:
                producer.abort_transaction(30)
            except KafkaException as abort_exc:
                raise DeliveryFailed(
                    f"transaction failed ({error.str()}) and could not be aborted: "
                    f"{abort_exc.args[0].str()}", failed=0, fatal=True,
                ) from None
            self._failures.clear()
            if error.code() in _REBALANCE_ERRORS:
                raise StaleBatch(f"transaction aborted, the group rebalanced: {error.str()}") from None
            raise DeliveryFailed(f"transaction aborted: {error.str()}", failed=0) from None
        self._in_transaction = False
        if self._failures:  # cannot happen after a successful commit; be loud if it does
            failures, self._failures = self._failures, []
            raise DeliveryFailed(
                f"{len(failures)} messages failed in a committed transaction: {failures[0].str()}",
                failed=len(failures),
            )

    def abort(self, timeout_s: float = 30.0) -> None:
        """Abort the open transaction, if any: a batch failed before it was committed."""
        if not self._in_transaction:
            return
        self._in_transaction = False
        self._failures.clear()
        try:
            self._producer.abort_transaction(timeout_s)
        except KafkaException as exc:
            raise DeliveryFailed(
                f"could not abort the transaction: {exc.args[0].str()}", failed=0, fatal=True
            ) from None

    async def send_batch(
        self,
        outputs: Sequence[Output],
        *,
        offsets: Mapping[tuple[str, int], int] | None = None,
        metadata: bytes | None = None,
    ) -> None:
        """Produce a batch and wait for its delivery without blocking the event loop.

        Exactly-once mode: the transaction (begun by ``begin``) is committed with ``offsets``
        ((topic, partition) -> next offset) for the consumer group member ``metadata``.
        """
        self.produce_all(outputs)
        await self._acknowledged()
        if self._in_transaction:
            # Every message is acknowledged by now, so this is the offsets and the commit
            # marker only. They block: an executor thread keeps the loop (heartbeats) running.
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._commit_transaction, offsets or {}, metadata)

    async def _acknowledged(self) -> None:
        """Wait until every message enqueued so far is acknowledged by the broker (or failed),
        serving the delivery reports on the event loop's own thread.

        Not ``flush()`` in an executor thread: that thread runs the delivery callbacks, and
        each one must take the GIL from the loop's thread, which is busy running the next
        batch's stages. Python hands the GIL over only every switch interval (5 ms), so a
        batch of a few hundred messages took ~60 ms to be "acknowledged" at half rate, most
        of it waiting for the GIL (measured: 600 messages, a busy second thread: flush 355 ms
        with a callback per message, 21 ms without). Here ``poll(0)`` serves the reports
        that arrived while the stages ran, all at once, on the thread that already holds it.
        """
        producer = self._producer
        loop = asyncio.get_running_loop()
        # librdkafka fails a message itself after delivery.timeout.ms; this is a backstop.
        deadline = loop.time() + self._delivery_timeout_s + ACK_DEADLINE_MARGIN_S
        while True:
            producer.poll(0)
            # Messages queued or in flight, and delivery reports not served yet.
            remaining = len(producer)
            if not remaining:
                break
            if loop.time() > deadline:
                raise DeliveryFailed(
                    f"{remaining} messages not delivered within the timeout", failed=remaining
                )
            await asyncio.sleep(ACK_POLL_INTERVAL_S)
        if self._failures and not self._in_transaction:
            failures, self._failures = self._failures, []
            raise DeliveryFailed(
                f"{len(failures)} messages failed delivery; first: {failures[0].str()}",
                failed=len(failures),
            )

    def close(self, timeout: float = 30.0) -> None:
        if self._in_transaction:
            try:
                self._producer.abort_transaction(timeout)
            except KafkaException as exc:
                log.error("could not abort the open transaction: %s", exc.args[0])
        remaining = self._producer.flush(timeout)
        if remaining:
            log.error("%d output messages were not delivered before close", remaining)

    def check_connection(self, timeout: float = 10.0) -> None:
        try:
            self._producer.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise PipelineError(f"cannot reach Kafka: {exc.args[0]}") from None
