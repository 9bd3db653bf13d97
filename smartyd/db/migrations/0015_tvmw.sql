-- The TV Middleware API for devices (issue 23, DESIGN §11): device sessions,
-- per-account device limits, channel categories.

-- -- sessions --------------------------------------------------------------------------
-- One row per logged-in device.  The authkey itself is never stored: key_hash
-- is its sha256.  last_seen is written in batches (every few seconds, one
-- statement), never per request; a session idle for [tvmw] session_ttl ends.
-- channels_digest: the account's channel set as last listed to this session
-- (AccountStatus's channel_list_changed).
CREATE TABLE tvmw_sessions (
    key_hash        bytea PRIMARY KEY CHECK (length(key_hash) = 32),
    account_id      bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    client_id       text NOT NULL,
    device_uid      text NOT NULL,
    device          text NOT NULL DEFAULT '',
    ip              text NOT NULL,
    created         timestamptz NOT NULL,
    last_seen       timestamptz NOT NULL,
    channels_digest text NOT NULL DEFAULT ''
);
CREATE INDEX tvmw_sessions_account_idx ON tvmw_sessions (account_id, device_uid);
CREATE INDEX tvmw_sessions_last_seen_idx ON tvmw_sessions (last_seen);

-- A session that ends (Logout, idle sweep, the account trigger below, a
-- cascade) is announced to every instance, which drops it from memory.
CREATE FUNCTION tvmw_session_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartyd_tvmw', encode(OLD.key_hash, 'hex'));
    RETURN NULL;
END $$;
CREATE TRIGGER tvmw_sessions_ended AFTER DELETE ON tvmw_sessions
    FOR EACH ROW EXECUTE FUNCTION tvmw_session_ended();

-- Whatever path changes an account (CLI, widgets, Billing API, console,
-- charging job), its sessions end at once when its password changes, when it
-- is deactivated (blocked, DEBT, deleted) or moves to another customer.
CREATE FUNCTION tvmw_end_account_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.password_hash IS DISTINCT FROM OLD.password_hash
       OR (OLD.active AND NOT NEW.active)
       OR (NEW.deleted_at IS NOT NULL AND OLD.deleted_at IS NULL)
       OR NEW.customer_id IS DISTINCT FROM OLD.customer_id THEN
        DELETE FROM tvmw_sessions WHERE account_id = NEW.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER accounts_tvmw_sessions
    AFTER UPDATE OF password_hash, active, deleted_at, customer_id ON accounts
    FOR EACH ROW EXECUTE FUNCTION tvmw_end_account_sessions();

-- -- device limits ----------------------------------------------------------------------
-- Devices in session at once: the account's own limit, else the largest of
-- its entitled tariffs' (none if one of them has none), as for max_sessions.
ALTER TABLE tariffs ADD COLUMN devices_count integer CHECK (devices_count > 0);
ALTER TABLE accounts ADD COLUMN max_devices integer CHECK (max_devices > 0);

-- -- channel categories -----------------------------------------------------------------
CREATE TABLE channel_categories (
    id    bigserial PRIMARY KEY,
    name  text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    color text NOT NULL DEFAULT '' CHECK (color ~ '^(#[0-9a-fA-F]{6})?$')
);
ALTER TABLE channels ADD COLUMN category_id bigint REFERENCES channel_categories (id)
    ON DELETE SET NULL;
-- The devices' channel lists name categories: every instance reloads them.
CREATE TRIGGER channel_categories_notify AFTER INSERT OR UPDATE OR DELETE ON channel_categories
    FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlements();
