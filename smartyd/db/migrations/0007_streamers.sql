-- Streamers as deployed: concurrent sessions per account, Astra channel ids.
--
-- tariffs.sessions_count: concurrent viewing sessions the tariff allows; NULL
--   means no limit (an account with such a tariff is unlimited).
-- accounts.max_sessions: the account's own limit; NULL means "from its
--   tariffs" (the largest among them).
-- channels.streamer_id: the streamer's own id of the channel (Cesbo Astra's
--   X-Channel-ID), matched besides the channel's name.
ALTER TABLE tariffs ADD COLUMN sessions_count integer CHECK (sessions_count > 0);
ALTER TABLE accounts ADD COLUMN max_sessions integer CHECK (max_sessions > 0);
ALTER TABLE channels ADD COLUMN streamer_id text UNIQUE
    CHECK (streamer_id ~ '^[A-Za-z0-9_.:-]{1,64}$');

-- Session leases: one row per live viewing session of an account that has a
-- limit, written in batches (about once a second) by every process that
-- answers token checks, and read back by all of them.  Times are the
-- checker's clock in seconds since the epoch.  A session ranks by when it
-- was first seen (since, then session): when a burst took an account over
-- its limit, every process agrees which sessions are the excess.
CREATE TABLE session_leases (
    account_id  bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    session     text NOT NULL,
    since       double precision NOT NULL,
    expires     double precision NOT NULL,
    PRIMARY KEY (account_id, session)
);
CREATE INDEX session_leases_expires_idx ON session_leases (expires);

-- (channels_notify already fires on any channel update.)
-- A changed limit reaches the checkers' snapshots like any other entitlement.
CREATE TRIGGER accounts_sessions_notify AFTER UPDATE OF max_sessions ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlements();
CREATE TRIGGER tariffs_sessions_notify AFTER UPDATE OF sessions_count ON tariffs
    FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlements();
