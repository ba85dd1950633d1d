-- Read models: projections of the event log, each rebuilt from position 0 on demand.

CREATE TABLE flowledger.run_summaries (
    run_id           uuid PRIMARY KEY,
    tenant           text        NOT NULL,
    workflow_id      text        NOT NULL,
    workflow_version text        NOT NULL DEFAULT '',
    status           text        NOT NULL,
    progress         smallint    NOT NULL DEFAULT 0,
    node_count       integer     NOT NULL DEFAULT 0,
    current_nodes    text[]      NOT NULL DEFAULT '{}',
    executed_nodes   text[]      NOT NULL DEFAULT '{}',
    failed_nodes     text[]      NOT NULL DEFAULT '{}',
    skipped_nodes    text[]      NOT NULL DEFAULT '{}',
    retries          integer     NOT NULL DEFAULT 0,
    queued_at        timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    duration_ms      double precision,
    error            text,
    parent_run_id    text,
    last_seq         integer     NOT NULL
);
-- Newest first (run ids are UUIDv7: time-ordered), optionally filtered.
CREATE INDEX run_summaries_list_idx ON flowledger.run_summaries (tenant, run_id DESC);
CREATE INDEX run_summaries_workflow_idx ON flowledger.run_summaries (tenant, workflow_id, run_id DESC);
CREATE INDEX run_summaries_status_idx ON flowledger.run_summaries (tenant, status, run_id DESC);

CREATE TABLE flowledger.node_executions (
    run_id        uuid        NOT NULL,
    node_id       text        NOT NULL,
    tenant        text        NOT NULL,
    workflow_id   text        NOT NULL,
    node_type     text        NOT NULL DEFAULT '',
    status        text        NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    retries       integer     NOT NULL DEFAULT 0,
    started_at    timestamptz,
    finished_at   timestamptz,
    duration_ms   double precision,
    output_bytes  bigint      NOT NULL DEFAULT 0,
    item_count    integer     NOT NULL DEFAULT 0,
    branch_label  text,       -- a branch node's chosen label: which outgoing edges were taken
    error_kind    text,
    error_message text,
    skip_reason   text,
    last_seq      integer     NOT NULL,
    PRIMARY KEY (run_id, node_id)
);
CREATE INDEX node_executions_history_idx ON flowledger.node_executions (tenant, workflow_id, node_id, run_id DESC);
CREATE INDEX node_executions_type_idx ON flowledger.node_executions (tenant, workflow_id, node_type);
