-- Waiting runs give their worker slot and lease back. A run whose every unfinished node waits
-- (for a signal, a timer, or a child run) is parked: status 'waiting', no lease, and wake_at
-- set to when it must be looked at again (NULL: only a signal, a cancel or its child's end
-- wakes it). Claims take parked rows only once wake_at has passed, through their own index, so
-- parked runs cost a row each and nothing on the claim path of ready runs.
ALTER TABLE flowledger.run_queue DROP CONSTRAINT run_queue_status_check;
ALTER TABLE flowledger.run_queue
    ADD CONSTRAINT run_queue_status_check CHECK (status IN ('queued', 'running', 'waiting', 'ended'));
ALTER TABLE flowledger.run_queue ADD COLUMN wake_at timestamptz;
-- parked: the row was given back by a waiting run (its next claim continues it, not a recovery).
-- poked: something the run waits for happened while it was held (a child ended): the holder
-- must look before it parks.
ALTER TABLE flowledger.run_queue ADD COLUMN parked boolean NOT NULL DEFAULT false;
ALTER TABLE flowledger.run_queue ADD COLUMN poked boolean NOT NULL DEFAULT false;

DROP INDEX flowledger.run_queue_claimable_idx;
CREATE INDEX run_queue_claimable_idx
    ON flowledger.run_queue (queued_at) WHERE status IN ('queued', 'running');
CREATE INDEX run_queue_wake_idx
    ON flowledger.run_queue (wake_at) WHERE status = 'waiting';

-- The run summary names the nodes that wait (a subset of current_nodes).
ALTER TABLE flowledger.run_summaries ADD COLUMN waiting_nodes text[] NOT NULL DEFAULT '{}';
ALTER TABLE flowledger.run_summaries ADD COLUMN parent_node_id text;
ALTER TABLE flowledger.node_executions ADD COLUMN signal text;
ALTER TABLE flowledger.node_executions ADD COLUMN child_run_id text;
