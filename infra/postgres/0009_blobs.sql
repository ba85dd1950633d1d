-- Node outputs larger than the event payload cap, stored whole and content-addressed: the
-- node_execute_after_data event carries {"$blob": {"sha256", "size_bytes"}} (covered by the hash
-- chain) and the bytes live here, keyed by the SHA-256 of the output's JSON encoding. Written
-- in the same transaction as the event that first references them (service/store/blobs.py);
-- a blob is never changed or removed: the events that reference it are history.
CREATE TABLE flowledger.blobs (
    sha256      text        PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes  bigint      NOT NULL CHECK (size_bytes >= 0),
    data        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (octet_length(data) = size_bytes)
);

CREATE FUNCTION flowledger.refuse_blob_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'flowledger.blobs is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'blobs are content-addressed and referenced by immutable events';
END;
$$;

CREATE TRIGGER blobs_refuse_update_delete
    BEFORE UPDATE OR DELETE ON flowledger.blobs
    FOR EACH ROW EXECUTE FUNCTION flowledger.refuse_blob_change();

CREATE TRIGGER blobs_refuse_truncate
    BEFORE TRUNCATE ON flowledger.blobs
    FOR EACH STATEMENT EXECUTE FUNCTION flowledger.refuse_blob_change();
