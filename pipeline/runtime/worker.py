"""``pipeline worker``: create missing topics, then run the topology's Faust worker."""

from __future__ import annotations

import logging

import faust

# The worker's own topics are planned and created in admin.py, next to the topology's, so that
# ``pipeline topics create`` creates the very same topics without importing Faust.
from pipeline.runtime.admin import ensure_internal_topics, ensure_topics, group_id_for
from pipeline.runtime.app import create_app
from pipeline.runtime.gc_policy import tune_gc
from pipeline.settings import Settings
from pipeline.topology.model import Topology

log = logging.getLogger(__name__)


def run_worker(topology: Topology, settings: Settings) -> int:
    created = ensure_topics(topology, settings)
    if created:
        log.info("created topics: %s", ", ".join(created))
    partitions = ensure_internal_topics(topology, settings)
    (settings.data_dir / group_id_for(topology, settings)).mkdir(parents=True, exist_ok=True)
    app = create_app(topology, settings, source_partitions=partitions)
    # Exactly once: resolve a crashed predecessor's transaction before Faust reads the group's
    # committed offsets (output.py explains why).
    app.topology_agent.output.init_transactions()
    tune_gc()
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
    )
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0)
    if app.fatal_error is not None:
        log.critical("The worker stopped because it could not go on: %s", app.fatal_error)
        return code or 1
    return code
