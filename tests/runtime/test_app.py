"""The topology agent and the worker's health when batches fail (no broker: nothing connects)."""

from __future__ import annotations

import asyncio
import gc
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.runtime.app import (
    PreparedBatch,
    TopologyAgent,
    create_app,
    health_problems,
    readiness_problems,
)
from pipeline.runtime.output import DeliveryFailed
from pipeline.runtime.faust_compat import BatchConsumer
from pipeline.settings import Settings
from pipeline.topology import load_topology

REPO = Path(__file__).resolve().parents[2]


class _Store:
    """A table store's batch protocol: staged writes are taken per batch, or unstaged."""

    def __init__(self) -> None:
        self.staged: list[str] = []
        self.unstaged: list[list[str]] = []

    def take_staged(self) -> list[str]:
        staged, self.staged = self.staged, []
        return staged

    def unstage(self, staged: list[str]) -> None:
        self.unstaged.append(staged)


class _Processor:
    def __init__(self, store: _Store) -> None:
        self.store = store

    def process(self, messages: Any) -> Any:
        self.store.staged.append("key-of-the-first-event")
        raise RuntimeError("a bug half-way through the stages")


def test_a_failing_batch_leaves_no_staged_state() -> None:
    store = _Store()
    agent = TopologyAgent(_Processor(store), output=None)  # type: ignore[arg-type]
    agent.stores.append(store)
    with pytest.raises(RuntimeError, match="half-way"):
        agent.prepare([])
    assert store.unstaged == [["key-of-the-first-event"]], "its records come again: unstaged"
    assert store.staged == []


class _RecordingProcessor:
    def __init__(self) -> None:
        self.collection_on_during_stages: list[bool] = []

    def process(self, messages: Any) -> Any:
        self.collection_on_during_stages.append(gc.isenabled())
        return SimpleNamespace(dead_letters={}, counters={})


def test_a_batch_stages_run_without_cyclic_collection() -> None:
    processor = _RecordingProcessor()
    agent = TopologyAgent(processor, output=None)  # type: ignore[arg-type]
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        agent.prepare([])
        assert processor.collection_on_during_stages == [False], "the batch's objects are not scanned"
        assert gc.isenabled(), "back on for the rest of the worker"
    finally:
        if not was_enabled:
            gc.disable()


class _Output:
    """The output producer's batch protocol, recording what reaches the broker in what order.
    ``send_batch`` is one wait for everything produced so far, as with the real producer."""

    def __init__(self, *, transactional: bool = False) -> None:
        self.transactional = transactional
        self.log: list[str] = []
        self.fail_next = False

    async def send_batch(self, outputs: Any, **_: Any) -> None:
        self.log.append(f"outputs {list(outputs)} and everything before acknowledged")
        if self.fail_next:
            self.fail_next = False
            raise DeliveryFailed("1 message failed delivery", failed=1)

    def begin(self) -> None:
        self.log.append("begin")

    def abort(self) -> None:
        self.log.append("abort")


class _StateStore:
    """A table with the batch protocol of state.py: changelog records produced, then applied."""

    def __init__(self, output: _Output) -> None:
        self.output = output
        self.applied: list[str] = []
        self.unstaged: list[list[str]] = []

    def produce_staged(self, staged: list[str]) -> None:
        self.output.log.append(f"changelog {staged} produced")

    def apply(self, staged: list[str]) -> None:
        self.applied.extend(staged)

    def unstage(self, staged: list[str]) -> None:
        self.unstaged.append(staged)

    def after_delivery(self) -> None:
        pass


def _prepared(outputs: list[str], state: list[str], store: _StateStore) -> PreparedBatch:
    return PreparedBatch(SimpleNamespace(outputs=outputs), [(store, state)])  # type: ignore[arg-type]


def _agent(output: _Output) -> tuple[TopologyAgent, _StateStore]:
    agent = TopologyAgent(processor=None, output=output)  # type: ignore[arg-type]
    store = _StateStore(output)
    agent.stores.append(store)
    return agent, store


def test_at_least_once_a_batch_state_is_acknowledged_with_the_next_batch() -> None:
    async def scenario() -> None:
        output = _Output()
        agent, store = _agent(output)
        first = await agent.deliver(_prepared(["o1"], ["k1"], store), {"tp": 10})
        assert first.offsets == {} and not first.committed, "its state is not acknowledged yet"
        assert output.log == ["outputs ['o1'] and everything before acknowledged",
                              "changelog ['k1'] produced"], "the outputs first, then the state"
        assert store.applied == [] and agent.unsettled_offsets() == {"tp": 10}

        second = await agent.deliver(_prepared(["o2"], ["k2"], store), {"tp": 20})
        assert second.offsets == {"tp": 10}, "the first batch's state came with the second's outputs"
        assert store.applied == ["k1"] and agent.unsettled_offsets() == {"tp": 20}

        assert await agent.settle() == {"tp": 20}
        assert store.applied == ["k1", "k2"] and agent.unsettled_offsets() == {}
        assert await agent.settle() == {}, "nothing left to settle"
        assert store.unstaged == []

    asyncio.run(scenario())


def test_a_batch_without_state_changes_is_delivered_at_once() -> None:
    async def scenario() -> None:
        output = _Output()
        agent, store = _agent(output)
        await agent.deliver(_prepared(["o1"], ["k1"], store), {"tp": 10, "other": 5})
        delivered = await agent.deliver(_prepared(["o2"], [], store), {"tp": 20})
        assert delivered.offsets == {"tp": 20, "other": 5}, "the later offset of a partition wins"
        assert agent.unsettled_offsets() == {}

    asyncio.run(scenario())


@pytest.mark.parametrize("failing", ["the next delivery", "the settle"])
def test_a_failed_wait_undoes_the_unacknowledged_state(failing: str) -> None:
    async def scenario() -> None:
        output = _Output()
        agent, store = _agent(output)
        await agent.deliver(_prepared(["o1"], ["k1"], store), {"tp": 10})
        output.fail_next = True
        with pytest.raises(DeliveryFailed):
            if failing == "the next delivery":
                await agent.deliver(_prepared(["o2"], ["k2"], store), {"tp": 20})
            else:
                await agent.settle()
        # Which message failed is unknown: the first batch's changelog records may be lost. Its
        # keys leave the overlay, so its records, read again (the consumer seeks to before both
        # batches), are not taken for duplicates.
        assert store.unstaged == [["k1"]] and store.applied == []
        assert agent.unsettled_offsets() == {}

    asyncio.run(scenario())


def test_a_settle_cancelled_while_it_waits_leaves_the_batch_for_the_next_settle() -> None:
    """Shutdown cancels the fetch loop, often while it settles the last batch's state; the
    batch must still be settled (and its offsets committed) by ``wait_empty``'s settle."""

    async def scenario() -> None:
        output = _Output()
        agent, store = _agent(output)
        await agent.deliver(_prepared(["o1"], ["k1"], store), {"tp": 10})
        acknowledged = asyncio.Event()
        real_send = output.send_batch

        async def slow_send(outputs: Any, **kwargs: Any) -> None:
            await acknowledged.wait()
            await real_send(outputs, **kwargs)

        output.send_batch = slow_send  # type: ignore[method-assign]
        waiting = asyncio.ensure_future(agent.settle())
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert agent.unsettled_offsets() == {"tp": 10}, "still to be settled"
        assert store.applied == [] and store.unstaged == []

        acknowledged.set()
        assert await agent.settle() == {"tp": 10}
        assert store.applied == ["k1"] and agent.unsettled_offsets() == {}

    asyncio.run(scenario())


def test_exactly_once_commits_each_batch_with_its_state() -> None:
    async def scenario() -> None:
        output = _Output(transactional=True)
        agent, store = _agent(output)
        delivered = await agent.deliver(_prepared(["o1"], ["k1"], store), {})
        assert delivered.committed and store.applied == ["k1"]
        assert output.log == ["begin", "changelog ['k1'] produced",
                              "outputs ['o1'] and everything before acknowledged"]
        assert agent.unsettled_offsets() == {}

    asyncio.run(scenario())


@pytest.fixture
def app(tmp_path: Path) -> Any:
    topology = load_topology(REPO / "topologies" / "ecommerce.yaml")
    return create_app(topology, Settings.from_env(env={}, data_dir=tmp_path))


def test_health_fails_once_the_worker_gives_up(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    raised: list[int] = []
    monkeypatch.setattr(signal, "raise_signal", raised.append)
    assert health_problems(app) == []
    app.fail(RuntimeError("5 batches failed in a row"))
    app.fail(RuntimeError("a second report changes nothing"))
    assert raised == [signal.SIGTERM], "stopped the way SIGTERM stops it, once"
    assert health_problems(app) == ["the worker gave up: 5 batches failed in a row"]


def test_readiness_reports_a_batch_being_retried(app: Any) -> None:
    consumer = app.consumer
    assert isinstance(consumer, BatchConsumer)
    assert consumer.on_fatal == app.fail and consumer.max_batch_failures == 5
    consumer.batch_failures = 2
    consumer.assignment = lambda: set()  # not started: nothing assigned
    waiting = readiness_problems(app)
    assert any("2 failed in a row" in w for w in waiting), waiting


def test_a_worker_assigned_nothing_is_ready_once_it_joined(app: Any) -> None:
    consumer = app.consumer
    consumer.assignment = lambda: set()
    app.rebalancing = False
    app.consumer_generation_id = 0
    assert readiness_problems(app) == ["partition assignment"]
    app.consumer_generation_id = 3  # a rebalance completed and left it idle
    assert readiness_problems(app) == []


def test_changelogs_as_durable_as_the_source_and_local_state_per_group(app: Any, tmp_path: Path) -> None:
    topology = load_topology(REPO / "topologies" / "ecommerce.yaml")
    assert app.conf.topic_replication_factor == topology.spec.source.replication_factor
    # Keyed by the consumer group (which names the changelogs), not by the topology name: a
    # worker of another group never finds this group's local tables.
    assert Path(app.conf.datadir) == tmp_path / f"pipeline-{topology.name}"
