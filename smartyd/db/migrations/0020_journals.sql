-- The operator's journals (issue 22; smartyd/journals.py, smartyd/reconcile.py).
--
-- registry_layouts: the column layout of each provider's daily registry, as
-- the operator last chose it (``registry reconcile --columns``, the console's
-- upload form): one role per CSV column, in order -- txn_id, date, account,
-- amount, or '-' for a column that is ignored.
CREATE TABLE registry_layouts (
    provider  text PRIMARY KEY,
    columns   text[] NOT NULL,
    updated   timestamptz NOT NULL DEFAULT now()
);

-- A payment's moment in the journals is the provider's own date when it sent
-- one (OSMP txn_date), else when we accepted it: a day's payments of a
-- provider are a range scan of this index.
CREATE INDEX payments_provider_moment_idx
    ON payments (provider, (coalesce(external_date, created)));
