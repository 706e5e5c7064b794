"""The topology agent and the worker's health when batches fail (no broker: nothing connects)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from pipeline.runtime.app import TopologyAgent, create_app, health_problems, readiness_problems
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
