-- The Smarty Billing API (issue 12): external billings drive customers,
-- accounts, tariffs and transactions through /billing/api/<method>.
--
-- Tenancy: a customer created through the API belongs to the API client
-- that created it (customers.client_id); a client without ``shared = true``
-- sees only its own.  Customer ext_ids are the billings' own ids, so they
-- are unique per client, not across clients.  NULL client_id: the
-- operator's customers (admin, OSMP-era migrations), seen by shared clients.

-- -- customers ------------------------------------------------------------------------
ALTER TABLE customers
    ADD COLUMN client_id  text,
    -- the Billing API's customer fields smartyd keeps but does not act on
    -- (birthdate, passport, addresses, phones, company, ...)
    ADD COLUMN api_fields jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN deleted_at timestamptz;
ALTER TABLE customers DROP CONSTRAINT customers_ext_id_key;
CREATE UNIQUE INDEX customers_client_ext_id_idx ON customers (client_id, ext_id)
    NULLS NOT DISTINCT WHERE ext_id IS NOT NULL;
CREATE INDEX customers_client_idx ON customers (client_id, id);

-- -- accounts ---------------------------------------------------------------------------
-- A deleted account keeps its row (the ledger and payments may name it): it
-- is inactive, its login is freed (``deleted:<id>``, which no login can be)
-- and the API no longer sees it.
ALTER TABLE accounts
    ADD COLUMN ext_id        text CHECK (length(ext_id) <= 255),
    ADD COLUMN api_fields    jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN deleted_at    timestamptz,
    ADD COLUMN deleted_login text,
    ADD COLUMN last_active   timestamptz;

-- -- devices: an id the API can name ---------------------------------------------------
ALTER TABLE devices
    ADD COLUMN id          bigserial UNIQUE,
    ADD COLUMN system_name text NOT NULL DEFAULT '',
    ADD COLUMN is_basic    boolean NOT NULL DEFAULT false;

-- -- account messages ---------------------------------------------------------------------
CREATE TABLE account_messages (
    id                       bigserial PRIMARY KEY,
    account_id               bigint NOT NULL REFERENCES accounts (id),
    client_id                text,
    subject                  text NOT NULL DEFAULT '',
    text                     text NOT NULL,
    urgent                   boolean NOT NULL DEFAULT true,
    delete_after_reading     boolean NOT NULL DEFAULT true,
    send_message_to_tv_screen boolean NOT NULL DEFAULT true,
    send_message_by_sms      boolean NOT NULL DEFAULT false,
    send_message_by_email    boolean NOT NULL DEFAULT false,
    send_message_by_cas      boolean NOT NULL DEFAULT false,
    created                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_messages_account_idx ON account_messages (account_id, id);

-- -- transactions ---------------------------------------------------------------------------
-- One row per (client, transaction ext_id), ever: the unique key makes a
-- repeat -- also a racing copy on another connection or instance -- find
-- the first, and an id stays taken after its deletion.  The money is the
-- ledger's: ``ledger_id`` is the row that moved it (NULL for an amount of
-- 0), ``reversal_id`` the row that took it back on delete.
CREATE TABLE billing_api_transactions (
    id               bigserial PRIMARY KEY,
    client_id        text NOT NULL,
    ext_id           text NOT NULL CHECK (length(ext_id) BETWEEN 1 AND 255),
    customer_id      bigint NOT NULL REFERENCES customers (id),
    amount           numeric(14, 2) NOT NULL,
    processed        boolean NOT NULL DEFAULT false,
    comment          text NOT NULL DEFAULT '',
    transaction_type integer,
    video_ext_id     text,
    ledger_id        bigint REFERENCES ledger (id),
    reversal_id      bigint REFERENCES ledger (id),
    created          timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    UNIQUE (client_id, ext_id)
);
CREATE INDEX billing_api_transactions_customer_idx ON billing_api_transactions (customer_id);
