"""The garbage collector of our long-running processes (a worker, the HTTP server).

Almost nothing a request or a job allocates ends in a reference cycle, so reference counting frees
it and the cyclic collector only walks live objects. With Python's defaults (a young collection
every 700 net allocations, a full one whenever a quarter more objects have reached the old
generation) the collector ran many times per job, and a full collection walked every object made at
start-up (modules, the catalog, pydantic models, price tables: ~100,000 in the server, a full
collection ~100 ms of a request's latency when it struck). Those are frozen out of every
collection, and collections come every ``GC_THRESHOLDS[0]`` net allocations.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    """Freeze what exists now (call once start-up is done) and collect rarely from then on."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
