-- A random identity for this log, stamped on every relayed message (Flowledger-Source), so a
-- relay never mistakes another log's messages in a shared stream for its own progress.
CREATE TABLE flowledger.installation (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO flowledger.installation DEFAULT VALUES;
