-- Who declared an account's DEBT.  The built-in billing lifts a DEBT only
-- when it set it itself: an external billing driving account states through
-- the Billing API (HYDRA's set_account_state_debt sends active=0 +
-- status_reason=DEBT) keeps its word when money comes in or a charging run
-- passes by (transactional mode).  Any other change of active/status_reason
-- (the Billing API, `account block|unblock`) takes the decision over.
ALTER TABLE accounts ADD COLUMN debt_by_billing boolean NOT NULL DEFAULT false;
-- Until now only the charging job lifted DEBT: the DEBT accounts of today
-- stay the billing's (the behaviour they had).
UPDATE accounts SET debt_by_billing = true WHERE NOT active AND status_reason = 'DEBT';
