-- Registering a spec identical to an older version makes that version the current one again
-- (the latest registration wins); created_at keeps the first registration (and an imported
-- version's original time). NULL: never re-registered, current as of created_at.
ALTER TABLE flowledger.workflows ADD COLUMN current_since timestamptz;
DROP INDEX flowledger.workflows_latest_idx;
CREATE INDEX workflows_latest_idx ON flowledger.workflows (workflow_id, (coalesce(current_since, created_at)) DESC);
