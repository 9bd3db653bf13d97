-- ASSIST pushes credit at once; the currency of an order is checked.
--
-- gateway_orders.currency: the currency the order is to be paid in (ISO 4217
-- letters).  Every order so far was made in roubles, the shop's currency;
-- a bill in another currency is a mismatch, never a credit.
ALTER TABLE gateway_orders
    ADD COLUMN currency text NOT NULL DEFAULT 'RUB' CHECK (currency ~ '^[A-Z]{3}$');

-- assist_results.source: where the row's status came from.
--   report  the results report / orderstate answer (the gateway's own word)
--   push    a result push with a valid CheckValue, not (yet) seen in a report
-- A push never overwrites a row the report has given; the report overwrites
-- (and so confirms or contradicts) a pushed row.
ALTER TABLE assist_results
    ADD COLUMN source text NOT NULL DEFAULT 'report' CHECK (source IN ('report', 'push'));
