-- The operator console (issue 22): operators with roles, their server-side
-- sessions, and the audit trail of every change made through the console or
-- smartyd-admin.  (A provider's registry layout is migration 0020's.)

CREATE TABLE operators (
    id               bigserial PRIMARY KEY,
    login            text NOT NULL UNIQUE CHECK (login ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    password_hash    text NOT NULL,                      -- ledger.hash_password (scrypt)
    role             text NOT NULL CHECK (role IN ('admin', 'support', 'viewer')),
    disabled         boolean NOT NULL DEFAULT false,
    failed_attempts  integer NOT NULL DEFAULT 0,         -- wrong passwords in a row
    locked_until     timestamptz,                        -- set after too many of them
    created          timestamptz NOT NULL DEFAULT now()
);

-- A session's random id is in the browser's cookie only; here its SHA-256.
CREATE TABLE console_sessions (
    id_hash      bytea PRIMARY KEY,
    operator_id  bigint NOT NULL REFERENCES operators (id) ON DELETE CASCADE,
    created      timestamptz NOT NULL,
    last_seen    timestamptz NOT NULL                    -- idle time-out from here
);
CREATE INDEX console_sessions_operator_idx ON console_sessions (operator_id);

-- Who (an operator's login, or 'cli'), when, what, for which customer, the
-- state before and after, and why.  Rows are never updated or deleted.
CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL,
    actor        text NOT NULL,
    operator_id  bigint REFERENCES operators (id),
    action       text NOT NULL,
    customer_id  bigint REFERENCES customers (id),
    before       jsonb,
    after        jsonb,
    reason       text NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_customer_idx ON audit_log (customer_id, id) WHERE customer_id IS NOT NULL;
CREATE INDEX audit_log_at_idx ON audit_log (at);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
