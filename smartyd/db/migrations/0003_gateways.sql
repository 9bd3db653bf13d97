-- Payment gateways (ASSIST, Payture): our orders, ASSIST's results report
-- and the Payture notifications received.  Money moves only through
-- smartyd.payments.accept (provider, external_id = the order number), so a
-- gateway order credits its account at most once.

-- Our order numbers for ASSIST: a plain increasing number (the legacy gateway
-- shows it to the payer and in its reports).  Payture orders use a UUID.
CREATE SEQUENCE gateway_order_numbers START 100001;

-- One row per order we sent a payer to a gateway with.
--   status: new       no final answer from the gateway yet
--           blocked   two-stage: the amount is held on the card, awaiting charge
--           paid      the gateway says paid and the account was credited (payment_id)
--           declined  the gateway's actual status is a refusal
--           reversed  voided / refunded / cancelled at the gateway
--           mismatch  paid at the gateway, but not the amount we asked for:
--                     nothing credited, an operator decides
--           unknown   a status we do not know: nothing credited
CREATE TABLE gateway_orders (
    id             bigserial PRIMARY KEY,
    provider       text NOT NULL CHECK (provider IN ('assist', 'payture')),
    order_number   text NOT NULL CHECK (order_number ~ '^[A-Za-z0-9_-]{1,50}$'),
    account_id     bigint NOT NULL REFERENCES accounts (id),
    amount         numeric(14, 2) NOT NULL CHECK (amount > 0),
    two_stage      boolean NOT NULL DEFAULT false,
    status         text NOT NULL DEFAULT 'new' CHECK (status IN (
                       'new', 'blocked', 'paid', 'declined', 'reversed', 'mismatch', 'unknown')),
    gateway_status text,                          -- the gateway's actual status, as it spells it
    bill_number    text,                          -- ASSIST: the bill that decided gateway_status
    payment_id     bigint UNIQUE REFERENCES payments (id),
    created        timestamptz NOT NULL DEFAULT now(),
    updated        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, order_number)
);
CREATE INDEX gateway_orders_open_idx ON gateway_orders (provider, created)
    WHERE status IN ('new', 'blocked');
CREATE INDEX gateway_orders_account_idx ON gateway_orders (account_id);

-- ASSIST's results: one row per bill number (ASSIST's "Payment No."), inserted
-- or updated by every poll.  order_number may name an order we do not know
-- (kept, logged once, never credited).  Dates are as the gateway prints them
-- (its local time, no zone); NULL for "UNKNOWN".
CREATE TABLE assist_results (
    bill_number   text PRIMARY KEY,
    order_number  text NOT NULL,
    status        text NOT NULL,
    result_code   text,
    amount        numeric(14, 2),
    currency      text,
    order_date    timestamp,
    packet_date   timestamp,
    details       jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_seen    timestamptz NOT NULL DEFAULT now(),
    updated       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assist_results_order_idx ON assist_results (order_number);

-- Every Payture notification about one of our orders, with what we made of
-- it (notifications naming unknown orders are logged and counted only).
CREATE TABLE payture_notifications (
    id            bigserial PRIMARY KEY,
    order_number  text NOT NULL,
    notification  text NOT NULL,
    success       boolean,
    amount_kop    bigint,
    err_code      text,
    outcome       text NOT NULL,
    gateway_state text,
    received      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payture_notifications_order_idx ON payture_notifications (order_number, id);
