-- The built-in billing (issue 11): customers own the money, accounts
-- (abonements) belong to customers, tariffs have periods, subscriptions are
-- charged by the daemon's charging job.
--
-- Money model after this migration:
--   customers.balance   the customer's virtual account: the running sum of
--                       the ledger rows with its customer_id (kept in the
--                       same transaction as each row, like accounts.balance was)
--   ledger.customer_id  set on every new row; NULL only on the rows written
--                       before this migration (the account-level history,
--                       kept readable with its account_id)
--
-- Data migration: every existing account gets a customer of its own with the
-- account's id (payment codes printed on contracts and receipts -- the
-- account id + check digit -- now name that customer, the same money holder).
-- Its balance moves through two 'migration' rows: a debit closing the
-- account-level history and a credit opening the customer-level one, so the
-- sum over the whole ledger is unchanged and the audit trail stays.

-- -- customers -------------------------------------------------------------------------
ALTER TABLE customers
    ADD COLUMN firstname       text NOT NULL DEFAULT '',
    ADD COLUMN middlename      text NOT NULL DEFAULT '',
    ADD COLUMN lastname        text NOT NULL DEFAULT '',
    ADD COLUMN comment         text NOT NULL DEFAULT '',
    ADD COLUMN ext_id          text UNIQUE CHECK (length(ext_id) BETWEEN 1 AND 64),
    ADD COLUMN contract_number text,
    ADD COLUMN meta            jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN balance         numeric(14, 2) NOT NULL DEFAULT 0,
    ADD COLUMN updated         timestamptz NOT NULL DEFAULT now();

-- Customers and accounts draw their ids from one sequence: an account created
-- without a customer gets a customer with its own id (so its payment code is
-- the one it always had), and no customer created on its own can take it.
ALTER TABLE customers ALTER COLUMN id SET DEFAULT nextval('accounts_id_seq'::regclass);
DROP SEQUENCE customers_id_seq;

-- Re-key: one customer per existing account, with the account's id.  The
-- customers that existed (name, phone, e-mail of an account) are copied to
-- each of their accounts; those without an account keep their data under a
-- new id.
ALTER TABLE accounts DROP CONSTRAINT accounts_customer_id_fkey;
CREATE TEMPORARY TABLE old_customers ON COMMIT DROP AS SELECT * FROM customers;
DELETE FROM customers;
INSERT INTO customers (id, name, phone, email, created)
SELECT a.id, coalesce(c.name, ''), c.phone, c.email, coalesce(c.created, a.created)
  FROM accounts a LEFT JOIN old_customers c ON c.id = a.customer_id;
SELECT setval('accounts_id_seq',
              greatest((SELECT max(id) FROM accounts), (SELECT max(id) FROM old_customers), 1));
INSERT INTO customers (name, phone, email, created)
SELECT c.name, c.phone, c.email, c.created FROM old_customers c
 WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.customer_id = c.id)
 ORDER BY c.id;
UPDATE accounts SET customer_id = id;
ALTER TABLE accounts ALTER COLUMN customer_id SET NOT NULL,
    ADD CONSTRAINT accounts_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES customers (id);
CREATE INDEX accounts_customer_idx ON accounts (customer_id);

-- -- accounts: active + status_reason replace status ------------------------------------
DROP TRIGGER accounts_notify ON accounts;
ALTER TABLE accounts
    ADD COLUMN active        boolean NOT NULL DEFAULT true,
    ADD COLUMN status_reason text NOT NULL DEFAULT 'ACTIVE'
        CHECK (length(status_reason) BETWEEN 1 AND 20);
UPDATE accounts SET active = (status = 'active'),
                    status_reason = CASE WHEN status = 'active' THEN 'ACTIVE' ELSE 'BLOCK' END;

-- An account inserted without a customer gets one with its own id (or, if a
-- customer holds that id, the next one): `account create` without
-- `--customer`, and any row written by hand, keep working.
CREATE FUNCTION accounts_default_customer() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    IF NEW.customer_id IS NULL THEN
        INSERT INTO customers (id) VALUES (NEW.id) ON CONFLICT (id) DO NOTHING;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n = 1 THEN
            NEW.customer_id := NEW.id;
        ELSE
            INSERT INTO customers DEFAULT VALUES RETURNING id INTO NEW.customer_id;
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER accounts_default_customer BEFORE INSERT ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_default_customer();

-- -- the ledger, keyed by customer ------------------------------------------------------
ALTER TABLE ledger
    ADD COLUMN customer_id     bigint REFERENCES customers (id),
    ADD COLUMN tariff_id       bigint,            -- charges: the tariff (no FK: tariffs may go)
    ADD COLUMN subscription_id bigint,            -- charges: the subscription (no FK: ditto)
    ADD COLUMN at              timestamptz;       -- the billing moment (NULL: created)
ALTER TABLE ledger ALTER COLUMN account_id DROP NOT NULL,
    ADD CONSTRAINT ledger_owner CHECK (customer_id IS NOT NULL OR account_id IS NOT NULL);
CREATE INDEX ledger_customer_idx ON ledger (customer_id, id);

INSERT INTO ledger (account_id, customer_id, amount, kind, cause, idem_key, balance_after)
SELECT a.id, NULL, -a.balance, 'migration', 'moved to customer ' || a.id,
       'migration:account:' || a.id, 0
  FROM accounts a WHERE a.balance <> 0 ORDER BY a.id;
INSERT INTO ledger (account_id, customer_id, amount, kind, cause, idem_key, balance_after)
SELECT a.id, a.customer_id, a.balance, 'migration', 'moved from account ' || a.id,
       'migration:customer:' || a.customer_id, a.balance
  FROM accounts a WHERE a.balance <> 0 ORDER BY a.id;
UPDATE customers c SET balance = a.balance FROM accounts a WHERE a.customer_id = c.id;
ALTER TABLE accounts DROP COLUMN status, DROP COLUMN balance;

CREATE TRIGGER accounts_notify AFTER INSERT OR DELETE OR UPDATE OF active, customer_id ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlements();

-- -- payments credit customers ---------------------------------------------------------
ALTER TABLE payments ADD COLUMN customer_id bigint REFERENCES customers (id);
UPDATE payments p SET customer_id = a.customer_id FROM accounts a WHERE a.id = p.account_id;
ALTER TABLE payments ALTER COLUMN customer_id SET NOT NULL,
    ALTER COLUMN account_id DROP NOT NULL;
CREATE INDEX payments_customer_idx ON payments (customer_id);

-- -- devices ----------------------------------------------------------------------------
ALTER TABLE devices ADD COLUMN serial text, ADD COLUMN model text;

-- -- tariffs: periods in days or calendar months ----------------------------------------
ALTER TABLE tariffs
    ADD COLUMN period_months    integer CHECK (period_months > 0),   -- set: calendar months
    ADD COLUMN activation_price numeric(14, 2) NOT NULL DEFAULT 0 CHECK (activation_price >= 0),
    ADD COLUMN additional       boolean NOT NULL DEFAULT false,      -- basic (false) / additional
    ADD COLUMN ext_id           text UNIQUE;

-- -- subscriptions ----------------------------------------------------------------------
-- A tariff assigned to a customer (account_id NULL: covers all its accounts,
-- also later ones) or to one account.  Periods are counted from ``anchor``:
-- period k is [anchor + k*P, anchor + (k+1)*P) (calendar months clamped to
-- the month's end by the charging code); ``periods`` periods are charged
-- whole, plus ``days`` days of the next one in daily charging; paid_until is
-- where that ends (a due subscription: paid_until <= now).  ``suspended``: a charge was refused for debt; a payment
-- or a later run resumes it with a new anchor.
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_pkey;
ALTER TABLE subscriptions
    ADD COLUMN id          bigserial PRIMARY KEY,
    ADD COLUMN customer_id bigint REFERENCES customers (id),
    ADD COLUMN anchor      timestamptz,
    ADD COLUMN periods     integer NOT NULL DEFAULT 0,
    ADD COLUMN days        integer NOT NULL DEFAULT 0,
    ADD COLUMN paid_until  timestamptz,
    ADD COLUMN state       text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'suspended')),
    -- the activation price still to take (with the first period)
    ADD COLUMN activation_due numeric(14, 2) NOT NULL DEFAULT 0;
-- Tariffs assigned before the billing existed were never charged: their
-- first period starts with this migration.
UPDATE subscriptions s SET customer_id = a.customer_id, anchor = now(), paid_until = now()
  FROM accounts a WHERE a.id = s.account_id;
ALTER TABLE subscriptions ALTER COLUMN customer_id SET NOT NULL,
    ALTER COLUMN anchor SET NOT NULL, ALTER COLUMN anchor SET DEFAULT now(),
    ALTER COLUMN paid_until SET NOT NULL, ALTER COLUMN paid_until SET DEFAULT now(),
    ALTER COLUMN account_id DROP NOT NULL;
CREATE UNIQUE INDEX subscriptions_assignment_idx
    ON subscriptions (customer_id, account_id, tariff_id) NULLS NOT DISTINCT;
CREATE INDEX subscriptions_account_idx ON subscriptions (account_id) WHERE account_id IS NOT NULL;
CREATE INDEX subscriptions_due_idx ON subscriptions (paid_until, customer_id);
CREATE INDEX subscriptions_suspended_idx ON subscriptions (customer_id) WHERE state = 'suspended';

-- -- promised payments ------------------------------------------------------------------
-- One open promise per customer: credited at ``created_at``, taken back by
-- the charging job at ``due``.
CREATE TABLE promises (
    id           bigserial PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES customers (id),
    amount       numeric(14, 2) NOT NULL CHECK (amount > 0),
    created_at   timestamptz NOT NULL,
    due          timestamptz NOT NULL,
    returned_at  timestamptz
);
CREATE UNIQUE INDEX promises_open_idx ON promises (customer_id) WHERE returned_at IS NULL;
CREATE INDEX promises_due_idx ON promises (due) WHERE returned_at IS NULL;

-- Charging moves paid_until on every run: only what changes an entitlement
-- (the state, the tariff, the holder) is announced.
DROP TRIGGER subscriptions_notify ON subscriptions;
CREATE TRIGGER subscriptions_notify
    AFTER INSERT OR DELETE OR UPDATE OF state, tariff_id, account_id, customer_id ON subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlements();
