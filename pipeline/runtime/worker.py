"""``pipeline worker``: create missing topics, then run the topology's Faust worker."""

from __future__ import annotations

import logging

import faust

from pipeline.runtime.admin import ensure_topics
from pipeline.runtime.app import create_app
from pipeline.settings import Settings
from pipeline.topology.model import Topology

log = logging.getLogger(__name__)


def run_worker(topology: Topology, settings: Settings) -> int:
    created = ensure_topics(topology, settings)
    if created:
        log.info("created topics: %s", ", ".join(created))
    (settings.data_dir / topology.name).mkdir(parents=True, exist_ok=True)
    app = create_app(topology, settings)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
