-- Payture cards (issue 17): eWallet users, bound cards, card-binding orders
-- and durable autopayment attempts.  Only Payture's card id, the masked
-- number and the expiry Payture tells us are kept -- never a card number.

-- Autopayment: the customer (or the operator) turns it on.
ALTER TABLE customers ADD COLUMN autopay boolean NOT NULL DEFAULT false;

-- The customer's eWallet user: VWUserLgn / VWUserPsw are ours to choose
-- (Payture: strings of 1..50); the password is random per customer.
CREATE TABLE payture_users (
    customer_id bigint PRIMARY KEY REFERENCES customers (id),
    login       text NOT NULL UNIQUE CHECK (length(login) BETWEEN 1 AND 50),
    password    text NOT NULL CHECK (length(password) BETWEEN 1 AND 50),
    registered  boolean NOT NULL DEFAULT false,
    created     timestamptz NOT NULL DEFAULT now()
);

-- Cards as Payture's GetList lists them.
CREATE TABLE payture_cards (
    customer_id bigint NOT NULL REFERENCES customers (id),
    card_id     text NOT NULL CHECK (card_id ~ '^[A-Za-z0-9-]{1,64}$'),
    masked      text NOT NULL CHECK (masked !~ '[0-9]{13,}' AND length(masked) <= 32),
    expiry      text CHECK (expiry ~ '^[0-9]{2}/[0-9]{2,4}$'),
    holder      text,
    status      text,
    no_cvv      boolean NOT NULL DEFAULT false,
    expired     boolean NOT NULL DEFAULT false,
    bound_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, card_id)
);

-- Orders paid through an eWallet session (the card is bound while paying).
CREATE TABLE payture_bindings (
    order_number text PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES customers (id),
    template     text NOT NULL DEFAULT '',
    created      timestamptz NOT NULL DEFAULT now()
);

-- One row per autopayment attempt, written (and committed) before Payture is
-- asked to charge: (customer, period, attempt) is the idempotency key, and
-- order_number the OrderId Payture refuses to charge twice.
--   pending   Pay sent or about to be; the outcome is not known yet
--   credited  GetState said Charged for the amount; payment_id is the credit
--   declined  Payture refused (ErrCode) or the order ended Rejected/Error/...
CREATE TABLE payture_autopay (
    id              bigserial PRIMARY KEY,
    customer_id     bigint NOT NULL REFERENCES customers (id),
    period          timestamptz NOT NULL,   -- the due moment of the charge it pays
    attempt         integer NOT NULL CHECK (attempt >= 1),
    order_number    text NOT NULL UNIQUE CHECK (order_number ~ '^[A-Za-z0-9_-]{1,50}$'),
    card_id         text NOT NULL,
    amount          numeric(14, 2) NOT NULL CHECK (amount > 0),
    subscription_id bigint,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'credited', 'declined')),
    err_code        text,
    gateway_state   text,
    payment_id      bigint UNIQUE REFERENCES payments (id),
    created_at      timestamptz NOT NULL,
    updated         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, period, attempt)
);
CREATE INDEX payture_autopay_pending_idx ON payture_autopay (customer_id) WHERE state = 'pending';
