-- Schedules: a workflow started by cron (in a time zone) or at a fixed interval (see
-- service/store/schedules.py and service/engine/scheduler.py). Every instance's scheduler takes
-- due rows with FOR UPDATE SKIP LOCKED and advances next_fire_at in the same transaction; each
-- fire time's run has the idempotency key schedule:<schedule_id>:<fire time>, so it starts once.
CREATE TABLE flowledger.schedules (
    schedule_id  uuid        PRIMARY KEY,
    tenant       text        NOT NULL,
    workflow_id  text        NOT NULL,
    cron         text,
    every        text,
    timezone     text        NOT NULL DEFAULT 'UTC',
    inputs       json        NOT NULL,
    overlap      text        NOT NULL CHECK (overlap IN ('skip', 'allow')),
    catchup      text        NOT NULL CHECK (catchup IN ('none', 'latest', 'all')),
    next_fire_at timestamptz NOT NULL,
    last_fire_at timestamptz,
    last_run_id  uuid,
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((cron IS NULL) <> (every IS NULL))
);
CREATE INDEX schedules_due_idx ON flowledger.schedules (next_fire_at);
CREATE INDEX schedules_tenant_idx ON flowledger.schedules (tenant, workflow_id, schedule_id);
