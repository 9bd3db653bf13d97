-- A payment accepted in one round trip (issue 13).
--
-- The daemon is one reactor thread and every SQL round trip is a full poll
-- cycle of it, so the accept path of payments.accept (BEGIN, the payee with
-- its row lock, the payment row, the ledger row, the balance, the link, the
-- hooks, COMMIT: fifteen round trips) is moved here, whole, and called as one
-- statement in autocommit: the statement is the transaction.
--
-- The rules are those of smartyd/ledger.py (find_payee, post) and
-- smartyd/payments.py (accept); tests/test_accept_sql.py holds both sides to
-- the same outcomes.  What the function does not do itself it hands back
-- ('python', nothing written): the caller then runs the Python path.

-- -- the payee: ledger.find_payee in one statement -----------------------------------
-- A customer id (p_customer) or an account login (p_login) names a customer;
-- with p_lock its row is locked FOR UPDATE (the lock every writer of a
-- customer's money takes first).  account_id: the login's account, or the
-- customer's only account.  active: an account deactivated for DEBT counts
-- as active (paying is how a debt ends).  No row: no such payee.
CREATE FUNCTION payee_lookup(p_customer bigint, p_login text, p_lock boolean,
                             OUT customer_id bigint, OUT account_id bigint,
                             OUT balance numeric, OUT payments_allowed boolean,
                             OUT active boolean)
RETURNS SETOF record LANGUAGE plpgsql AS $$
DECLARE
    v_count bigint;
    v_only  bigint;
BEGIN
    IF p_login IS NOT NULL THEN
        SELECT a.id, a.customer_id INTO account_id, customer_id
          FROM accounts a WHERE a.login = p_login;
        IF NOT FOUND THEN
            RETURN;
        END IF;
    ELSE
        customer_id := p_customer;
    END IF;
    IF p_lock THEN
        SELECT c.balance INTO balance FROM customers c WHERE c.id = customer_id FOR UPDATE;
    ELSE
        SELECT c.balance INTO balance FROM customers c WHERE c.id = customer_id;
    END IF;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF account_id IS NOT NULL THEN
        SELECT a.payments_allowed, a.active OR a.status_reason = 'DEBT'
          INTO payments_allowed, active FROM accounts a WHERE a.id = account_id;
    ELSE
        -- A customer with exactly one account (every migrated one): the
        -- payment is recorded as that account's too.
        SELECT coalesce(bool_and(a.payments_allowed), true),
               coalesce(bool_or(a.active OR a.status_reason = 'DEBT'), true), count(*), min(a.id)
          INTO payments_allowed, active, v_count, v_only
          FROM accounts a WHERE a.customer_id = payee_lookup.customer_id;
        account_id := CASE WHEN v_count = 1 THEN v_only END;
    END IF;
    RETURN NEXT;
END $$;

-- -- uuid5, for the fiscal receipt's externalId --------------------------------------
-- smartyd.fiscal.jobs.external_id_for is uuid5(namespace, name): SHA-1, which
-- PostgreSQL has only in pgcrypto (not in every installation).  The receipt
-- job is inserted in the payment's own statement, so its id is computed here.
CREATE FUNCTION smartyd_sha1(msg bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    m bytea;
    len bigint := length(msg);
    h0 bigint := 1732584193;   -- 0x67452301
    h1 bigint := 4023233417;   -- 0xEFCDAB89
    h2 bigint := 2562383102;   -- 0x98BADCFE
    h3 bigint := 271733878;    -- 0x10325476
    h4 bigint := 3285377520;   -- 0xC3D2E1F0
    a bigint; b bigint; c bigint; d bigint; e bigint; f bigint; k bigint; t bigint;
    w bigint[];
    off int;
    i int;
    mask constant bigint := 4294967295;
BEGIN
    -- 0x80, zeros to 56 mod 64, the bit length as 64 bits big-endian.
    m := msg || '\x80'::bytea
         || decode(repeat('00', ((119 - (len % 64)::int) % 64)), 'hex')
         || int8send(len * 8);
    off := 0;
    WHILE off < length(m) LOOP
        w := array_fill(0::bigint, ARRAY[80], ARRAY[0]);
        FOR i IN 0..15 LOOP
            w[i] := (get_byte(m, off + 4 * i)::bigint << 24) | (get_byte(m, off + 4 * i + 1) << 16)
                    | (get_byte(m, off + 4 * i + 2) << 8) | get_byte(m, off + 4 * i + 3);
        END LOOP;
        FOR i IN 16..79 LOOP
            t := w[i - 3] # w[i - 8] # w[i - 14] # w[i - 16];
            w[i] := ((t << 1) | (t >> 31)) & mask;
        END LOOP;
        a := h0; b := h1; c := h2; d := h3; e := h4;
        FOR i IN 0..79 LOOP
            IF i < 20 THEN
                f := (b & c) | ((b # mask) & d); k := 1518500249;    -- 0x5A827999
            ELSIF i < 40 THEN
                f := b # c # d; k := 1859775393;                    -- 0x6ED9EBA1
            ELSIF i < 60 THEN
                f := (b & c) | (b & d) | (c & d); k := 2400959708;  -- 0x8F1BBCDC
            ELSE
                f := b # c # d; k := 3395469782;                    -- 0xCA62C1D6
            END IF;
            t := ((((a << 5) | (a >> 27)) & mask) + f + e + k + w[i]) & mask;
            e := d; d := c; c := ((b << 30) | (b >> 2)) & mask; b := a; a := t;
        END LOOP;
        h0 := (h0 + a) & mask; h1 := (h1 + b) & mask; h2 := (h2 + c) & mask;
        h3 := (h3 + d) & mask; h4 := (h4 + e) & mask;
        off := off + 64;
    END LOOP;
    RETURN substring(int8send(h0) from 5) || substring(int8send(h1) from 5)
        || substring(int8send(h2) from 5) || substring(int8send(h3) from 5)
        || substring(int8send(h4) from 5);
END $$;

-- jobs.external_id_for(payment_id, provider, external_id), the same uuid.
CREATE FUNCTION receipt_external_id(p_payment bigint, p_provider text, p_external_id text)
RETURNS text LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    h bytea;
BEGIN
    h := substring(smartyd_sha1(
            '\x7c1d2a8e5b0f4d8e9a513f1e6c2b9d40'::bytea   -- jobs.EXTERNAL_ID_NAMESPACE
            || convert_to('smartyd:payment:' || p_payment || ':' || p_provider || ':'
                          || p_external_id, 'UTF8')) from 1 for 16);
    h := set_byte(h, 6, (get_byte(h, 6) & 15) | 80);    -- version 5
    h := set_byte(h, 8, (get_byte(h, 8) & 63) | 128);   -- RFC 4122 variant
    RETURN encode(h, 'hex')::uuid::text;
END $$;

-- -- the accept: payments.accept with its hooks, in one statement ---------------------
-- outcome:
--   'no_payee'  no such customer / login (the payment under the id, if any, is returned)
--   'refused'   the payee may not be paid, or p_accept is false (an early
--               refusal: only the payee and any earlier payment are read)
--   'created'   the payment, its ledger row and the balance are written
--               (and the receipt job with p_receipt)
--   'exists'    the id was accepted already: that payment, nothing written
--               (the caller compares customer and amount: a conflict)
--   'python'    nothing written: the caller runs the Python path.  With
--               p_settle, when the billing has something to settle for the
--               customer (a due or suspended subscription, a due promise, a
--               DEBT account: engine.settle would write); also when the
--               ledger key exists without its payment, or the account moved
--               to another customer since it was read.
-- The payment's columns (o_*) are payments.py's _COLUMNS, in its order.
CREATE FUNCTION payment_accept(
    p_provider text, p_external_id text, p_customer bigint, p_login text, p_amount numeric,
    p_details jsonb, p_external_date timestamptz, p_accept boolean, p_settle boolean,
    p_receipt boolean,
    OUT outcome text, OUT payee_customer bigint, OUT payee_account bigint,
    OUT payee_balance numeric, OUT payee_allowed boolean, OUT payee_active boolean,
    OUT o_id bigint, OUT o_provider text, OUT o_external_id text, OUT o_account_id bigint,
    OUT o_amount numeric, OUT o_status text, OUT o_ledger_id bigint,
    OUT o_external_date timestamptz, OUT o_details jsonb, OUT o_created timestamptz,
    OUT o_customer_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_customer bigint;
    v_ledger   bigint;
    v_payment  bigint;
BEGIN
    SELECT l.customer_id, l.account_id, l.balance, l.payments_allowed, l.active
      INTO payee_customer, payee_account, payee_balance, payee_allowed, payee_active
      FROM payee_lookup(p_customer, p_login, true) l;
    IF NOT FOUND OR NOT (p_accept AND payee_allowed AND payee_active) THEN
        outcome := CASE WHEN payee_customer IS NULL THEN 'no_payee' ELSE 'refused' END;
        SELECT p.id, p.provider, p.external_id, p.account_id, p.amount, p.status, p.ledger_id,
               p.external_date, p.details, p.created, p.customer_id
          INTO o_id, o_provider, o_external_id, o_account_id, o_amount, o_status, o_ledger_id,
               o_external_date, o_details, o_created, o_customer_id
          FROM payments p WHERE p.provider = p_provider AND p.external_id = p_external_id;
        RETURN;
    END IF;
    -- payments.accept: the account's customer is the one credited.
    v_customer := payee_customer;
    IF payee_account IS NOT NULL THEN
        SELECT a.customer_id INTO v_customer FROM accounts a WHERE a.id = payee_account;
    END IF;
    IF v_customer IS DISTINCT FROM payee_customer THEN
        outcome := 'python';
        RETURN;
    END IF;
    -- A repeat: answered from its payment; nothing runs (no hook, no settling).
    SELECT p.id, p.provider, p.external_id, p.account_id, p.amount, p.status, p.ledger_id,
           p.external_date, p.details, p.created, p.customer_id
      INTO o_id, o_provider, o_external_id, o_account_id, o_amount, o_status, o_ledger_id,
           o_external_date, o_details, o_created, o_customer_id
      FROM payments p WHERE p.provider = p_provider AND p.external_id = p_external_id;
    IF FOUND THEN
        outcome := 'exists';
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM ledger l
                   WHERE l.idem_key = 'payment:' || p_provider || ':' || p_external_id)
       OR (p_settle AND (
              EXISTS (SELECT 1 FROM subscriptions s WHERE s.customer_id = v_customer
                         AND (s.state = 'suspended' OR s.paid_until <= now()))
           OR EXISTS (SELECT 1 FROM promises r WHERE r.customer_id = v_customer
                         AND r.returned_at IS NULL AND r.due <= now())
           OR EXISTS (SELECT 1 FROM accounts a WHERE a.customer_id = v_customer
                         AND NOT a.active AND a.status_reason = 'DEBT'))) THEN
        outcome := 'python';
        RETURN;
    END IF;
    INSERT INTO payments (provider, external_id, account_id, customer_id, amount, details,
                          external_date)
    VALUES (p_provider, p_external_id, payee_account, v_customer, p_amount, p_details,
            p_external_date)
    ON CONFLICT (provider, external_id) DO NOTHING
    RETURNING id INTO v_payment;
    IF v_payment IS NULL THEN
        -- A copy committed since the look above (it held another customer's lock).
        outcome := 'exists';
        SELECT p.id, p.provider, p.external_id, p.account_id, p.amount, p.status, p.ledger_id,
               p.external_date, p.details, p.created, p.customer_id
          INTO o_id, o_provider, o_external_id, o_account_id, o_amount, o_status, o_ledger_id,
               o_external_date, o_details, o_created, o_customer_id
          FROM payments p WHERE p.provider = p_provider AND p.external_id = p_external_id;
        RETURN;
    END IF;
    -- ledger.post: the row, then the balance, under the customer's lock.
    INSERT INTO ledger (customer_id, account_id, amount, kind, cause, idem_key, balance_after)
    VALUES (v_customer, payee_account, p_amount, 'payment', p_provider || ':' || p_external_id,
            'payment:' || p_provider || ':' || p_external_id, payee_balance + p_amount)
    RETURNING id INTO v_ledger;
    UPDATE customers SET balance = balance + p_amount, updated = now() WHERE id = v_customer;
    UPDATE payments p SET ledger_id = v_ledger WHERE p.id = v_payment
    RETURNING p.id, p.provider, p.external_id, p.account_id, p.amount, p.status, p.ledger_id,
              p.external_date, p.details, p.created, p.customer_id
         INTO o_id, o_provider, o_external_id, o_account_id, o_amount, o_status, o_ledger_id,
              o_external_date, o_details, o_created, o_customer_id;
    IF p_receipt THEN
        -- fiscal.enqueue_receipt (jobs.enqueue)
        INSERT INTO receipt_jobs (payment_id, external_id)
        VALUES (v_payment, receipt_external_id(v_payment, p_provider, p_external_id))
        ON CONFLICT (payment_id) DO NOTHING;
    END IF;
    outcome := 'created';
END $$;
