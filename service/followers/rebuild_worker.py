"""One worker process of a parallel rebuild (see ``parallel_rebuild``).

Reads a ``FoldJob`` as JSON on stdin, folds the runs of its share into the shadow
tables, and writes its progress and its ``FoldDone`` on stdout.
"""

from __future__ import annotations

import asyncio
import sys

import msgspec

from projections.runner import PROJECTIONS, fold_into_shadows
from service.followers.gc_pause import collector_paused
from service.followers.parallel_rebuild import DONE, PROGRESS, FoldDone, FoldJob
from service.infra.db import create_pool
from service.store.event_store import EventStore
from service.store.projection_log import ShareLog


def _report(events: int) -> None:
    sys.stdout.buffer.write(PROGRESS + b"%d\n" % events)
    sys.stdout.buffer.flush()


async def fold_share(job: FoldJob) -> FoldDone:
    # Two connections: the log's next page is read on one while rows are COPYed on the other.
    # The planner takes the share's hash filter for a rare match and would scan each page
    # with parallel workers (several times slower, and they take the CPU the workers need).
    pool = await create_pool(
        job.database_url, min_size=2, max_size=2, server_settings={"max_parallel_workers_per_gather": "0"}
    )
    try:
        log = ShareLog(EventStore(pool, schema=job.schema), upto=job.upto, share=job.share, shares=job.shares)
        async with pool.acquire() as conn:
            position, late = await fold_into_shadows(
                conn,
                log,
                [PROJECTIONS[name] for name in job.projections],
                job.shadows,
                schema=job.schema,
                batch=job.batch,
                on_progress=_report,
                copy_rows=job.copy_rows,
            )
    finally:
        await pool.close()
    return FoldDone(position, late)


def main() -> None:
    job = msgspec.json.decode(sys.stdin.buffer.read(), type=FoldJob)
    with collector_paused():
        done = asyncio.run(fold_share(job))
    sys.stdout.buffer.write(DONE + msgspec.json.encode(done) + b"\n")
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
