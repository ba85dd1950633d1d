-- The run event log: append-only, hash-chained, globally ordered.
CREATE SCHEMA IF NOT EXISTS flowledger;

CREATE TABLE flowledger.events (
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid        NOT NULL,
    run_id          uuid        NOT NULL,
    seq             integer     NOT NULL CHECK (seq >= 0),
    type            text        NOT NULL,
    tenant          text        NOT NULL,
    workflow_id     text        NOT NULL,
    recorded_at     timestamptz NOT NULL,
    schema_version  smallint    NOT NULL,
    prev_hash       bytea,
    hash            bytea       NOT NULL,
    -- json (not jsonb): the exact bytes that were hashed are kept verbatim.
    data            json        NOT NULL,
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_run_seq_key UNIQUE (run_id, seq),
    CONSTRAINT events_prev_hash_first CHECK ((seq = 0) = (prev_hash IS NULL))
);

CREATE INDEX events_workflow_idx ON flowledger.events (tenant, workflow_id, global_position);

-- History cannot be rewritten: the database itself refuses UPDATE, DELETE and TRUNCATE.
CREATE FUNCTION flowledger.refuse_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'flowledger.events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'events are immutable; append a new event instead';
END;
$$;

CREATE TRIGGER events_refuse_update_delete
    BEFORE UPDATE OR DELETE ON flowledger.events
    FOR EACH ROW EXECUTE FUNCTION flowledger.refuse_event_change();

CREATE TRIGGER events_refuse_truncate
    BEFORE TRUNCATE ON flowledger.events
    FOR EACH STATEMENT EXECUTE FUNCTION flowledger.refuse_event_change();

-- Positions of tailing readers (relay, projectors).
CREATE TABLE flowledger.checkpoints (
    name        text PRIMARY KEY,
    position    bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
