-- Workflow definitions (immutable versions) and the run queue.
CREATE TABLE flowledger.workflows (
    workflow_id text        NOT NULL,
    version     text        NOT NULL,  -- content hash of the spec
    spec        json        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workflow_id, version)
);
CREATE INDEX workflows_latest_idx ON flowledger.workflows (workflow_id, created_at DESC);

-- One row per run, written in the same transaction as its run_queued event.
-- Workers claim rows with FOR UPDATE SKIP LOCKED and hold them by a lease they renew.
CREATE TABLE flowledger.run_queue (
    run_id           uuid        PRIMARY KEY,
    tenant           text        NOT NULL,
    workflow_id      text        NOT NULL,
    workflow_version text        NOT NULL,
    idempotency_key  text,
    status           text        NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'ended')),
    lease_owner      text,
    lease_expires_at timestamptz,
    claims           integer     NOT NULL DEFAULT 0,
    queued_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at         timestamptz
);
CREATE UNIQUE INDEX run_queue_idempotency_idx
    ON flowledger.run_queue (tenant, workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX run_queue_claimable_idx
    ON flowledger.run_queue (queued_at) WHERE status <> 'ended';
