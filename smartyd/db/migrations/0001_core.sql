-- smartyd core schema: customers, accounts, the append-only ledger,
-- payments, channels, tariffs, subscriptions and devices.

CREATE TABLE customers (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    phone       text,
    email       text,
    created     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    id            bigserial PRIMARY KEY,
    customer_id   bigint REFERENCES customers (id),
    login         text NOT NULL UNIQUE,
    password_hash text NOT NULL DEFAULT '',
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked')),
    payments_allowed boolean NOT NULL DEFAULT true,
    balance       numeric(14, 2) NOT NULL DEFAULT 0,
    created       timestamptz NOT NULL DEFAULT now(),
    updated       timestamptz NOT NULL DEFAULT now()
);

-- Every balance change is a row here; accounts.balance is its running sum,
-- maintained in the same transaction.  Rows are never updated or deleted.
CREATE TABLE ledger (
    id          bigserial PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id),
    amount      numeric(14, 2) NOT NULL CHECK (amount <> 0),
    kind        text NOT NULL,
    cause       text NOT NULL DEFAULT '',
    idem_key    text NOT NULL UNIQUE,
    balance_after numeric(14, 2) NOT NULL,
    created     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_account_idx ON ledger (account_id, id);

CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();

-- Payments from every source (osmp, assist, payture, ...).  (provider,
-- external_id) is the idempotency key of the source: a repeat finds the row.
CREATE TABLE payments (
    id           bigserial PRIMARY KEY,
    provider     text NOT NULL,
    external_id  text NOT NULL,
    account_id   bigint NOT NULL REFERENCES accounts (id),
    amount       numeric(14, 2) NOT NULL CHECK (amount > 0),
    status       text NOT NULL DEFAULT 'accepted',
    ledger_id    bigint REFERENCES ledger (id),
    external_date timestamptz,
    details      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, external_id)
);
CREATE INDEX payments_account_idx ON payments (account_id);

CREATE TABLE channels (
    id        bigserial PRIMARY KEY,
    name      text NOT NULL UNIQUE,
    url_mask  text NOT NULL,
    created   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tariffs (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    price       numeric(14, 2) NOT NULL DEFAULT 0 CHECK (price >= 0),
    period_days integer NOT NULL DEFAULT 30 CHECK (period_days > 0),
    kind        text NOT NULL DEFAULT 'tv' CHECK (kind IN ('tv', 'svod', 'tvod')),
    hidden      boolean NOT NULL DEFAULT false,
    created     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tariff_channels (
    tariff_id   bigint NOT NULL REFERENCES tariffs (id) ON DELETE CASCADE,
    channel_id  bigint NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    PRIMARY KEY (tariff_id, channel_id)
);

CREATE TABLE subscriptions (
    account_id  bigint NOT NULL REFERENCES accounts (id),
    tariff_id   bigint NOT NULL REFERENCES tariffs (id),
    started     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, tariff_id)
);

CREATE TABLE devices (
    uid         text PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id),
    created     timestamptz NOT NULL DEFAULT now()
);

-- Entitlement changes are announced on one channel; every instance's
-- stream-token checker reloads what the payload names.
CREATE FUNCTION notify_entitlements() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartyd_entitlements', TG_TABLE_NAME);
    RETURN NULL;
END $$;

CREATE TRIGGER accounts_notify AFTER INSERT OR DELETE OR UPDATE OF status ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlements();
CREATE TRIGGER channels_notify AFTER INSERT OR UPDATE OR DELETE ON channels
    FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlements();
CREATE TRIGGER tariff_channels_notify AFTER INSERT OR UPDATE OR DELETE ON tariff_channels
    FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlements();
CREATE TRIGGER subscriptions_notify AFTER INSERT OR UPDATE OR DELETE ON subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlements();
