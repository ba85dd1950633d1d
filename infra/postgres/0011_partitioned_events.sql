-- The event log becomes a table partitioned by ranges of global_position, so that the
-- partitions holding nothing but archived runs' events can be detached and dropped
-- (`flowledger archive`) and the log can grow for years.
--
-- Works on a populated log: the existing table becomes the first partition
-- (events_initial), covering every position drawn so far; later partitions are
-- fixed-size ranges (event_partitioning.partition_size positions each, 1,000,000 by
-- default) that flowledger.ensure_event_partitions() creates ahead of the appends.
-- Why fixed ranges created ahead rather than a DEFAULT partition plus a split: rows of
-- the append-only log cannot be moved out of a DEFAULT partition (DELETE is refused),
-- and attaching a range next to a DEFAULT partition scans it under a lock that stops
-- the appends. A partition is created by CREATE TABLE + ATTACH PARTITION, which takes
-- only a SHARE UPDATE EXCLUSIVE lock on the log: appends and reads go on meanwhile.
--
-- Cost of the migration on a populated log: ATTACH checks the rows against the first
-- range once (a sequential scan); no index is rebuilt. Writers wait for it (one transaction).

-- 1. The existing table, its names freed for the partitioned parent. Its unique constraints
-- on event_id and (run_id, seq) stay: every partition has them (see 2).
ALTER TABLE flowledger.events RENAME TO events_initial;
ALTER TABLE flowledger.events_initial RENAME CONSTRAINT events_pkey TO events_initial_pkey;
ALTER TABLE flowledger.events_initial RENAME CONSTRAINT events_event_id_key TO events_initial_event_id_key;
ALTER TABLE flowledger.events_initial RENAME CONSTRAINT events_run_seq_key TO events_initial_run_seq_key;
ALTER INDEX flowledger.events_workflow_idx RENAME TO events_initial_workflow_idx;
DROP TRIGGER events_refuse_update_delete ON flowledger.events_initial;
DROP TRIGGER events_refuse_truncate ON flowledger.events_initial;

-- 2. The partitioned log: the same columns, checks and indexes. A unique index of a
-- partitioned table must include the partition key, so (run_id, seq) and event_id cannot be
-- unique indexes of the log. Instead every partition has its own unique constraints on them:
-- the database refuses a duplicate within one partition as before, at no extra cost. Across
-- partitions the writers keep them unique: the event store gives each event the seq after
-- its run's last one (read from every partition, under the append lock) and a fresh UUIDv7,
-- and an import looks both up in the whole log before it writes. (A trigger that looked every
-- inserted row up in the other partitions cost 10-30% of the append rate, measured.)
CREATE TABLE flowledger.events (
    global_position bigint GENERATED ALWAYS AS IDENTITY,
    event_id        uuid        NOT NULL,
    run_id          uuid        NOT NULL,
    seq             integer     NOT NULL,
    type            text        NOT NULL,
    tenant          text        NOT NULL,
    workflow_id     text        NOT NULL,
    recorded_at     timestamptz NOT NULL,
    schema_version  smallint    NOT NULL,
    prev_hash       bytea,
    hash            bytea       NOT NULL,
    data            json        NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (global_position),
    CONSTRAINT events_seq_check CHECK (seq >= 0),
    CONSTRAINT events_prev_hash_first CHECK ((seq = 0) = (prev_hash IS NULL))
) PARTITION BY RANGE (global_position);

CREATE INDEX events_workflow_idx ON flowledger.events (tenant, workflow_id, global_position);

-- History cannot be rewritten. The row trigger is cloned onto every partition, present and
-- future (so UPDATE/DELETE addressed to a partition directly are refused too); a statement
-- trigger is not, so every partition gets its own TRUNCATE trigger when it is created.
CREATE TRIGGER events_refuse_update_delete
    BEFORE UPDATE OR DELETE ON flowledger.events
    FOR EACH ROW EXECUTE FUNCTION flowledger.refuse_event_change();

CREATE TRIGGER events_refuse_truncate
    BEFORE TRUNCATE ON flowledger.events
    FOR EACH STATEMENT EXECUTE FUNCTION flowledger.refuse_event_change();

-- 3. Partition bookkeeping: the size of new partitions, and every partition made.
CREATE TABLE flowledger.event_partitioning (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    partition_size  bigint  NOT NULL CHECK (partition_size > 0)
);
INSERT INTO flowledger.event_partitioning (partition_size) VALUES (1000000);

CREATE TABLE flowledger.event_partitions (
    name            text        PRIMARY KEY,
    lower_position  bigint      NOT NULL,  -- inclusive
    upper_position  bigint      NOT NULL,  -- exclusive
    created_at      timestamptz NOT NULL DEFAULT now(),
    detached_at     timestamptz,           -- set when `flowledger archive` detached and dropped it
    archive_id      bigint,                -- the archive that did
    CHECK (lower_position < upper_position)
);

-- 4. The existing table becomes the first partition: every position drawn so far. A log with
-- no events (a new installation) has its empty table dropped instead, its range recorded as
-- detached: every partition costs each read of the log a little, an empty one for nothing.
DO $$
DECLARE
    seq_name text := pg_get_serial_sequence('flowledger.events_initial', 'global_position');
    drawn bigint;
    upper bigint;
    empty boolean;
BEGIN
    EXECUTE format('SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM %s', seq_name) INTO drawn;
    SELECT greatest(drawn, coalesce(max(global_position), 0)) + 1, count(*) = 0 INTO upper, empty
    FROM flowledger.events_initial;
    EXECUTE format('ALTER TABLE flowledger.events ALTER COLUMN global_position RESTART WITH %s', upper);
    IF empty THEN
        DROP TABLE flowledger.events_initial;
        INSERT INTO flowledger.event_partitions (name, lower_position, upper_position, detached_at)
        VALUES ('events_initial', 0, upper, now());
        RETURN;
    END IF;
    ALTER TABLE flowledger.events_initial ALTER COLUMN global_position DROP IDENTITY;
    EXECUTE format('ALTER TABLE flowledger.events ATTACH PARTITION flowledger.events_initial '
                   'FOR VALUES FROM (0) TO (%s)', upper);
    CREATE TRIGGER events_refuse_truncate
        BEFORE TRUNCATE ON flowledger.events_initial
        FOR EACH STATEMENT EXECUTE FUNCTION flowledger.refuse_event_change();
    INSERT INTO flowledger.event_partitions (name, lower_position, upper_position)
    VALUES ('events_initial', 0, upper);
END;
$$;

-- 5. Making partitions. attach_event_partition creates the table of one range (in the log's
-- schema) and attaches it; ensure_event_partitions makes the ranges that follow the last one
-- until they cover the positions drawn so far plus `ahead` plus half a partition, and
-- returns the position from which it should be called again (half a partition before the end
-- of the ranges made). One caller at a time (an advisory lock of its own).
CREATE FUNCTION flowledger.attach_event_partition(part text, lower bigint, upper bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    nsp text := (SELECT quote_ident(n.nspname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.oid = 'flowledger.events'::regclass);
BEGIN
    EXECUTE format('CREATE TABLE %s.%I (LIKE %s.events INCLUDING CONSTRAINTS, '
                   'CONSTRAINT %I UNIQUE (event_id), CONSTRAINT %I UNIQUE (run_id, seq))',
                   nsp, part, nsp, part || '_event_id_key', part || '_run_seq_key');
    EXECUTE format('ALTER TABLE %s.events ATTACH PARTITION %s.%I FOR VALUES FROM (%s) TO (%s)',
                   nsp, nsp, part, lower, upper);
    EXECUTE format('CREATE TRIGGER events_refuse_truncate BEFORE TRUNCATE ON %s.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %s.refuse_event_change()', nsp, part, nsp);
END;
$$;

CREATE FUNCTION flowledger.ensure_event_partitions(ahead bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    nsp text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.oid = 'flowledger.events'::regclass);
    size bigint;
    upper bigint;
    drawn bigint;
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('flowledger-partitions:' || nsp, 0));
    SELECT partition_size INTO size FROM flowledger.event_partitioning;
    SELECT max(upper_position) INTO upper FROM flowledger.event_partitions;
    drawn := coalesce(pg_sequence_last_value(pg_get_serial_sequence('flowledger.events', 'global_position')), 0);
    WHILE upper <= drawn + greatest(ahead, 0) + size / 2 LOOP
        part := 'events_' || lpad(upper::text, 19, '0');
        PERFORM flowledger.attach_event_partition(part, upper, upper + size);
        INSERT INTO flowledger.event_partitions (name, lower_position, upper_position)
        VALUES (part, upper, upper + size);
        upper := upper + size;
    END LOOP;
    RETURN upper - size / 2;
END;
$$;

-- No range is made here: the event store makes them when it starts (with the partition size
-- then set), and again whenever an append finds none for its position.

-- 6. Archives (`flowledger archive`): what each one wrote and which partitions it dropped.
-- heads: {run_id: {"events": n, "head_hash": hex, "tenant": t, "workflow_id": w}} for every
-- run in the bundle; the audit checks archived runs against it.
CREATE TABLE flowledger.archives (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at          timestamptz NOT NULL DEFAULT now(),
    before              timestamptz NOT NULL,
    run_count           integer     NOT NULL,
    event_count         bigint      NOT NULL,
    heads               jsonb       NOT NULL,
    bundle_file         text        NOT NULL,
    bundle_sha256       text        NOT NULL,
    partitions_detached text[]      NOT NULL DEFAULT '{}'
);

CREATE VIEW flowledger.archived_runs AS
    SELECT h.key::uuid AS run_id, a.id AS archive_id, (h.value->>'events')::integer AS events,
           h.value->>'head_hash' AS head_hash, h.value->>'tenant' AS tenant,
           h.value->>'workflow_id' AS workflow_id
    FROM flowledger.archives a CROSS JOIN LATERAL jsonb_each(a.heads) h;
