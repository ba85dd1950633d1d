-- Credentials, tenants and secrets (see service/store/keys.py and service/store/secrets.py).

-- API keys: the token is flk_<key_id>_<secret>; only the SHA-256 of the secret is kept.
CREATE TABLE flowledger.api_keys (
    key_id        text        PRIMARY KEY,
    tenant        text        NOT NULL,
    scopes        text[]      NOT NULL,
    secret_sha256 bytea       NOT NULL,
    created_by    text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);

-- Secrets per tenant, encrypted by the service (Fernet); the database never sees a value.
CREATE TABLE flowledger.secrets (
    tenant      text        NOT NULL,
    name        text        NOT NULL,
    ciphertext  bytea       NOT NULL,
    updated_by  text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant, name)
);

-- Workflow ids are per tenant; each version records who registered it.
ALTER TABLE flowledger.workflows ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE flowledger.workflows ADD COLUMN registered_by text;
ALTER TABLE flowledger.workflows DROP CONSTRAINT workflows_pkey;
ALTER TABLE flowledger.workflows ADD PRIMARY KEY (tenant, workflow_id, version);
DROP INDEX flowledger.workflows_latest_idx;
CREATE INDEX workflows_latest_idx
    ON flowledger.workflows (tenant, workflow_id, (coalesce(current_since, created_at)) DESC);
